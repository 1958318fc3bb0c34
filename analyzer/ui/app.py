"""``rtcap ui``: a local, read-only web app over the views (an ASGI app on starlette).

Pages: the sessions list (``/``: the filters of ``rtcap sessions``, search by id or
``sess_`` id, sorting, paging), a session's page (``/session/ID``, the page of
:mod:`analyzer.page`, its audio served beside it), the precursors (``/precursors``) and
SQL over the views (``/sql``, downloads as CSV and Parquet). Every URL holds its whole
state in its query, so it can be shared. Only GET is served; every query runs in the
sandbox of :meth:`analyzer.views.Captures.sql`. A thread of its own brings the index up to
date (once a second at most), so new captures appear as they are indexed and no request
waits for it.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hmac
import io
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from recorder.capture import read_capture
from recorder.session import parse_labels

from ..explore import since_time
from ..render import rows as plain_rows
from ..views import Captures, QueryError, open_captures
from .listing import PER_PAGE, SORTS, example_seqs, sessions_page

REFRESH_S = 1.0
"""How often, at most, the index is brought up to date (new and grown captures)."""

TOKEN_COOKIE = "rtcap_token"

SESSION_REF = re.compile(r"[A-Za-z0-9_-]+")

PAGES_KEPT = 16
"""Session pages kept computed (a page is its session's data: a few MB for a long call)."""


class Live:
    """The capture root's views, kept up to date by a thread of their own that indexes
    what is new every :data:`REFRESH_S` (at the least), so no request waits for indexing."""

    def __init__(self, root: Path, include_replays: bool = False) -> None:
        self.captures = open_captures(root, include_replays=include_replays)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self) -> Captures:
        """The views, as last indexed."""
        return self.captures

    def start(self) -> None:
        """Start looking for new and grown captures."""
        self._thread = threading.Thread(target=self._refresh, name="rtcap-ui-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (waits for an update under way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            started = time.monotonic()
            self.captures.report = self.captures.index.update()
            # a large root takes a while to look through: leave the CPU to the requests
            self._stop.wait(time.monotonic() - started)


class TokenGate:
    """Every request carries the token: ``?token=``, ``Authorization: Bearer``, or the
    cookie set by the first request that had it in its query (so links need not)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        query = request.query_params.get("token")
        offered = [query, request.cookies.get(TOKEN_COOKIE), request.headers.get("authorization", "")[7:]]
        if not any(o and hmac.compare_digest(o.encode(), self.token) for o in offered):
            await PlainTextResponse("rtcap ui: this server needs its token (?token=...)\n", 401)(scope, receive, send)
            return
        if query is None:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={query}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


class LocalHosts:
    """Without a token, only requests addressed to a loopback name are answered, so a web
    page elsewhere cannot reach this server by rebinding its own name to 127.0.0.1."""

    NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Request(scope).headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.NAMES:
                await PlainTextResponse("rtcap ui: not a loopback host\n", 421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _templates() -> Any:
    import jinja2

    from ..page import asset

    env = jinja2.Environment(loader=jinja2.PackageLoader("analyzer.ui", "templates"), autoescape=True)
    env.filters["number"] = lambda v, digits=3: "" if v is None else f"{v:.{digits}f}"
    env.filters["cell"] = _cell
    env.globals["css"] = asset("timeline.css")
    env.filters["q"] = lambda params: urllib.parse.urlencode([(k, v) for k, v in params if v not in (None, "")])
    return env


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def create_app(root: Path, *, token: str | None = None, include_replays: bool = False) -> ASGIApp:
    """The ASGI app over the capture root ``root``; with ``token``, every request must
    carry it, else only loopback names are answered."""
    from ..page import page_data, render

    live = Live(root, include_replays)
    env = _templates()

    def html(name: str, request: Request, **values: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(request=request, **values))

    def sessions(request: Request) -> Response:
        q = request.query_params
        error = None
        try:
            wanted = parse_labels(tuple(q.getlist("label")), env="")
            since = since_time(q["since"]) if q.get("since") else None
            page = max(int(q.get("page") or 1), 1)
        except ValueError as e:
            wanted, since, page, error = {}, None, 1, str(e)
        sort = q.get("sort") or "started_at"
        sort = sort if sort in SORTS else "started_at"
        descending = q.get("order", "desc") != "asc"
        failed = q.get("failed") == "1"
        rows, total = sessions_page(
            live.get(),
            failed=failed,
            labels=wanted,
            since=since,
            search=q.get("q", "").strip(),
            sort=sort,
            descending=descending,
            page=page,
        )
        kept = [(k, v) for k, v in q.multi_items() if k not in ("page", "sort", "order")]
        return html(
            "sessions.html",
            request,
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // PER_PAGE)),
            sort=sort,
            descending=descending,
            kept=kept,
            query=q,
            error=error,
            sorts=SORTS,
        )

    def version(request: Request) -> Response:
        return JSONResponse(live.get().version())

    def _capture(ref: str, max_messages: int | None = None) -> Any:
        """The capture of the root that ``ref`` names (an id, a prefix, a ``sess_`` id;
        never a path: the UI shows the root's sessions only)."""
        from recorder.capture import CaptureError

        from ..locate import SessionNotFound, load_session

        if not SESSION_REF.fullmatch(ref):
            return None
        try:
            return load_session(root, ref, max_messages)
        except (SessionNotFound, CaptureError):
            return None

    pages: collections.OrderedDict[tuple[Any, ...], str] = collections.OrderedDict()

    def session(request: Request) -> Response:
        captures = live.get()
        head = _capture(request.path_params["session_id"], max_messages=1)
        if head is None:
            return PlainTextResponse("no such session\n", 404)
        # A long call's page takes seconds to compute (doctor's checks most): kept while
        # its capture stays as it is.
        found = os.stat(head.path)
        key = (str(head.path), found.st_size, found.st_mtime_ns)
        if key not in pages:
            capture = read_capture(head.path)
            data = page_data(captures, capture, audio=f"/session/{capture.session_id}/audio/")
            pages[key] = render(data, nav=env.get_template("nav.html").render(request=request))
            while len(pages) > PAGES_KEPT:
                pages.popitem(last=False)
        pages.move_to_end(key)
        return HTMLResponse(pages[key])

    def audio(request: Request) -> Response:
        from ..audio import session_audio, wav

        name = request.path_params["name"]
        sides = {"input.wav": "sent", "output.wav": "received"}
        capture = _capture(request.path_params["session_id"])
        if capture is None or name not in sides:
            return PlainTextResponse("not found\n", 404)
        import numpy as np

        chunks, rate = session_audio(capture)[sides[name]]
        buffer = io.BytesIO()
        wav(np.concatenate([c for _, c in chunks]) if chunks else np.zeros(0, dtype="<i2"), rate, buffer)
        return Response(buffer.getvalue(), media_type="audio/wav")

    def precursors(request: Request) -> Response:
        from recorder.events import DEFAULT_FAILURE

        from ..precursors import analyse

        q = request.query_params
        failure = q.get("failure") or DEFAULT_FAILURE
        document, error, links = None, None, {}
        try:
            seconds = float(q.get("window_seconds") or 10)
            count = int(q.get("window_events") or 50)
            captures = live.get()
            document = analyse(captures, failure=failure, window_seconds=seconds, window_events=count)
            examples = sorted({s for f in document["features"][:50] for s in f["examples"]})
            links = example_seqs(captures, examples, failure)
        except (ValueError, QueryError) as e:
            error = str(e)
        top = max([f["lift"] for f in (document or {}).get("features", [])[:50]] or [1.0])
        return html("precursors.html", request, document=document, error=error, query=q, links=links, top=top)

    def sql(request: Request) -> Response:
        text = request.query_params.get("q", "").strip()
        fmt = request.path_params.get("fmt")
        table, error = None, None
        if text:
            try:
                table = live.get().sql(text)
            except QueryError as e:
                error = str(e)
        if fmt is not None:
            if table is None:
                return PlainTextResponse((error or "no query") + "\n", 400)
            return _download(table, fmt)
        rows = plain_rows(table.slice(0, 1000)) if table is not None else []
        return html("sql.html", request, text=text, table=table, rows=rows, error=error)

    routes = [
        Route("/", sessions),
        Route("/api/version", version),
        Route("/session/{session_id}", session),
        Route("/session/{session_id}/audio/{name}", audio),
        Route("/precursors", precursors),
        Route("/sql", sql),
        Route("/sql.{fmt:str}", sql),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        live.start()
        try:
            yield
        finally:
            live.stop()

    app: ASGIApp = Starlette(routes=routes, lifespan=lifespan)
    return TokenGate(app, token) if token else LocalHosts(app)


def _download(table: Any, fmt: str) -> Response:
    from ..render import write

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        body, media = buffer.getvalue(), "application/vnd.apache.parquet"
    elif fmt == "csv":
        text = io.StringIO()
        write(table, "csv", text)
        body, media = text.getvalue().encode(), "text/csv; charset=utf-8"
    else:
        return PlainTextResponse("use /sql.csv or /sql.parquet\n", 404)
    headers = {"content-disposition": f'attachment; filename="rtcap-query-{stamp}.{fmt}"'}
    return Response(body, media_type=media, headers=headers)


def serve(
    root: Path,
    host: str,
    port: int,
    *,
    token: str | None = None,
    ready: Callable[[str], None] = print,
) -> None:
    """Run the app until interrupted; ``ready`` gets the URL (the real port) first."""
    import socket

    import uvicorn

    app = create_app(root, token=token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    shown = f"[{host}]" if ":" in host else host
    ready(f"http://{shown}:{sock.getsockname()[1]}/")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
