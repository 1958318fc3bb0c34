"""The in-process shim: records every client connection an app makes with ``websockets``.

It hooks websockets' sans-I/O ``Protocol``, which the asyncio and the sync clients share
in every version from 13 on, so it sees each connection however ``connect`` was imported,
awaited, entered or subclassed (the openai SDK subclasses it), and each message however
it was sent (str, bytes, fragments) or read (``recv``, ``recv_streaming``, iteration):

- ``ClientProtocol.send_request``: the handshake request (URL, headers, subprotocols);
- ``Protocol.events_received``: the handshake response (time zero, or a rejection), then
  every data frame the server sent, recorded before the app can read it;
- ``Protocol.send_text`` / ``send_binary`` / ``send_continuation``: every frame the app
  sends, recorded before it is queued for the network;
- ``Protocol.receive_eof``: the end of the connection (close codes, or a drop).

Connections made with ``aiohttp`` are recorded by :mod:`recorder.shim_aiohttp`, into the
same files. Opening a WebSocket with a Python client the shim does not record
(:mod:`recorder.shim_unrecorded`) says so once; at exit, the program ``rtcap run`` started says how many
sessions it recorded (see :func:`report`).

If ``websockets.client`` is not imported yet, an import hook applies the patches when it
is. Nothing here may raise into websockets: a failure stops recording that connection,
with one warning, and the app goes on as if the shim were not there.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from time import monotonic_ns
from types import ModuleType
from typing import Any

from . import shim_unrecorded
from .capture import RECEIVED, SENT
from .redact import Redactor
from .session import SessionRecorder, default_captures, now_ns, warn, who_closed

ENV = "RTCAP_SHIM"
"""How ``rtcap run`` hands its settings to the interpreters it starts (JSON)."""

_OP_CONT, _OP_TEXT, _OP_BINARY = 0, 1, 2
USE_PROXY = shim_unrecorded.USE_PROXY


class _Config:
    def __init__(
        self,
        captures: Path,
        labels: Mapping[str, str],
        audio: bool,
        match: str | None,
        redactor: Redactor,
    ) -> None:
        self.captures = captures
        self.labels = dict(labels)
        self.audio = audio
        self.match = match
        self.redactor = redactor


_config: _Config | None = None
_recorded = 0  # sessions this process has written a capture for
_unwritten = 0  # sessions whose capture could not be created
_originals: list[tuple[type, str, Any]] = []
_live: weakref.WeakSet[_Connection] = weakref.WeakSet()
_lock = threading.Lock()


class _Connection:
    """The shim's state for one recorded client connection."""

    def __init__(self, config: _Config, url: str, headers: list[tuple[str, str]], offered: list[str]) -> None:
        self.config = config
        self.url = url
        self.headers = headers
        self.offered = offered
        self.recorder: SessionRecorder | None = None
        self.fragments: dict[int, tuple[int, list[bytes]]] = {}
        self.lock = threading.Lock()
        self.ended = False

    def start(
        self,
        status: int | None,
        headers: Any = None,
        body: bytes = b"",
        *,
        subprotocol: str | None = None,
        t0_ns: int | None = None,
    ) -> None:
        """The handshake ended: with a 101, a rejection, or no response at all. ``headers``
        are websockets' or aiohttp's response headers (``raw_items`` or ``items``)."""
        global _recorded, _unwritten
        config = self.config
        self.recorder = SessionRecorder.create(
            config.captures,
            url=self.url,
            request_headers=self.headers,
            recorder="shim",
            labels=config.labels,
            audio=config.audio,
            redactor=config.redactor,
        )
        if headers is not None and subprotocol is None:
            subprotocol = headers.get("Sec-WebSocket-Protocol")
        items = getattr(headers, "raw_items", None) or getattr(headers, "items", None)
        self.recorder.start(
            now_ns() if t0_ns is None else t0_ns,
            status=status,
            response_headers=list(items()) if items is not None else (),
            subprotocol=subprotocol,
            subprotocols=self.offered,
        )
        if self.recorder.sink is not None:
            _recorded += 1
        else:
            _unwritten += 1
        if status is not None and status != 101:
            text = body.decode(errors="replace").strip()
            self.end(closed_by="server", error=f"handshake rejected: HTTP {status} {text}".strip())
        else:
            _live.add(self)

    def frame(self, direction: int, opcode: int, data: Any, fin: bool) -> None:
        """Record a data frame, assembling fragments into their message."""
        recorder = self.recorder
        if recorder is None or self.ended:
            return
        if fin and opcode:  # a whole message in one frame: nearly every message
            payload = data if type(data) is bytes else bytes(data)
        elif opcode == _OP_CONT:
            first, parts = self.fragments.get(direction, (_OP_BINARY, []))
            parts.append(bytes(data))
            if not fin:
                return
            del self.fragments[direction]
            opcode, payload = first, b"".join(parts)
        else:
            self.fragments[direction] = (opcode, [bytes(data)])
            return
        recorder.message(direction, payload, monotonic_ns(), text=opcode == _OP_TEXT)

    def shown(self, text: str) -> str:
        """``text`` fit to print: this connection's URL in it redacted, known secrets out."""
        try:
            text = self.config.redactor.redact_mentions(text, self.url)
            return self.recorder.scrubber.scrub_text(text)[0] if self.recorder is not None else text
        except Exception:  # noqa: BLE001
            return "(a message rtcap could not redact)"

    def end(
        self, closed_by: str | None, code: int | None = None, reason: str | None = None, error: str | None = None
    ) -> None:
        if self.ended:
            return
        self.ended = True
        _live.discard(self)
        if self.recorder is not None:
            self.recorder.end(now_ns(), closed_by=closed_by, code=code, reason=reason, error=error)


def _session(protocol: Any) -> _Connection | None:
    return protocol.__dict__.get("_rtcap")


class _Open:
    """Stands for websockets' ``State.OPEN`` until websockets is patched (and imported)."""


_OPEN: Any = _Open


def _guard(protocol: Any, session: _Connection, action: Any, *args: Any) -> None:
    """Run a recording step; on any failure stop recording this connection, once, loudly."""
    try:
        with session.lock:
            action(*args)
    except Exception as e:  # the app must never see the shim's own failure
        protocol.__dict__.pop("_rtcap", None)
        session.ended = True
        warn(session.shown(f"recording stopped for a connection to {session.url}: {type(e).__name__}: {e}"))


def _url(uri: Any, path: str) -> str:
    if uri is None:
        return path
    scheme = "wss" if uri.secure else "ws"
    default = 443 if uri.secure else 80
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    port = "" if uri.port == default else f":{uri.port}"
    userinfo = ":".join(uri.user_info) + "@" if getattr(uri, "user_info", None) else ""
    return f"{scheme}://{userinfo}{host}{port}{path}"


# -- the hooks ---------------------------------------------------------------------------


def _open(protocol: Any, uri: Any, path: str, headers: Any) -> _Connection | None:
    """Start following a connection whose handshake request is going out, if it matches."""
    try:
        offered = [p.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")]
        session = _open_url(_url(uri, path), list(headers.raw_items()), offered)
    except Exception as e:
        warn(f"cannot record a connection: {type(e).__name__}: {e}")
        return None
    if session is not None:
        protocol.__dict__["_rtcap"] = session
    return session


def _open_url(url: str, headers: list[tuple[str, str]], offered: list[str]) -> _Connection | None:
    """A connection to follow, if the shim is installed and ``url`` matches ``--match``."""
    config = _config
    if config is None or (config.match is not None and not fnmatch.fnmatchcase(url, config.match)):
        return None
    return _Connection(config, url, headers, [p for p in offered if p])


def _patched_send_request(original: Any) -> Any:
    def send_request(self: Any, request: Any) -> None:
        _open(self, getattr(self, "uri", None) or getattr(self, "wsuri", None), request.path, request.headers)
        return original(self, request)

    return send_request


def _patched_events_received(original: Any) -> Any:
    def events_received(self: Any) -> Any:
        events = original(self)
        session = self.__dict__.get("_rtcap")
        if session is not None and events:
            _guard(self, session, _received, session, events)
        return events

    return events_received


def _received(session: _Connection, events: Iterable[Any]) -> None:
    for event in events:
        opcode = getattr(event, "opcode", None)
        if opcode is None:
            if session.recorder is None and hasattr(event, "status_code"):
                session.start(event.status_code, event.headers, event.body or b"")
        elif opcode <= _OP_BINARY:
            session.frame(RECEIVED, opcode, event.data, event.fin)


def _patched_send(original: Any, opcode: int) -> Any:
    def send(self: Any, data: Any, fin: bool = True) -> None:
        session = self.__dict__.get("_rtcap")
        if session is not None and self.state is _OPEN:
            _guard(self, session, session.frame, SENT, opcode, data, fin)
        return original(self, data, fin)

    return send


def _patched_receive_eof(original: Any) -> Any:
    def receive_eof(self: Any) -> None:
        original(self)
        session = _session(self)
        if session is not None and not session.ended:
            _guard(self, session, _finish, self, session)

    return receive_eof


def _finish(protocol: Any, session: _Connection) -> None:
    if session.recorder is None:
        error = protocol.handshake_exc
        session.start(None)
        session.end(
            closed_by="server",
            error=f"handshake failed: {type(error).__name__}: {error}" if error else "handshake failed",
        )
        return
    closed_by, code, reason = who_closed(protocol, peer="server", local="client")
    session.end(closed_by=closed_by, code=code, reason=reason)


# The legacy API (websockets.legacy: the default `websockets.connect` of websockets 13).


def _patched_legacy_handshake(original: Any) -> Any:
    async def handshake(self: Any, wsuri: Any, *args: Any, **kwargs: Any) -> None:
        if _config is None:
            return await original(self, wsuri, *args, **kwargs)
        try:
            await original(self, wsuri, *args, **kwargs)
        except Exception as e:
            # A rejection (InvalidStatusCode and kin) is recorded like the new API's.
            status = getattr(e, "status_code", None)
            if status is not None and self.__dict__.get("request_headers") is not None:
                session = _open(self, wsuri, self.path, self.request_headers)
                if session is not None:
                    _guard(self, session, session.start, status, getattr(e, "headers", None))
            raise
        session = _open(self, wsuri, self.path, self.request_headers)
        if session is not None:
            _guard(self, session, session.start, 101, self.response_headers)

    return handshake


def _patched_legacy_write(original: Any) -> Any:
    def write_frame_sync(self: Any, fin: bool, opcode: int, data: Any) -> None:
        session = _session(self)
        if session is not None and opcode <= _OP_BINARY and self.state is _OPEN:
            _guard(self, session, session.frame, SENT, int(opcode), data, fin)
        return original(self, fin, opcode, data)

    return write_frame_sync


def _patched_legacy_read(original: Any) -> Any:
    async def read_data_frame(self: Any, max_size: int | None) -> Any:
        frame = await original(self, max_size)
        session = _session(self)
        if session is not None and frame is not None:
            _guard(self, session, session.frame, RECEIVED, int(frame.opcode), frame.data, frame.fin)
        return frame

    return read_data_frame


def _patched_legacy_lost(original: Any) -> Any:
    def connection_lost(self: Any, exc: Exception | None) -> None:
        original(self, exc)
        session = _session(self)
        if session is not None and not session.ended:
            _guard(self, session, _finish, self, session)

    return connection_lost


def _hooks(module: str) -> list[tuple[Any, str, Any]]:
    """What to patch once ``module`` is imported: (class, method, wrapper maker)."""
    if module == "aiohttp.client":
        from . import shim_aiohttp

        return shim_aiohttp.hooks()
    if module in shim_unrecorded.UNRECORDED:
        return shim_unrecorded.hooks(module)
    import websockets

    version = getattr(websockets, "__version__", "0")
    if int(version.split(".")[0]) < 13:
        warn(f"websockets {version} is older than 13: its connections are not recorded; {USE_PROXY}")
        return []
    global _OPEN
    from websockets.protocol import State

    _OPEN = State.OPEN
    if module == "websockets.client":
        from websockets.client import ClientProtocol
        from websockets.protocol import Protocol

        return [
            (ClientProtocol, "send_request", _patched_send_request),
            (Protocol, "events_received", _patched_events_received),
            (Protocol, "send_text", lambda f: _patched_send(f, _OP_TEXT)),
            (Protocol, "send_binary", lambda f: _patched_send(f, _OP_BINARY)),
            (Protocol, "send_continuation", lambda f: _patched_send(f, _OP_CONT)),
            (Protocol, "receive_eof", _patched_receive_eof),
        ]
    from websockets.legacy.client import WebSocketClientProtocol
    from websockets.legacy.protocol import WebSocketCommonProtocol

    return [
        (WebSocketClientProtocol, "handshake", _patched_legacy_handshake),
        (WebSocketCommonProtocol, "write_frame_sync", _patched_legacy_write),
        (WebSocketCommonProtocol, "read_data_frame", _patched_legacy_read),
        (WebSocketCommonProtocol, "connection_lost", _patched_legacy_lost),
    ]


HOOKED_MODULES = ("websockets.client", "websockets.legacy.client", "aiohttp.client", *shim_unrecorded.UNRECORDED)
_patched: set[str] = set()


def _patch(module: str) -> None:
    """Apply the hooks for a loaded module (once)."""
    if module in _patched:
        return
    _patched.add(module)
    for cls, name, make in _hooks(module):
        original = cls.__dict__[name]
        _originals.append((cls, name, original))
        setattr(cls, name, make(original))


class _ImportHook(importlib.abc.MetaPathFinder):
    """Patches websockets when ``websockets.client`` is first imported."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name not in HOOKED_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            with _lock:
                if _config is not None:
                    try:
                        _patch(name)
                    except Exception as e:
                        warn(f"cannot hook {name} ({type(e).__name__}: {e}); {USE_PROXY}")

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


_hook = _ImportHook()


# -- public API --------------------------------------------------------------------------


def install(
    captures: str | os.PathLike[str] | None = None,
    labels: Mapping[str, str] | None = None,
    audio: bool = True,
    match: str | None = None,
    redact_headers: Iterable[str] = (),
    redact_query: Iterable[str] = (),
) -> None:
    """Record every websockets and aiohttp client connection of this process from now on.

    ``captures`` defaults to ``$RTCAP_CAPTURES`` or ``./captures`` (made absolute now);
    ``match`` is a URL glob (``wss://api.openai.com/*``) limiting what is recorded.
    Installing again replaces the settings.
    """
    global _config
    with _lock:
        _config = _Config(
            Path(captures).absolute() if captures is not None else default_captures(),
            labels or {},
            audio,
            match,
            Redactor(redact_headers, redact_query),
        )
        for module in HOOKED_MODULES:
            if module in sys.modules:
                try:
                    _patch(module)
                except Exception as e:
                    warn(f"cannot hook {module} ({type(e).__name__}: {e}); {USE_PROXY}")
        if _hook not in sys.meta_path:
            sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    """Stop recording and restore websockets and aiohttp exactly as they were. Connections still open
    get their end record now (``closed_by`` null, error ``recording stopped``)."""
    global _config
    with _lock:
        _config = None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(_hook)
        while _originals:
            cls, name, original = _originals.pop()
            setattr(cls, name, original)
        _patched.clear()
        for session in list(_live):
            with session.lock:
                session.end(closed_by=None, error="recording stopped (recorder.uninstall)")


@contextlib.contextmanager
def recording(**settings: Any) -> Iterator[None]:
    """``with recording(captures=...):`` installs the shim for the block, then uninstalls it."""
    install(**settings)
    try:
        yield
    finally:
        uninstall()


SITE_DIR = Path(__file__).parent / "_site"
"""Holds the ``sitecustomize`` that loads the shim in every interpreter ``rtcap run`` starts."""


def run_environment(
    env: Mapping[str, str],
    *,
    captures: Path,
    labels: Mapping[str, str],
    audio: bool = True,
    match: str | None = None,
    redact_headers: Iterable[str] = (),
    redact_query: Iterable[str] = (),
) -> dict[str, str]:
    """The environment for a program run under the shim: ``SITE_DIR`` first on
    ``PYTHONPATH`` and the settings in ``$RTCAP_SHIM``, for it and its children."""
    settings = {
        # The program ``rtcap run`` execs keeps its pid: that interpreter reports at exit.
        "pid": os.getpid(),
        "captures": str(Path(captures).absolute()),
        "labels": dict(labels),
        "audio": audio,
        "match": match,
        "redact_headers": list(redact_headers),
        "redact_query": list(redact_query),
    }
    out = dict(env)
    out[ENV] = json.dumps(settings)
    out["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return out


def install_from_env() -> bool:
    """Install with the settings ``rtcap run`` put in ``$RTCAP_SHIM``; False if none."""
    raw = os.environ.get(ENV)
    if not raw:
        return False
    settings = json.loads(raw)
    install(
        captures=settings["captures"],
        labels=settings.get("labels") or {},
        audio=settings.get("audio", True),
        match=settings.get("match"),
        redact_headers=settings.get("redact_headers", ()),
        redact_query=settings.get("redact_query", ()),
    )
    atexit.register(report, settings.get("pid") == os.getpid())
    return True


def report(always: bool = False) -> None:
    """Say on stderr how many sessions this process recorded: always in the program
    ``rtcap run`` started (``always``), else only in processes that recorded some."""
    config = _config
    if config is None or not (_recorded or _unwritten or always):
        return
    lost = f"{_unwritten} session{'s' * (_unwritten != 1)} could not be written to {config.captures}"
    if _recorded:
        line = f"recorded {_recorded} session{'s' * (_recorded != 1)} in {config.captures}"
        line += f"; {lost}" if _unwritten else ""
    elif _unwritten:
        line = f"recorded no session: {lost}"
    else:
        line = (
            "recorded no session: the program opened no connection with websockets or aiohttp"
            f"{' matching ' + config.match if config.match else ''}; for other clients, use `rtcap proxy`"
        )
    with contextlib.suppress(Exception):
        print(f"rtcap: {line}", file=sys.stderr, flush=True)
