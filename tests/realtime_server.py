"""A small loopback realtime server for the tests (the simulator issue replaces it).

It speaks enough of the GA realtime protocol for the openai SDK's client, and logs the
exact text of every message it receives and sends, so tests can compare a capture with
what each end really put on the wire. A few ``test.*`` client events make it misbehave
on demand: close with a code, drop the connection, stream many deltas, echo a header.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):012d}"


@dataclass
class ServerSession:
    """What one connection looked like from the server's side."""

    path: str
    headers: Headers
    subprotocol: str | None
    received: list[str | bytes] = field(default_factory=list)
    sent: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class RealtimeTestServer:
    """Runs on 127.0.0.1 port 0 in a thread of its own; ``url`` is ``ws://127.0.0.1:PORT``."""

    def __init__(self, reject_key: str = "reject-me") -> None:
        self.reject_key = reject_key
        self.sessions: list[ServerSession] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> RealtimeTestServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop and not self._stop.done() and self._stop.set_result(None))
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_auth,
            select_subprotocol=lambda conn, offered: "realtime" if "realtime" in offered else None,
            max_size=None,
            compression=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _check_auth(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.reject_key in request.headers.get("Authorization", ""):
            body = json.dumps(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "message": "Incorrect API key provided.",
                    }
                }
            )
            response = connection.respond(401, body)
            response.headers["Content-Type"] = "application/json"
            response.headers["X-Request-Id"] = "req_401"
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        session = ServerSession(ws.request.path, ws.request.headers, ws.subprotocol)
        self.sessions.append(session)

        async def send(event: dict[str, Any] | str | bytes) -> None:
            data = event if isinstance(event, (str, bytes)) else json.dumps(event)
            session.sent.append(data)
            await ws.send(data)

        try:
            await send(
                {
                    "type": "session.created",
                    "event_id": _id("event"),
                    "session": {
                        "id": _id("sess"),
                        "object": "realtime.session",
                        "type": "realtime",
                        "model": "gpt-realtime",
                        "expires_at": 1_900_000_000,
                    },
                }
            )
            async for message in ws:
                session.received.append(message)
                if isinstance(message, bytes):
                    await send(message)  # binary frames are echoed
                    continue
                try:
                    event = json.loads(message)
                except ValueError:
                    await send(message)  # so is text that is not JSON
                    continue
                await self._answer(ws, event, send)
        except ConnectionClosed:
            pass
        finally:
            session.close_code = ws.close_code
            session.close_reason = ws.close_reason
            session.done.set()

    async def _answer(self, ws: ServerConnection, event: dict[str, Any], send: Any) -> None:
        kind = event.get("type")
        if kind == "session.update":
            await send({"type": "session.updated", "event_id": _id("event"), "session": event.get("session", {})})
        elif kind == "input_audio_buffer.commit":
            item = _id("item")
            await send(
                {
                    "type": "input_audio_buffer.committed",
                    "event_id": _id("event"),
                    "item_id": item,
                    "previous_item_id": None,
                }
            )
            await send(
                {
                    "type": "conversation.item.added",
                    "event_id": _id("event"),
                    "item": {"id": item, "type": "message", "role": "user", "content": [{"type": "input_audio"}]},
                }
            )
        elif kind == "response.create":
            await self._respond(send, deltas=4, status="completed")
        elif kind == "test.stream":
            await self._respond(send, deltas=int(event.get("count", 100)), status="completed")
        elif kind == "test.fail":
            await self._respond(send, deltas=2, status="failed")
        elif kind == "test.echo_header":
            value = ws.request.headers.get(event["name"], "") if ws.request else ""
            await send(
                {
                    "type": "error",
                    "event_id": _id("event"),
                    "error": {
                        "type": "invalid_request_error",
                        "code": None,
                        "message": f"Bad key {value} given",
                        "param": None,
                    },
                }
            )
        elif kind == "test.close":
            await ws.close(event.get("code", 1000), event.get("reason", ""))
        elif kind == "test.drop":
            ws.transport.abort()

    async def _respond(self, send: Any, *, deltas: int, status: str) -> None:
        response, item = _id("resp"), _id("item")
        await send(
            {
                "type": "response.created",
                "event_id": _id("event"),
                "response": {"id": response, "object": "realtime.response", "status": "in_progress", "output": []},
            }
        )
        await send(
            {
                "type": "rate_limits.updated",
                "event_id": _id("event"),
                "rate_limits": [{"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06}],
            }
        )
        await send(
            {
                "type": "response.output_item.added",
                "event_id": _id("event"),
                "response_id": response,
                "output_index": 0,
                "item": {"id": item, "type": "message", "role": "assistant", "content": []},
            }
        )
        for n in range(deltas):
            audio = base64.b64encode(bytes([n % 256]) * 4800).decode()  # 100 ms of PCM16
            await send(
                {
                    "type": "response.output_audio.delta",
                    "event_id": _id("event"),
                    "response_id": response,
                    "item_id": item,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": audio,
                }
            )
            await send(
                {
                    "type": "response.output_audio_transcript.delta",
                    "event_id": _id("event"),
                    "response_id": response,
                    "item_id": item,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": f"word{n} ",
                }
            )
        details = (
            {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": None,
                    "message": "The server had an error while processing your request.",
                },
            }
            if status == "failed"
            else None
        )
        await send(
            {
                "type": "response.done",
                "event_id": _id("event"),
                "response": {
                    "id": response,
                    "object": "realtime.response",
                    "status": status,
                    "status_details": details,
                    "output": [],
                    "usage": {"input_tokens": 120, "output_tokens": 40, "total_tokens": 160},
                },
            }
        )
