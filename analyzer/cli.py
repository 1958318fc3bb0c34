"""The ``rtcap`` command line: each command parses, calls one library function and renders."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from recorder import __version__

DEFAULT_CAPTURES = "captures"


class Failure(click.ClickException):
    """The command could not do its job (exit 1)."""

    exit_code = 1


class BadUsage(click.UsageError):
    """Bad input from the user (exit 2)."""


class RtcapGroup(click.Group):
    """Reports every error as one ``rtcap: error: ...`` line, no traceback."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name or "rtcap", complete_var, standalone_mode=False, **kw)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except click.UsageError as e:
            _fail(e.format_message(), 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (`| head`); not an error
            sys.exit(0)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo(f"rtcap: error: {message}", err=True)
    sys.exit(code)


@click.group(cls=RtcapGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rtcap")
def cli() -> None:
    """rtcap records every event a realtime AI WebSocket session exchanges (OpenAI Realtime,
    Azure OpenAI GPT Realtime, any JSON-over-WebSocket API), so that a failure such as
    `server_error` can be looked at, queried and reproduced.

    Record with `rtcap proxy`; read a recording back with `rtcap export`.
    """


# -- shared options -------------------------------------------------------------------


def captures_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--captures DIR``: the capture root ($RTCAP_CAPTURES, else ./captures)."""
    return click.option(
        "--captures",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="RTCAP_CAPTURES",
        default=DEFAULT_CAPTURES,
        show_default="$RTCAP_CAPTURES or ./captures",
        help="Capture directory.",
    )(command)


def listen_option(command_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--listen HOST:PORT`` for a server command, defaulting to 127.0.0.1 and the
    command's port; the command gets ``(host, port)``."""
    from recorder.listen import DEFAULT_PORTS, parse_listen

    port = DEFAULT_PORTS[command_name]

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
        try:
            return parse_listen(value, port)
        except ValueError as e:
            raise BadUsage(str(e)) from None

    return click.option(
        "--listen",
        default=f"127.0.0.1:{port}",
        show_default=True,
        metavar="HOST:PORT",
        callback=parse,
        help="Where to listen (port 0 picks a free one).",
    )


def speed_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--speed F``: divide time by F (simulate, replay, serve)."""
    return click.option(
        "--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help=help
    )


def failure_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--failure KIND``: an error type or code, ``server`` or ``any`` (default server_error)."""
    return click.option("--failure", default="server_error", show_default=True, metavar="KIND", help=help)


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--format`` and ``--output`` for commands with tabular output."""
    command = click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write to FILE (.parquet, .csv, .json, .jsonl).",
    )(command)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "jsonl"]),
        help="Output format (default: table on a terminal, else csv).",
    )(command)


def _emit(table: Any, fmt: str | None, output: Path | None) -> None:
    from analyzer.render import RenderError, output_format, save, write

    try:
        chosen = output_format(fmt, output)
    except RenderError as e:
        raise BadUsage(str(e)) from None
    if output is None:
        write(table, chosen, sys.stdout)
        return
    try:
        save(table, chosen, output)
    except OSError as e:
        raise Failure(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"wrote {table.num_rows} rows to {output}", err=True)


def _open(captures: Path) -> Any:
    """Index the capture root (with a progress bar when that takes a while) and open it."""
    from analyzer.views import open_captures

    if not captures.is_dir():
        raise Failure(f"no capture directory {captures}")
    from analyzer.db import ConfigError

    with _progress() as progress:
        try:
            return open_captures(captures, progress=progress)
        except ConfigError as e:
            raise BadUsage(str(e)) from None
        except OSError as e:
            raise Failure(f"cannot index {captures}: {e.strerror or e}") from None


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int], None] | None]:
    """A progress callback that shows a bar on a terminal once indexing takes a moment."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    started = time.monotonic()
    with Progress(transient=True) as bar:
        task = None

        def advance(done: int, total: int) -> None:
            nonlocal task
            if task is None and time.monotonic() - started > 0.5:
                task = bar.add_task("indexing captures", total=total)
            if task is not None:
                bar.update(task, completed=done)

        yield advance


def _library(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an analyzer function; a query it makes that DuckDB rejects is a failure."""
    from analyzer.views import QueryError

    try:
        return function(*args, **kwargs)
    except QueryError as e:
        raise Failure(str(e)) from None


def recording_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--label``, ``--no-audio``, ``--redact-header``, ``--redact-query``."""
    options = [
        click.option(
            "--label",
            "labels",
            multiple=True,
            metavar="K=V",
            help="Label the sessions (repeatable; also $RTCAP_LABELS=k=v,k2=v2).",
        ),
        click.option("--no-audio", is_flag=True, help="Keep audio lengths and durations but not the audio bytes."),
        click.option(
            "--redact-header",
            multiple=True,
            metavar="NAME",
            help="Also redact this header (repeatable; also $RTCAP_REDACT).",
        ),
        click.option(
            "--redact-query", multiple=True, metavar="NAME", help="Also redact this URL query parameter (repeatable)."
        ),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    from recorder.session import parse_labels

    try:
        return parse_labels(pairs)
    except ValueError as e:
        raise BadUsage(str(e)) from None


# -- recording ------------------------------------------------------------------------


@cli.command()
@click.option(
    "--upstream", required=True, metavar="URL", help="The realtime server to relay to, e.g. wss://api.openai.com/v1."
)
@listen_option("proxy")
@recording_options
@captures_option
def proxy(
    upstream: str,
    listen: tuple[str, int],
    labels: tuple[str, ...],
    no_audio: bool,
    redact_header: tuple[str, ...],
    redact_query: tuple[str, ...],
    captures: Path,
) -> None:
    """Relay WebSocket clients to URL and record every session.

    Point the app at the printed ws:// URL instead of the real server. The app's path is
    appended to URL's path and its query merged in (the app's parameters win); headers,
    subprotocols, close codes and handshake rejections pass through both ways. Each
    connection is recorded to CAPTURES/YYYY-MM-DD/<session id>.msgpack, secrets redacted.

    \b
    Example:
      rtcap proxy --upstream wss://api.openai.com/v1 --label app=kiosk
      # then: AsyncOpenAI(websocket_base_url="ws://127.0.0.1:8765/v1")
    """
    import asyncio

    from recorder.proxy import RecordingProxy, run_proxy
    from recorder.redact import Redactor

    if not upstream.startswith(("ws://", "wss://")):
        raise BadUsage(f"--upstream must be a ws:// or wss:// URL, not {upstream!r}")
    relay = RecordingProxy(
        upstream,
        captures.absolute(),
        labels=_labels(labels),
        audio=not no_audio,
        redactor=Redactor(redact_header, redact_query),
    )
    try:
        asyncio.run(run_proxy(relay, *listen))
    except OSError as e:
        raise Failure(f"cannot listen on {_address(listen)}: {e.strerror or e}") from None


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--match", metavar="URL-GLOB", help="Record only connections whose URL matches, e.g. 'wss://api.openai.com/*'."
)
@recording_options
@captures_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    match: str | None,
    labels: tuple[str, ...],
    no_audio: bool,
    redact_header: tuple[str, ...],
    redact_query: tuple[str, ...],
    captures: Path,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with every WebSocket connection it makes recorded.

    The in-process shim records each connection made with the `websockets` library
    (asyncio or sync, however `connect` is used; the openai SDK included) in COMMAND and
    in every Python process it starts, into the same capture files as `rtcap proxy`.
    COMMAND replaces rtcap: its output, exit code and signals are its own. Programs
    that do not use `websockets` (aiohttp, Node, browsers) need `rtcap proxy` instead.

    \b
    Example:
      rtcap run --label app=kiosk -- python app.py --voice alloy
    """
    from recorder.shim import run_environment

    env = run_environment(
        os.environ,
        captures=captures.absolute(),
        labels=_labels(labels),
        audio=not no_audio,
        match=match,
        redact_headers=redact_header,
        redact_query=redact_query,
    )
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as e:
        raise Failure(f"cannot run {command[0]}: {e.strerror or e}") from None


@cli.command()
@listen_option("simulate")
@click.option("--fault", "faults", multiple=True, metavar="RULE", help="A fault rule (repeatable); see below.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything random, per session.")
@speed_option("Divide all pacing by F (tests use 1000).")
@click.option(
    "--max-session",
    type=click.FloatRange(min=0, min_open=True),
    default=1800,
    show_default=True,
    metavar="SECONDS",
    help="Send session_expired and close after this long.",
)
@click.option("--api-key", metavar="KEY", help="Accept only this key (else any); others get a 401 like the real API's.")
@click.option("--record", is_flag=True, help="Record the simulator's sessions into the capture directory.")
@captures_option
def simulate(
    listen: tuple[str, int],
    faults: tuple[str, ...],
    seed: int,
    speed: float,
    max_session: float,
    api_key: str | None,
    record: bool,
    captures: Path,
) -> None:
    """Run a simulated realtime server (OpenAI and Azure, GA and beta) with faults.

    It speaks the realtime protocol at /v1/realtime?model=M (OpenAI),
    /openai/v1/realtime?model=D (Azure GA) and /openai/realtime?api-version=V&deployment=D
    (Azure preview, beta dialect; also `OpenAI-Beta: realtime=v1`): sessions, server VAD
    on the audio's energy, manual commits, conversation items, responses with audio,
    transcripts and tool calls, cancel, truncate, and the usual errors.

    \b
    A fault RULE is an effect, then options and triggers:
      fail | error | drop | close | stall | ratelimit
      p=0.05  nth=3  sent=TYPE  field=TYPE:PATH=VALUE  audio_ms>N  rate>N  age>S  tokens>N
      message=TEXT|none  code=CODE|none  error_type=T  reason=TEXT  seconds=S  at=K
    Triggers all hold for the rule to fire; conditions look at what the client sent since
    the previous response began.

    \b
    Example:
      rtcap simulate --seed 7 --fault "fail p=0.04" --fault "fail sent=conversation.item.truncate p=0.8"
    """
    import asyncio

    from analyzer.sim.faults import RuleError, parse_rules
    from analyzer.sim.simulator import Simulator, run_simulator

    try:
        rules = parse_rules(faults)
    except RuleError as e:
        raise BadUsage(str(e)) from None
    simulator = Simulator(
        rules,
        seed=seed,
        speed=speed,
        max_session_s=max_session,
        api_key=api_key,
        record=record,
        captures=captures.absolute(),
        log=lambda line: click.echo(line),
    )
    try:
        asyncio.run(run_simulator(simulator, *listen, ready=lambda line: click.echo(line)))
    except OSError as e:
        raise Failure(f"cannot listen on {_address(listen)}: {e.strerror or e}") from None


# -- exploring ------------------------------------------------------------------------


@cli.command()
@click.argument("sql")
@output_options
@captures_option
def query(sql: str, fmt: str | None, output: Path | None, captures: Path) -> None:
    """Run SQL over every capture (SQL of "-" is read from stdin).

    The views are sessions, events, failures and responses (see the README); queries
    are read-only. Captures are indexed first, incrementally, into CAPTURES/.rtcap/.

    \b
    Example:
      rtcap query "SELECT type, count(*) FROM events WHERE direction = 'received' GROUP BY ALL"
      rtcap query "SELECT * FROM failures" --output failures.parquet
    """
    if sql == "-":
        sql = sys.stdin.read()
    opened = _open(captures)
    _emit(_library(opened.sql, sql), fmt, output)


@cli.command()
@click.option("--failed", is_flag=True, help="Only sessions with server or connection failures.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only sessions with this label (repeatable).")
@click.option(
    "--since", metavar="WHEN", help="Only sessions started since WHEN: an ISO date or time, or 30m, 2h, 7d ago."
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N sessions (the newest).")
@output_options
@captures_option
def sessions(
    failed: bool,
    labels: tuple[str, ...],
    since: str | None,
    limit: int | None,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """List recorded sessions, newest first: one row per session.

    \b
    Example:
      rtcap sessions --failed --since 2h --label app=kiosk
    """
    from analyzer.explore import list_sessions, since_time
    from recorder.session import parse_labels

    try:
        wanted = parse_labels(labels, env="")  # filters, not labels to write: $RTCAP_LABELS has no say
        when = since_time(since) if since else None
    except ValueError as e:
        raise BadUsage(str(e)) from None
    opened = _open(captures)
    _emit(_library(list_sessions, opened, failed=failed, labels=wanted, since=when, limit=limit), fmt, output)


@cli.command()
@failure_option("An error type or code, 'server' (the class) or 'any'.")
@click.option(
    "--window-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10,
    show_default=True,
    help="How far back a window reaches in time.",
)
@click.option("--window-events", type=click.IntRange(min=1), default=50, show_default=True, help="...and in messages.")
@click.option("--include-replays", is_flag=True, help="Also count simulator, serve and replay sessions.")
@click.option("--strict", is_flag=True, help="Exit 1 when a feature is significant (for CI).")
@output_options
@captures_option
def precursors(
    failure: str,
    window_seconds: float,
    window_events: int,
    include_replays: bool,
    strict: bool,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """Find what precedes failures: features of the messages before failing responses that
    are rare before healthy ones, with a one-sided Fisher test, Holm-adjusted.

    A failure's window ends just before its response.created (so nothing the failure
    caused can look like a cause) and reaches back --window-seconds and --window-events.
    Features: event types, adjacent pairs of types, scalar fields of client events, and
    binned measures (audio chunk ms, events per second, session age, gap since the last
    server message, conversation items, input tokens). Significant: p < 0.001.

    \b
    Example:
      rtcap precursors --failure server_error --format json
    """
    from analyzer.precursors import analyse

    opened = _open(captures)
    document = analyse(
        opened,
        failure=failure,
        window_seconds=window_seconds,
        window_events=window_events,
        include_replays=include_replays,
    )
    _emit_document(document, "features", fmt, output)
    if strict and any(f["significant"] for f in document["features"]):
        sys.exit(1)


@cli.command()
@click.argument("session", required=False)
@click.option("--include-replays", is_flag=True, help="Also check simulator, serve and replay sessions.")
@click.option("--strict", is_flag=True, help="Exit 1 when a check fails (for CI).")
@output_options
@captures_option
def doctor(
    session: str | None, include_replays: bool, strict: bool, fmt: str | None, output: Path | None, captures: Path
) -> None:
    """Run the realtime troubleshooting checklist on a session (or on every session).

    Checks: audio format, chunk size (20-200 ms), base64, bursts (<= 1.5x real time,
    <= 50 events/s), prompt size (< 8k input tokens), session age (< 80% of expires_at),
    rate limits (> 10% left), retries (no response.create within 1 s of a failure) and
    reconnects (none within 5 s of an abnormal close). Each row has evidence (values,
    seq numbers) and advice. Failing checks are findings: exit 0 unless --strict.

    \b
    Example:
      rtcap doctor 20261126T0016015
    """
    from analyzer.doctor import diagnose

    session_id = _load(captures, session, max_messages=1).session_id if session is not None else None
    checks = _library(diagnose, _open(captures), session_id, include_replays=include_replays)
    _emit(checks, fmt, output)
    if strict and "fail" in checks.column("status").to_pylist():
        sys.exit(1)


@cli.command()
@click.argument("session")
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .zip to write."
)
@captures_option
def report(session: str, output: Path, captures: Path) -> None:
    """Write a support bundle for SESSION to hand to the API vendor.

    The zip holds the redacted capture and its export, the server session id and
    timestamps, the failure with the messages around it, doctor's checks and a README
    saying what happened in plain English.

    \b
    Example:
      rtcap report 20261126T0016015 --output server-error.zip
    """
    from analyzer.report import build

    if output.suffix.lower() != ".zip":
        raise BadUsage(f"--output {output}: the bundle is a .zip file")
    capture = _load(captures, session)
    try:
        made = build(_open(captures), capture, output)
    except OSError as e:
        raise Failure(f"cannot write {output}: {e.strerror or e}") from None
    failure = made["failure"]
    said = f"{failure['error_type']} at seq {failure['seq']}" if failure else "no failure"
    click.echo(f"wrote {output} for session {made['session_id']} ({said})", err=True)


@cli.command()
@click.argument("session")
@click.option(
    "--to",
    metavar="URL",
    help="Where to replay (default: the recorded URL); a URL without a path keeps the recorded path and query.",
)
@click.option(
    "--pace",
    type=click.Choice(["causal", "timed", "asap"]),
    default="causal",
    show_default=True,
    help="When to send each client message.",
)
@speed_option("Divide every recorded gap by F.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the server before going on.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Replay N times and report the reproduction rate.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="K:V",
    help="Extra header (credentials: else $OPENAI_API_KEY / $AZURE_OPENAI_API_KEY).",
)
@failure_option("The failure to reproduce: error type or code, 'server' or 'any'.")
@output_options
@captures_option
def replay(
    session: str,
    to: str | None,
    pace: str,
    speed: float,
    timeout: float,
    repeat: int,
    headers: tuple[str, ...],
    failure: str,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """Send a recorded session to a server again and tell whether its failure came back.

    Client messages are sent as recorded; ids the server assigned in the recording (items,
    responses, calls) are mapped to the new ones. Pacing: causal (default) sends each
    message once as many server messages as preceded it in the recording have arrived (a
    run of deltas counts as one), and not before its recorded gap; timed follows recorded
    gaps; asap sends at once, waiting only for ids to map. Each replay is recorded as a
    session with replay_of. With --repeat, the reproduction rate tells a deterministic
    trigger from a transient failure. Credentials never come from the capture.

    \b
    Example:
      rtcap replay 20261126T0016015 --to ws://127.0.0.1:8766 --repeat 5 --pace asap
    """
    from analyzer.reproduce.replay import run

    for header in headers:
        if ":" not in header:
            raise BadUsage(f"bad --header {header!r}: expected NAME:VALUE")
    if to is not None and not to.startswith(("ws://", "wss://")):
        raise BadUsage(f"--to must be a ws:// or wss:// URL, not {to!r}")
    capture = _load(captures, session)
    try:
        document = run(
            capture,
            to=to,
            captures=captures.absolute(),
            pace=pace,
            speed=speed,
            timeout=timeout,
            repeat=repeat,
            extra_headers=headers,
            failure=failure,
        )
    except (OSError, TimeoutError) as e:
        raise Failure(f"cannot replay to {to or capture.header.get('url')}: {e}") from None
    except Exception as e:  # websockets' handshake errors: the server said no
        if type(e).__module__.startswith("websockets"):
            raise Failure(f"cannot replay: {e}") from None
        raise
    _emit_document(document, "replays", fmt, output)


@cli.command()
@click.argument("session")
@listen_option("serve")
@speed_option("Divide every recorded gap by F.")
@click.option("--record", is_flag=True, help="Record the sessions it serves.")
@captures_option
def serve(session: str, listen: tuple[str, int], speed: float, record: bool, captures: Path) -> None:
    """Play a recorded server to clients, to debug client code offline.

    Each connecting client gets the recorded server messages from the start, each one
    released once the client messages that preceded it in the recording have arrived (by
    count), with recorded gaps divided by --speed. A client message that differs from the
    recording is reported on stderr. For tests, the pytest fixture rtcap_serve does the
    same (see the README).

    \b
    Example:
      rtcap serve 20261126T0016015 --speed 10
      # then point the app at the printed ws:// URL
    """
    import asyncio

    from analyzer.reproduce.serve import Player, run_player

    capture = _load(captures, session)
    player = Player(capture, speed=speed, captures=captures.absolute() if record else None)
    try:
        asyncio.run(run_player(player, *listen, ready=lambda line: click.echo(line)))
    except OSError as e:
        raise Failure(f"cannot listen on {_address(listen)}: {e.strerror or e}") from None


@cli.command()
@click.option(
    "--sessions", type=click.IntRange(min=8), default=40, show_default=True, help="How many sessions to record."
)
@captures_option
def demo(sessions: int, captures: Path) -> None:
    """Show rtcap's whole job on a simulated voice agent: offline, no key.

    A simulator fails with server_error after an out-of-band response.create whose
    tool_choice names a function (a precursor reported in the wild), and now and then at
    random. The demo records a few dozen varied sessions through rtcap proxy and through
    the in-process shim with the openai SDK into CAPTURES/demo (cleared first), indexes
    them, ranks what precedes the failures, runs doctor on a failing session, replays the
    planted failure and a transient one five times each, and writes a report bundle.
    """
    from analyzer.demo import run

    root = captures / "demo"
    with _progress() as progress:
        run(root, lambda line: click.echo(line), progress=progress, sessions=sessions)


def _emit_document(document: dict[str, Any], rows_key: str, fmt: str | None, output: Path | None) -> None:
    """A result document: the whole document as JSON, else its rows (after its summary)."""
    import json

    import pyarrow as pa

    from analyzer.render import RenderError, output_format

    try:
        chosen = output_format(fmt, output)
    except RenderError as e:
        raise BadUsage(str(e)) from None
    if chosen == "json":
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
            click.echo(f"wrote {len(document[rows_key])} rows to {output}", err=True)
        return
    rows = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()} for row in document[rows_key]]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"feature": pa.array([], pa.string())})
    if chosen == "table" and output is None and document.get("summary"):
        click.echo(document["summary"] + "\n")
    _emit(table, chosen, output)


@cli.command()
@click.argument("session")
@click.option("--around", type=int, metavar="SEQ", help="Show only the messages around this seq.")
@click.option(
    "--context",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="With --around: N each side.",
)
@captures_option
def show(session: str, around: int | None, context: int, captures: Path) -> None:
    """Show a session as a timeline: seq, time, gap, direction, type, size, summary.

    Runs of deltas are collapsed into one line; failures are marked (and red on a
    terminal).

    \b
    Example:
      rtcap show 20261125T2341 --around 118 --context 10
    """
    from analyzer.explore import render_timeline, session_events

    session_id = _load(captures, session, max_messages=1).session_id
    events = _library(session_events, _open(captures), session_id, around, context)
    render_timeline(events, sys.stdout, color=sys.stdout.isatty())


def _load(captures: Path, session: str, max_messages: int | None = None) -> Any:
    """The capture SESSION names (see :func:`analyzer.locate.load_session`)."""
    from analyzer.locate import SessionNotFound, load_session
    from recorder.capture import CaptureError

    try:
        return load_session(captures, session, max_messages)
    except SessionNotFound as e:
        raise BadUsage(str(e)) from None
    except CaptureError as e:
        raise Failure(str(e)) from None


def _address(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@cli.command()
@click.argument("session")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout."
)
@click.option(
    "--audio",
    "audio_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write input.wav and output.wav into DIR.",
)
@captures_option
def export(session: str, output: Path | None, audio_dir: Path | None, captures: Path) -> None:
    """Print a session's exact messages as JSON lines.

    SESSION is a session id, a unique prefix of one, a capture file, or the server's own
    session id (sess_...). Each line is {"seq", "t_ns", "direction", "opcode", "data",
    "redacted"}: data is the exact text of the message, or base64 for a binary one.

    \b
    Example:
      rtcap export 20261125T2337 --output session.jsonl
    """
    from analyzer.export import write_jsonl

    capture = _load(captures, session)
    if capture.state == "damaged":
        click.echo(f"rtcap: warning: {capture.path} is damaged: {'; '.join(capture.problems)}", err=True)
    if audio_dir is not None:
        from analyzer.audio import write_wavs

        try:
            durations = write_wavs(capture, audio_dir)
        except OSError as e:
            raise Failure(f"cannot write {audio_dir}: {e.strerror or e}") from None
        for name, seconds in durations.items():
            click.echo(f"wrote {audio_dir / name} ({seconds:.1f} s)", err=True)
    if output is None:
        write_jsonl(capture, sys.stdout)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            count = write_jsonl(capture, f)
    except OSError as e:
        raise Failure(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"wrote {count} messages to {output}", err=True)


def main() -> None:
    """Console script entry point."""
    cli(prog_name="rtcap")
