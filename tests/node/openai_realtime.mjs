// The openai package's realtime WebSocket client (OpenAIRealtimeWS, on `ws`) doing one turn with
// a tool call through rtcap proxy at URL: node openai_realtime.mjs ws://127.0.0.1:PORT KEY
// Prints the tool called, then "ok" once the client closed after the reply that follows it.
import net from 'node:net';
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';

const [url, key] = process.argv.slice(2);
const client = new OpenAI({ apiKey: key, baseURL: url.replace(/^ws/, 'http') + '/v1' });
// The SDK always asks for wss:// (internal-base buildRealtimeURL); rtcap proxy listens in plain
// text on loopback, so `ws` is given a plain TCP socket, as it allows.
const plain = (options) => net.connect({ host: options.host, port: options.port });
const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime', options: { createConnection: plain } }, client);
const weather = {
  type: 'function',
  name: 'get_weather',
  description: 'The weather at a location.',
  parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
};
let replies = 0;

rt.on('session.created', () => {
  rt.send({ type: 'session.update', session: { type: 'realtime', output_modalities: ['text'], tools: [weather] } });
  rt.send({
    type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Weather in Paris?' }] },
  });
  rt.send({ type: 'response.create' });
});
rt.on('response.function_call_arguments.done', (event) => {
  console.log(event.name);
  rt.send({
    type: 'conversation.item.create',
    item: { type: 'function_call_output', call_id: event.call_id, output: JSON.stringify({ conditions: 'sunny' }) },
  });
  rt.send({ type: 'response.create' });
});
rt.on('response.done', () => {
  if (++replies === 2) rt.close({ code: 1000, reason: 'bye' });
});
rt.on('error', (error) => {
  console.error(error);
  process.exit(1);
});
rt.socket.on('close', (code) => {
  console.log(code === 1000 ? 'ok' : `closed ${code}`);
});
