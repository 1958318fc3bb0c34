// The `ws` package on its own, as Node apps use it: node ws_client.mjs WS_URL KEY
// Sends text and binary, reads until the response is done, closes with 1000. Prints "ok".
import WebSocket from 'ws';

const [url, key] = process.argv.slice(2);
const ws = new WebSocket(`${url}/v1/realtime?model=gpt-realtime`, {
  headers: { Authorization: `Bearer ${key}`, 'OpenAI-Beta': 'realtime=v1' },
});
ws.on('message', (data, isBinary) => {
  const event = isBinary ? null : JSON.parse(data.toString());
  if (event?.type === 'session.created') {
    ws.send(Buffer.from([0, 1, 2, 255]));  // binary: the server answers with an error event
    ws.send(JSON.stringify({ type: 'response.create', response: { instructions: 'Be brief.' } }));
  } else if (event?.type === 'response.done') {
    ws.close(1000, 'done here');
  }
});
ws.on('close', (code) => console.log(code === 1000 ? 'ok' : `closed ${code}`));
ws.on('error', (error) => {
  console.error(error);
  process.exit(1);
});
