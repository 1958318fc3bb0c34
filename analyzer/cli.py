"""The ``rtcap`` command line: each command parses, calls one library function and renders."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable
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
        self, args: Any = None, prog_name: str | None = None, *pos: Any, standalone_mode: bool = True, **kw: Any
    ) -> Any:
        try:
            rv = super().main(args, prog_name or "rtcap", *pos, standalone_mode=False, **kw)
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
@click.option(
    "--listen",
    default="127.0.0.1:8765",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (port 0 picks a free one).",
)
@recording_options
@captures_option
def proxy(
    upstream: str,
    listen: str,
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
    from recorder.proxy import RecordingProxy, parse_listen, run_proxy
    from recorder.redact import Redactor

    if not upstream.startswith(("ws://", "wss://")):
        raise BadUsage(f"--upstream must be a ws:// or wss:// URL, not {upstream!r}")
    try:
        host, port = parse_listen(listen, 8765)
    except ValueError as e:
        raise BadUsage(str(e)) from None
    relay = RecordingProxy(
        upstream,
        captures.absolute(),
        labels=_labels(labels),
        audio=not no_audio,
        redactor=Redactor(redact_header, redact_query),
    )
    try:
        asyncio.run(run_proxy(relay, host, port))
    except OSError as e:
        raise Failure(f"cannot listen on {listen}: {e.strerror or e}") from None


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
@click.option(
    "--listen",
    default="127.0.0.1:8766",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (port 0 picks a free one).",
)
@click.option("--fault", "faults", multiple=True, metavar="RULE", help="A fault rule (repeatable); see below.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything random, per session.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Divide all pacing by F (tests use 1000).",
)
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
    listen: str,
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
    from analyzer.faults import RuleError, parse_rules
    from analyzer.simulator import Simulator, run_simulator
    from recorder.proxy import parse_listen

    try:
        rules = parse_rules(faults)
        host, port = parse_listen(listen, 8766)
    except (RuleError, ValueError) as e:
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
        asyncio.run(run_simulator(simulator, host, port, ready=lambda line: click.echo(line)))
    except OSError as e:
        raise Failure(f"cannot listen on {listen}: {e.strerror or e}") from None


# -- exploring ------------------------------------------------------------------------


@cli.command()
@click.argument("session")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout."
)
@captures_option
def export(session: str, output: Path | None, captures: Path) -> None:
    """Print a session's exact messages as JSON lines.

    SESSION is a session id, a unique prefix of one, a capture file, or the server's own
    session id (sess_...). Each line is {"seq", "t_ns", "direction", "opcode", "data",
    "redacted"}: data is the exact text of the message, or base64 for a binary one.

    \b
    Example:
      rtcap export 20261125T2337 --output session.jsonl
    """
    from analyzer.export import write_jsonl
    from analyzer.locate import SessionNotFound, find_session
    from recorder.capture import CaptureError, read_capture

    try:
        capture = read_capture(find_session(captures, session))
    except SessionNotFound as e:
        raise BadUsage(str(e)) from None
    except CaptureError as e:
        raise Failure(str(e)) from None
    if capture.state == "damaged":
        click.echo(f"rtcap: warning: {capture.path} is damaged: {'; '.join(capture.problems)}", err=True)
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
