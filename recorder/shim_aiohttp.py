"""The shim's hooks for ``aiohttp``'s WebSocket client (LiveKit's realtime plugin uses it).

aiohttp has no sans-I/O core to hook, so the shim sits at the three places every client
connection passes through, in every version from 3.9 on:

- ``ClientSession._ws_connect``: the handshake, which ``ws_connect`` runs however it is used
  (awaited or as a context manager): the request headers as sent, the response, the
  subprotocol, or the rejection (status and headers) or the error that ended the attempt;
- the queue between aiohttp's frame parser and the app (``WebSocketDataQueue``, or
  ``FlowControlDataQueue`` before 3.11): every message the server sent, recorded when the
  parser hands it over, before ``receive*`` or iteration can return it. The parser is
  compiled, but its ``feed_data`` call honours a Python subclass, so ``aiohttp.client``
  builds a recording subclass;
- ``WebSocketWriter.send_frame`` (``_send_frame`` before 3.11): every frame the app sends
  (``send_str``, ``send_bytes``, ``send_json``, and the close frame), recorded before it is
  written. aiohttp's own pings and pongs pass unrecorded, as in websockets' recordings.

The connection ends when both close frames have been seen, when the connection is lost, or
when ``ClientWebSocketResponse.close`` returns, whichever comes first.
"""

from __future__ import annotations

import struct
from time import monotonic_ns
from typing import Any

from . import shim
from .capture import RECEIVED, SENT

_OP_TEXT, _OP_BINARY, _OP_CLOSE = 1, 2, 8
_MIN_VERSION = (3, 9)


class _Ends:
    """Which close frames a connection has seen, in order, as websockets' protocol keeps them."""

    def __init__(self) -> None:
        self.sent: tuple[int, str] | None = None
        self.received: tuple[int, str] | None = None
        self.received_first = False

    def outcome(self) -> tuple[str, int, str]:
        """Who closed, with which code and reason (the server with 1006 when nobody did)."""
        if self.received is not None and (self.sent is None or self.received_first):
            return ("server", *self.received)
        if self.sent is not None:
            return ("client", *self.sent)
        return "server", 1006, ""


def _finish(session: shim._Connection, error: str | None = None) -> None:
    closed_by, code, reason = session.__dict__.setdefault("_ends", _Ends()).outcome()
    session.end(closed_by=closed_by, code=code, reason=reason, error=error if code == 1006 else None)


def _queue_class(base: type) -> type:
    """A subclass of aiohttp's message queue that records what the parser feeds it."""

    class RecordingQueue(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Built right after aiohttp accepted the handshake: time zero. Messages the
            # server sent with its 101 are parsed before ``_ws_connect`` returns; they wait
            # here, with their times, for the session to start.
            self._rtcap_t0 = monotonic_ns()
            self._rtcap_early: list[tuple[Any, int]] | None = []

        def feed_data(self, data: Any, size: int) -> None:
            session = self.__dict__.get("_rtcap")
            if session is not None:
                shim._guard(self, session, _received, session, data, monotonic_ns())
            elif self._rtcap_early is not None:
                self._rtcap_early.append((data, monotonic_ns()))
            super().feed_data(data, size)

        def feed_eof(self) -> None:
            super().feed_eof()
            session = self.__dict__.get("_rtcap")
            if session is not None and not session.ended:
                shim._guard(self, session, _finish, session)

        def set_exception(self, exc: BaseException, *args: Any) -> None:
            super().set_exception(exc, *args)
            session = self.__dict__.get("_rtcap")
            if session is not None and not session.ended:
                shim._guard(self, session, _finish, session, f"{type(exc).__name__}: {exc}")

    return RecordingQueue


def _received(session: shim._Connection, message: Any, t_ns: int) -> None:
    kind = int(message[0])
    if kind in (_OP_TEXT, _OP_BINARY) and session.recorder is not None and not session.ended:
        data = message[1]
        payload = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        session.recorder.message(RECEIVED, payload, t_ns, text=kind == _OP_TEXT)
    elif kind == _OP_CLOSE:
        ends = session.__dict__.setdefault("_ends", _Ends())
        ends.received = (message[1] or 1005, message[2] or "")
        ends.received_first = ends.sent is None
        if ends.sent is not None:
            _finish(session)


def _sent(session: shim._Connection, message: Any, opcode: int) -> None:
    if opcode in (_OP_TEXT, _OP_BINARY) and session.recorder is not None:
        session.recorder.message(SENT, bytes(message), monotonic_ns(), text=opcode == _OP_TEXT)
    elif opcode == _OP_CLOSE:
        ends = session.__dict__.setdefault("_ends", _Ends())
        code = struct.unpack("!H", message[:2])[0] if len(message) >= 2 else 1005
        ends.sent = (code, bytes(message[2:]).decode(errors="replace"))
        if ends.received is not None:
            _finish(session)


def _patched_send_frame(original: Any) -> Any:
    async def send_frame(self: Any, message: Any, opcode: int, *args: Any, **kwargs: Any) -> None:
        session = self.__dict__.get("_rtcap")
        if session is not None and not session.ended:
            shim._guard(self, session, _sent, session, message, int(opcode))
        return await original(self, message, opcode, *args, **kwargs)

    return send_frame


def _request(url: Any, kwargs: dict[str, Any]) -> tuple[str, list[tuple[str, str]], list[str]]:
    offered = [str(p) for p in kwargs.get("protocols") or ()]
    headers = [(str(k), str(v)) for k, v in dict(kwargs.get("headers") or {}).items()]
    return str(url), headers, offered


def _patched_ws_connect(original: Any) -> Any:
    async def _ws_connect(self: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if shim._config is None:
            return await original(self, url, *args, **kwargs)
        try:
            ws = await original(self, url, *args, **kwargs)
        except Exception as e:
            _failed(url, kwargs, e)
            raise
        _opened(ws, kwargs)
        return ws

    return _ws_connect


def _failed(url: Any, kwargs: dict[str, Any], error: Exception) -> None:
    """Record a handshake that was rejected (a status) or never answered (an error)."""
    info = getattr(error, "request_info", None)
    status = getattr(error, "status", None) if info is not None else None
    if info is not None:
        url, headers, offered = str(info.real_url), list(info.headers.items()), _request(url, kwargs)[2]
    else:
        url, headers, offered = _request(url, kwargs)
    session = shim._open_url(url, headers, offered)
    if session is None:
        return
    with session.lock:
        try:
            if status:
                session.start(status, getattr(error, "headers", None) or {})
                if not session.ended:  # a 101 that aiohttp found wrong (a bad accept key, say)
                    session.end(closed_by="rtcap", error=f"handshake failed: {type(error).__name__}: {error}")
            else:
                session.start(None)
                session.end(closed_by="server", error=f"handshake failed: {type(error).__name__}: {error}")
        except Exception as e:  # noqa: BLE001
            shim.warn(session.shown(f"cannot record a connection to {session.url}: {type(e).__name__}: {e}"))


def _opened(ws: Any, kwargs: dict[str, Any]) -> None:
    """Start recording a connection aiohttp has just opened, with what the server sent so far."""
    queue, writer, response = ws._reader, ws._writer, ws._response
    early = queue.__dict__.get("_rtcap_early")
    queue._rtcap_early = None
    info = response.request_info
    session = shim._open_url(str(info.real_url), list(info.headers.items()), _request(None, kwargs)[2])
    if session is None or early is None:
        return
    with session.lock:
        try:
            session.start(101, response.headers, subprotocol=ws.protocol, t0_ns=queue._rtcap_t0)
            for message, t_ns in early:
                _received(session, message, t_ns)
        except Exception as e:  # noqa: BLE001
            session.ended = True
            shim.warn(session.shown(f"recording stopped for a connection to {session.url}: {type(e).__name__}: {e}"))
            return
    queue.__dict__["_rtcap"] = session
    writer.__dict__["_rtcap"] = session
    ws.__dict__["_rtcap"] = session


def _patched_close(original: Any) -> Any:
    async def close(self: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            return await original(self, *args, **kwargs)
        finally:
            session = self.__dict__.get("_rtcap")
            if session is not None and not session.ended:
                shim._guard(self, session, _finish, session, "closed without a close frame")

    return close


def hooks() -> list[tuple[Any, str, Any]]:
    """What to patch in a loaded ``aiohttp.client``: (class or module, name, wrapper maker)."""
    import aiohttp
    import aiohttp.client as client
    from aiohttp.client_ws import ClientWebSocketResponse
    from aiohttp.http import WebSocketWriter

    version = tuple(int(p) for p in aiohttp.__version__.split(".")[:2])
    if version < _MIN_VERSION:
        shim.warn(
            f"aiohttp {aiohttp.__version__} is older than 3.9: its connections are not recorded; {shim.USE_PROXY}"
        )
        return []
    queue = "WebSocketDataQueue" if "WebSocketDataQueue" in client.__dict__ else "FlowControlDataQueue"
    send = "send_frame" if "send_frame" in WebSocketWriter.__dict__ else "_send_frame"
    return [
        (client.ClientSession, "_ws_connect", _patched_ws_connect),
        (client, queue, _queue_class),
        (WebSocketWriter, send, _patched_send_frame),
        (ClientWebSocketResponse, "close", _patched_close),
    ]
