"""``rtcap proxy``: a recording reverse proxy for any WebSocket client.

Each client connection is relayed to the upstream URL and recorded as one session. The
upstream handshake happens inside the client's handshake, so what the upstream says
(its subprotocol, its headers, or its rejection with status and body) is what the
client gets. Every message is recorded before it is forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .capture import RECEIVED, SENT
from .listen import DEFAULT_PORTS
from .redact import Redactor
from .serving import serve_until_stopped
from .session import SessionRecorder, now_ns, warn, who_closed

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


@dataclass
class _Leg:
    """What ``process_request`` learned about one client's session."""

    recorder: SessionRecorder
    upstream: ClientConnection
    offered: list[str] = field(default_factory=list)


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

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> Any:
        """The websockets server (an async context manager) listening on ``host:port``."""
        return serve(
            self._relay,
            host,
            port,
            process_request=self._connect_upstream,
            process_response=self._forward_response_headers,
            select_subprotocol=self._select_subprotocol,
            server_header=None,
            max_size=None,
            compression=None,
        )

    def _recorder(self, request: Request, url: str) -> SessionRecorder:
        return SessionRecorder.create(
            self.captures,
            url=url,
            request_headers=request.headers.raw_items(),
            recorder="proxy",
            labels=self.labels,
            audio=self.audio,
            redactor=self.redactor,
        )

    async def _connect_upstream(self, connection: ServerConnection, request: Request) -> Response | None:
        url = upstream_url(self.upstream, request.path)
        offered = [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]
        offered = [p for p in offered if p]
        headers = [(k, v) for k, v in request.headers.raw_items() if k.lower() not in HOP_HEADERS]
        recorder = self._recorder(request, url)
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                subprotocols=offered or None,  # type: ignore[arg-type]
                user_agent_header=None,
                max_size=None,
                compression=None,
                open_timeout=self.open_timeout,
            )
        except InvalidStatus as e:
            rejected = e.response
            recorder.start(
                now_ns(),
                status=rejected.status_code,
                response_headers=rejected.headers.raw_items(),
                subprotocols=offered,
            )
            body = rejected.body.decode(errors="replace").strip()
            recorder.end(
                now_ns(),
                closed_by="server",
                error=f"upstream rejected the handshake: HTTP {rejected.status_code} {body}",
            )
            self.log(f"session {recorder.session_id} rejected by upstream: HTTP {rejected.status_code}")
            response = connection.respond(rejected.status_code, "")
            response.reason_phrase = rejected.reason_phrase
            response.headers = _forwardable(rejected.headers)
            response.headers["Content-Length"] = str(len(rejected.body))
            response.headers["Connection"] = "close"
            response.body = rejected.body
            return response
        except (TimeoutError, OSError, InvalidHandshake, InvalidURI, ValueError) as e:
            # The error may quote the upstream URL (InvalidURI does), credentials and all.
            error = self.redactor.redact_mentions(f"upstream unreachable: {type(e).__name__}: {e}", url)
            error = recorder.scrubber.scrub_text(error)[0]
            recorder.start(now_ns(), status=None, subprotocols=offered)
            recorder.end(now_ns(), closed_by="rtcap", error=error)
            self.log(f"session {recorder.session_id} failed: {error}")
            return connection.respond(502, f"rtcap proxy: {error}\n")
        connection.rtcap_leg = _Leg(recorder, upstream, offered)  # type: ignore[attr-defined]
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        leg: _Leg = connection.rtcap_leg  # type: ignore[attr-defined]
        return leg.upstream.subprotocol

    @staticmethod
    def _forward_response_headers(connection: ServerConnection, request: Request, response: Response) -> None:
        leg: _Leg | None = getattr(connection, "rtcap_leg", None)
        if leg is None or response.status_code != 101 or leg.upstream.response is None:
            return
        for name, value in _forwardable(leg.upstream.response.headers).raw_items():
            if name.lower() not in ("date",):
                response.headers[name] = value

    async def _relay(self, client: ServerConnection) -> None:
        leg: _Leg = client.rtcap_leg  # type: ignore[attr-defined]
        upstream, recorder = leg.upstream, leg.recorder
        upstream_response = upstream.response.headers.raw_items() if upstream.response else ()
        recorder.start(
            now_ns(), response_headers=upstream_response, subprotocol=upstream.subprotocol, subprotocols=leg.offered
        )
        path = client.request.path if client.request else ""
        self.log(f"session {recorder.session_id} opened: {self.redactor.redact_mentions(path, path)}")
        sides = {id(client): "client", id(upstream): "server"}
        # Each pump is keyed by its source: once a leg closes, the pump reading it drains
        # what that leg had already delivered before the close is mirrored to the other.
        pumps = {
            id(client): asyncio.ensure_future(_pump(client, upstream, SENT, recorder)),
            id(upstream): asyncio.ensure_future(_pump(upstream, client, RECEIVED, recorder)),
        }
        closed_by, code, reason = "rtcap", 1001, "rtcap proxy stopped"
        try:
            done, _ = await asyncio.wait(pumps.values(), return_when=asyncio.FIRST_COMPLETED)
            closed = next(iter(done)).result()
            other = upstream if closed is client else client
            await asyncio.wait([pumps[id(closed)]], timeout=10)
            closed_by, code, reason = who_closed(closed.protocol, peer=sides[id(closed)], local="rtcap")
            await _mirror_close(other, code, reason)
            await asyncio.wait(pumps.values(), timeout=10)
        finally:
            for task in pumps.values():
                task.cancel()
            if upstream.state.name != "CLOSED" and closed_by == "rtcap":
                upstream.transport.abort()
            recorder.end(now_ns(), closed_by=closed_by, code=code, reason=reason)
            said = f"{code}: {recorder.scrubber.scrub_text(reason)[0]}" if reason else f"{code}"
            self.log(f"session {recorder.session_id} closed by {closed_by} ({said}), {recorder.seq} messages")


async def _pump(src: Any, dst: Any, direction: int, recorder: SessionRecorder) -> Any:
    """Relay ``src`` to ``dst``, recording each message first. Returns the leg that
    ended the relay: ``src`` when it closed, ``dst`` when it could no longer be written."""
    try:
        async for message in src:
            try:
                recorder.message(direction, message, now_ns())
            except Exception as e:  # noqa: BLE001
                # SessionRecorder keeps any payload; should it fail all the same, the
                # relay goes on and the recording has a gap, said once.
                warn(f"session {recorder.session_id}: a message could not be recorded ({type(e).__name__})")
            try:
                await dst.send(message)
            except ConnectionClosed:
                return dst
    except ConnectionClosed:
        pass
    return src


async def _mirror_close(connection: Any, code: int, reason: str) -> None:
    """Close ``connection`` the way the other leg was closed."""
    if code == 1006:
        connection.transport.abort()
        return
    with contextlib.suppress(ConnectionClosed):
        await connection.close(None if code == 1005 else code, reason)


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
