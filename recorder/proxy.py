"""``rtcap proxy``: a recording reverse proxy for any WebSocket client.

Each client connection is relayed to the upstream URL and recorded as one session. The
upstream handshake happens inside the client's handshake, so what the upstream says
(its subprotocol, its headers, or its rejection with status and body) is what the
client gets. Every message is recorded before it is forwarded.

The handshakes are here; the relaying is :mod:`recorder.relay`'s frame-level relay,
websockets' sans-I/O protocols driven from asyncio transports.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

try:  # websockets >= 15 connects through HTTP(S)_PROXY / SOCKS proxies; so does the relay
    from websockets.asyncio.client import connect_http_proxy, connect_socks_proxy
    from websockets.uri import get_proxy, parse_proxy
except ImportError:  # older websockets connected directly, and so does the relay with them
    get_proxy = None  # type: ignore[assignment]

from .capture import RECEIVED, SENT
from .listen import DEFAULT_PORTS
from .redact import Redactor
from .relay import Leg, Session, read_buffer
from .serving import serve_until_stopped
from .session import SessionRecorder, now_ns

# Headers that belong to one hop of the connection, regenerated on each leg.
HOP_HEADERS = frozenset(
    {
        "host",
        "connection",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-accept",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
DEFAULT_PORT = DEFAULT_PORTS["proxy"]


def upstream_url(upstream: str, path: str) -> str:
    """The app's request path appended to the upstream's path, queries merged (the app's win).

    An app path that already begins with the upstream's path is used as it is: an SDK
    pointed at ``ws://proxy/v1`` asks for ``/v1/realtime``, and an upstream of
    ``wss://api.openai.com/v1`` must not make that ``/v1/v1/realtime``."""
    base = urlsplit(upstream)
    app_path, _, app_query = path.partition("?")
    base_path = base.path.rstrip("/")
    if app_path in ("", "/"):
        joined = base.path or "/"
    elif base_path and (app_path == base_path or app_path.startswith(base_path + "/")):
        joined = app_path
    else:
        joined = base_path + app_path
    app_items = [item for item in app_query.split("&") if item]
    app_names = {unquote_plus(item.partition("=")[0]) for item in app_items}
    kept = [item for item in base.query.split("&") if item and unquote_plus(item.partition("=")[0]) not in app_names]
    return urlunsplit((base.scheme, base.netloc, joined, "&".join(kept + app_items), ""))


class _AppProtocol(ServerProtocol):
    """The app's leg: no size limit, no extensions, and the subprotocol the upstream chose."""

    chosen: Subprotocol | None = None

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        return self.chosen


class RecordingProxy:
    """Relays WebSocket clients to ``upstream`` and records each connection."""

    def __init__(
        self,
        upstream: str,
        captures: Path,
        *,
        labels: Mapping[str, str] | None = None,
        audio: bool = True,
        redactor: Redactor | None = None,
        log: Callable[[str], None] | None = None,
        open_timeout: float = 10,
    ) -> None:
        self.upstream = upstream
        self.captures = captures
        self.labels = dict(labels or {})
        self.audio = audio
        self.redactor = redactor or Redactor()
        self.log = log or (lambda line: print(line, flush=True))
        self.open_timeout = open_timeout
        self.sessions: set[Session] = set()  # relaying now
        self._opening: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self._buffer = read_buffer()  # every leg's: a proxy serves on one event loop

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ProxyServer:
        """The proxy listening on ``host:port``: an async context manager whose value has
        ``sockets``; leaving it closes every open session with 1001 (going away)."""
        return ProxyServer(self, host, port)

    # -- the app's handshake --------------------------------------------------------

    def accept(self) -> Leg:
        """A new app connection: its leg waits for the handshake request."""
        leg = Leg(_AppProtocol(max_size=None), "client", SENT, self._buffer)
        leg.on_handshake = self._requested
        loop = asyncio.get_running_loop()
        # An app that sends no handshake request in time is dropped, as websockets' server does.
        timer = loop.call_later(self.open_timeout, _abort_if_silent, leg)
        leg.on_lost = lambda leg: timer.cancel()
        return leg

    def _requested(self, app: Leg, request: Any) -> None:
        if not isinstance(request, Request):  # no valid HTTP request: the protocol ends it
            return
        app.hold(True)
        ws: _AppProtocol = app.ws  # type: ignore[assignment]
        try:
            ws.process_request(request)
        except InvalidHandshake:  # not a WebSocket handshake: refused without a capture
            ws.send_response(ws.accept(request))
            app.flush()
            return
        task = asyncio.get_running_loop().create_task(self._open(app, request))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, app: Leg, request: Request) -> None:
        url = upstream_url(self.upstream, request.path)
        offered = [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]
        offered = [p for p in offered if p]
        headers = [(k, v) for k, v in request.headers.raw_items() if k.lower() not in HOP_HEADERS]
        recorder = SessionRecorder.create(
            self.captures,
            url=url,
            request_headers=request.headers.raw_items(),
            recorder="proxy",
            labels=self.labels,
            audio=self.audio,
            redactor=self.redactor,
        )
        ws: _AppProtocol = app.ws  # type: ignore[assignment]
        try:
            upstream, response = await self._connect(url, headers, offered)
        except asyncio.CancelledError:  # the proxy is stopping
            app.abort()
            recorder.start(now_ns(), status=None, subprotocols=offered)
            recorder.end(now_ns(), closed_by="rtcap", error="rtcap proxy stopped during the handshake")
            raise
        except InvalidStatus as e:
            self._rejected(app, recorder, e.response, offered)
            return
        except (TimeoutError, OSError, InvalidHandshake, InvalidURI, ValueError) as e:
            # The error may quote the upstream URL (InvalidURI does), credentials and all.
            error = self.redactor.redact_mentions(f"upstream unreachable: {type(e).__name__}: {e}", url)
            error = recorder.scrubber.scrub_text(error)[0]
            recorder.start(now_ns(), status=None, subprotocols=offered)
            recorder.end(now_ns(), closed_by="rtcap", error=error)
            self.log(f"session {recorder.session_id} failed: {error}")
            if not app.lost:
                ws.send_response(ws.reject(502, f"rtcap proxy: {error}\n"))
                app.flush()
            return
        if app.lost or ws.state is not CONNECTING:
            upstream.abort()
            recorder.start(now_ns(), status=None, subprotocols=offered)
            recorder.end(now_ns(), closed_by="client", code=1006, error="the app left during the handshake")
            return
        ws.chosen = upstream.ws.subprotocol
        accepted = ws.accept(request)
        for name, value in _forwardable(response.headers).raw_items():
            if name.lower() != "date":
                accepted.headers[name] = value
        ws.send_response(accepted)
        app.flush()
        recorder.start(
            now_ns(),
            response_headers=response.headers.raw_items(),
            subprotocol=upstream.ws.subprotocol,
            subprotocols=offered,
        )
        path = request.path
        self.log(f"session {recorder.session_id} opened: {self.redactor.redact_mentions(path, path)}")
        session = Session(recorder, app, upstream, log=self.log, on_end=self.sessions.discard)
        self.sessions.add(session)
        session.link()

    async def _connect(self, url: str, headers: list[tuple[str, str]], offered: list[str]) -> tuple[Leg, Response]:
        """The upstream's leg, its handshake done; raises ``InvalidStatus`` when the
        upstream rejects it, and ``OSError``, ``TimeoutError`` or ``InvalidHandshake``
        when it cannot be reached or does not speak WebSocket."""
        uri = parse_uri(url)
        ws = ClientProtocol(uri, subprotocols=offered or None, max_size=None)  # type: ignore[arg-type]
        leg = Leg(ws, "server", RECEIVED, self._buffer)
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[Response] = loop.create_future()

        def handshake(leg: Leg, response: Any) -> None:
            leg.hold(True)  # frames that follow wait until the app's leg is open
            if not answered.done():
                answered.set_result(response)

        def lost(leg: Leg) -> None:
            if not answered.done():
                answered.set_exception(ConnectionError("the upstream closed the connection during the handshake"))

        leg.on_handshake, leg.on_lost = handshake, lost
        tls = self._tls_context() if uri.secure else None
        try:
            async with asyncio.timeout(self.open_timeout):
                await _connect_transport(leg, uri, tls)
                request = ws.connect()
                request.headers.update(headers)
                ws.send_request(request)
                leg.flush()
                response = await answered
        except BaseException:
            leg.abort()
            raise
        leg.on_lost = None
        if ws.handshake_exc is not None:
            leg.abort()
            raise ws.handshake_exc
        return leg, response

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _rejected(self, app: Leg, recorder: SessionRecorder, rejected: Response, offered: list[str]) -> None:
        recorder.start(
            now_ns(), status=rejected.status_code, response_headers=rejected.headers.raw_items(), subprotocols=offered
        )
        body = rejected.body.decode(errors="replace").strip()
        recorder.end(
            now_ns(), closed_by="server", error=f"upstream rejected the handshake: HTTP {rejected.status_code} {body}"
        )
        self.log(f"session {recorder.session_id} rejected by upstream: HTTP {rejected.status_code}")
        if app.lost:
            return
        ws: _AppProtocol = app.ws  # type: ignore[assignment]
        response = ws.reject(rejected.status_code, "")
        response.reason_phrase = rejected.reason_phrase
        response.headers = _forwardable(rejected.headers)
        response.headers["Content-Length"] = str(len(rejected.body))
        response.headers["Connection"] = "close"
        response.body = rejected.body
        ws.send_response(response)
        app.flush()

    async def stop(self) -> None:
        """Close every session with 1001 (going away) and wait until they have ended."""
        for task in list(self._opening):
            task.cancel()
        sessions = list(self.sessions)
        for session in sessions:
            session.stop()
        if sessions:
            await asyncio.wait([s.ended for s in sessions], timeout=2 * 10 + 1)


class ProxyServer:
    """A :class:`RecordingProxy` listening: ``async with`` it to serve."""

    def __init__(self, proxy: RecordingProxy, host: str, port: int) -> None:
        self.proxy, self.host, self.port = proxy, host, port
        self.server: asyncio.Server | None = None

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets."""
        return tuple(self.server.sockets) if self.server is not None else ()

    async def __aenter__(self) -> ProxyServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.proxy.accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.proxy.stop()


async def _connect_transport(leg: Leg, uri: WebSocketURI, tls: ssl.SSLContext | None) -> None:
    """Connect ``leg`` to the upstream, through the proxy the environment names for it
    (``HTTPS_PROXY`` and the like) as websockets' ``connect`` does, else directly."""
    loop = asyncio.get_running_loop()
    hostname = uri.host if tls else None
    proxy = get_proxy(uri) if get_proxy is not None else None
    if proxy is None:
        await loop.create_connection(lambda: leg, uri.host, uri.port, ssl=tls, server_hostname=hostname)
        return
    parsed = parse_proxy(proxy)
    if parsed.scheme.startswith("socks"):
        sock = await connect_socks_proxy(parsed, uri)
        await loop.create_connection(lambda: leg, sock=sock, ssl=tls, server_hostname=hostname)
        return
    transport: Any = await connect_http_proxy(parsed, uri, ssl=True if parsed.scheme == "https" else None)
    transport.set_protocol(leg)
    if tls is not None:
        transport = await loop.start_tls(transport, leg, tls, server_hostname=hostname)
    leg.connection_made(transport)


def _abort_if_silent(leg: Leg) -> None:
    if leg.on_handshake is not None:
        leg.abort()


def _forwardable(headers: Headers) -> Headers:
    return Headers([(k, v) for k, v in headers.raw_items() if k.lower() not in HOP_HEADERS])


async def run_proxy(
    proxy: RecordingProxy,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Future[None] | None = None,
) -> None:
    """Serve until ``stop`` resolves or SIGINT/SIGTERM; ``ready`` gets the first line."""
    upstream = proxy.redactor.redact_url(proxy.upstream)[0]
    await serve_until_stopped(
        proxy.serve(host, port),
        lambda url: f"rtcap proxy: {url} -> {upstream}",
        ready=ready or (lambda line: print(line, flush=True)),
        stop=stop,
    )
