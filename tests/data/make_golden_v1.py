"""Writes capture-v1.msgpack and its export, capture-v1.jsonl. Run once, when format
version 1 was made; golden files are never regenerated (a new version gets new files)."""

import base64
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

from analyzer.export import export_rows  # noqa: E402
from recorder.capture import parse  # noqa: E402
from recorder.session import RECEIVED, SENT, SessionRecorder  # noqa: E402


class Sink(list):
    def write(self, data: bytes) -> None:
        self.append(data)

    def close(self) -> None:
        pass


sink = Sink()
rec = SessionRecorder(
    sink,
    session_id="20261125T120000000000Z-goldenab",
    url="wss://example.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime&api-key=golden-secret-key",
    request_headers=[("api-key", "golden-secret-key"), ("OpenAI-Beta", "realtime=v1")],
    recorder="proxy",
    labels={"app": "golden"},
)
rec.start(0, wall=dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC), response_headers=[("x-request-id", "req_1")])
audio = base64.b64encode(bytes(range(256)) * 9).decode()
messages = [
    (
        RECEIVED,
        json.dumps(
            {
                "type": "session.created",
                "event_id": "event_1",
                "session": {"id": "sess_golden", "expires_at": 1795701600},
            }
        ),
    ),
    (
        SENT,
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "tools": [
                        {
                            "type": "mcp",
                            "server_url": "https://mcp.example",
                            "authorization": "mcp-token-123456",
                            "headers": {"X-Key": "hdr-secret-99999"},
                        }
                    ]
                },
            }
        ),
    ),
    (SENT, json.dumps({"type": "input_audio_buffer.append", "audio": audio})),
    (RECEIVED, '{"type":"response.audio.delta","event_id":"event_2","response_id":"resp_1","delta":"' + audio + '"}'),
    (SENT, b"\x00\x01binary\xff"),
    (SENT, "plain text, not JSON"),
    (
        RECEIVED,
        json.dumps(
            {"type": "error", "error": {"type": "invalid_request_error", "message": "bad key golden-secret-key"}}
        ),
    ),
    (
        RECEIVED,
        json.dumps(
            {
                "type": "response.done",
                "response": {
                    "id": "resp_1",
                    "status": "failed",
                    "status_details": {
                        "type": "failed",
                        "error": {"type": "server_error", "code": None, "message": "boom"},
                    },
                },
            }
        ),
    ),
]
for n, (direction, data) in enumerate(messages):
    rec.message(direction, data, (n + 1) * 1_000_000)
rec.end(10_000_000, closed_by="server", code=1000, reason="")
(HERE / "capture-v1.msgpack").write_bytes(b"".join(sink))
rows = export_rows(parse(b"".join(sink)))
(HERE / "capture-v1.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
