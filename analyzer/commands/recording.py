"""Recording: ``rtcap proxy``, ``rtcap run`` and ``rtcap simulate``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from analyzer.cliutil import (
    BadUsage,
    Failure,
    address,
    captures_option,
    labels_from,
    listen_option,
    recording_options,
    speed_option,
)


@click.command()
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
    from recorder.proxy import RecordingProxy, run_proxy
    from recorder.redact import Redactor
    from recorder.serving import run as run_server

    if not upstream.startswith(("ws://", "wss://")):
        raise BadUsage(f"--upstream must be a ws:// or wss:// URL, not {upstream!r}")
    relay = RecordingProxy(
        upstream,
        captures.absolute(),
        labels=labels_from(labels),
        audio=not no_audio,
        redactor=Redactor(redact_header, redact_query),
    )
    try:
        run_server(run_proxy(relay, *listen))  # on uvloop when installed
    except OSError as e:
        raise Failure(f"cannot listen on {address(listen)}: {e.strerror or e}") from None


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    (asyncio or sync, however `connect` is used; the openai SDK, openai-agents and
    Pipecat included) or with `aiohttp` (LiveKit Agents) in COMMAND and in every Python
    process it starts, into the same capture files as `rtcap proxy`. A WebSocket opened
    with another Python client is named once on stderr; at exit, COMMAND says how many
    sessions it recorded. COMMAND replaces rtcap: its output, exit code and signals are
    its own (as in a shell, 127 when COMMAND is not found, 126 when it cannot be run).
    Node apps and browsers need `rtcap proxy` instead.

    \b
    Example:
      rtcap run --label app=kiosk -- python app.py --voice alloy
    """
    from recorder.shim import run_environment
    from recorder.shim_unrecorded import USE_PROXY, foreign_runtime

    runtime = foreign_runtime(command[0])
    if runtime is not None:
        click.echo(
            f"rtcap: warning: {command[0]} runs {runtime}, which `rtcap run` cannot record; {USE_PROXY}", err=True
        )
    env = run_environment(
        os.environ,
        captures=captures.absolute(),
        labels=labels_from(labels),
        audio=not no_audio,
        match=match,
        redact_headers=redact_header,
        redact_query=redact_query,
    )
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as e:
        failure = NotFound if isinstance(e, FileNotFoundError) else NotRunnable
        raise failure(f"cannot run {command[0]}: {e.strerror or e}") from None


class NotFound(Failure):
    """``rtcap run``'s program was not found: exit 127, as a shell does."""

    exit_code = 127


class NotRunnable(Failure):
    """``rtcap run``'s program was found but could not be run: exit 126, as a shell does."""

    exit_code = 126


@click.command()
@listen_option("simulate")
@click.option("--fault", "faults", multiple=True, metavar="RULE", help="A fault rule (repeatable), as above.")
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
        raise Failure(f"cannot listen on {address(listen)}: {e.strerror or e}") from None
