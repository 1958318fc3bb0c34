"""Reproducing: ``rtcap replay`` and ``rtcap serve``."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from analyzer.cliutil import (
    BadUsage,
    Failure,
    address,
    captures_option,
    emit_document,
    failure_option,
    listen_option,
    load,
    output_options,
    speed_option,
)


@click.command()
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
    trigger from a transient failure (replays that diverged from the recording before the
    failure make it inconclusive). Credentials never come from the capture.

    \b
    Example:
      rtcap replay 20261126T0016015 --to ws://127.0.0.1:8766 --repeat 5 --pace asap
    """
    from analyzer.reproduce.replay import run, shown_url, target_failure

    for header in headers:
        if ":" not in header:
            raise BadUsage(f"bad --header {header!r}: expected NAME:VALUE")
    if to is not None and not to.startswith(("ws://", "wss://")):
        raise BadUsage(f"--to must be a ws:// or wss:// URL, not {shown_url(to)!r}")
    capture = load(captures, session)
    asked = click.get_current_context().get_parameter_source("failure") is ParameterSource.COMMANDLINE
    if asked and target_failure(capture, failure) is None:
        # Asked for by name, a failure the recording lacks is a mistake; by default, replaying
        # a healthy session is a fair thing to do (its document says there was no target).
        hint = "" if failure == "any" else " (try --failure any)"
        raise Failure(f"the recording has no failure matching --failure {failure}{hint}")
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
        raise Failure(f"cannot replay to {shown_url(to or capture.header.get('url') or '')}: {e}") from None
    except Exception as e:  # websockets' handshake errors: the server said no
        if type(e).__module__.startswith("websockets"):
            raise Failure(f"cannot replay: {e}") from None
        raise
    emit_document(document, "replays", fmt, output)


@click.command()
@click.argument("session")
@listen_option("serve")
@speed_option("Divide every recorded gap by F.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds a server message waits for the client messages before it ('inf': for ever).",
)
@click.option("--strict", is_flag=True, help="Close a client that leaves the recording (1008), saying where.")
@click.option("--record", is_flag=True, help="Record the sessions it serves.")
@captures_option
def serve(
    session: str, listen: tuple[str, int], speed: float, timeout: float, strict: bool, record: bool, captures: Path
) -> None:
    """Play a recorded server to clients, to debug client code offline.

    Each connecting client gets the recorded server messages from the start, each one
    released once the client messages that preceded it in the recording have arrived (by
    count), with recorded gaps divided by --speed. A client message that differs from the
    recording is reported on stderr with where it differs; a server message that waited
    --timeout seconds for a client message goes anyway, and a line names the message it
    waited for. With --strict, either closes that client's connection instead (code 1008,
    the line as its reason); other clients are still served, and rtcap keeps running.
    For tests, the pytest fixture rtcap_serve does the same (see the README).

    \b
    Example:
      rtcap serve 20261126T0016015 --speed 10 --strict
      # then point the app at the printed ws:// URL
    """
    import asyncio
    import math

    from analyzer.reproduce.serve import Player, run_player

    capture = load(captures, session)
    player = Player(
        capture,
        speed=speed,
        captures=captures.absolute() if record else None,
        timeout=None if math.isinf(timeout) else timeout,
        strict=strict,
    )
    try:
        asyncio.run(run_player(player, *listen, ready=lambda line: click.echo(line)))
    except OSError as e:
        raise Failure(f"cannot listen on {address(listen)}: {e.strerror or e}") from None
