"""Analysis: ``rtcap precursors``, ``doctor``, ``report`` and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from analyzer.cliutil import (
    BadUsage,
    Failure,
    captures_option,
    emit,
    emit_document,
    engine_options,
    failure_option,
    indexing_progress,
    library,
    load,
    on_spark,
    open_captures_for_cli,
    open_for_session,
    output_options,
    replays_option,
)


@click.command()
@failure_option("An error type or code, 'server' (the class) or 'any'.")
@click.option(
    "--window-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10,
    show_default=True,
    help="How far back a window reaches in time.",
)
@click.option("--window-events", type=click.IntRange(min=1), default=50, show_default=True, help="...and in messages.")
@click.option("--first-failures-only", is_flag=True, help="Keep only each session's first failure.")
@replays_option
@click.option("--strict", is_flag=True, help="Exit 1 when a feature is significant (for CI).")
@engine_options
@output_options
@captures_option
def precursors(
    failure: str,
    window_seconds: float,
    window_events: int,
    first_failures_only: bool,
    include_replays: bool,
    strict: bool,
    engine: str,
    master: str | None,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """Find what precedes failures: what the turns before failing responses had that the
    turns before healthy ones did not.

    Each response's window holds the events since the previous response ended, up to its
    response.created (capped by --window-seconds and --window-events): one turn, none of
    its neighbours. Features: event types, adjacent pairs of types, scalar fields of
    client events, and measures cut at thresholds taken from the data (audio chunk ms,
    events per second, gap since the last server message, and as context the turn index,
    session age, conversation items, the previous response's input tokens and whether
    it failed). Each is tested one-sided and exactly within bands of position in the
    session and of whether the previous response failed, Holm-adjusted; significant:
    p < 0.001. Failures that come late in sessions (position) and failures that follow
    failures (clustering) are reported as findings of their own, before the features.
    With --engine spark the windows and their features are found by Spark over the index
    published as a dataset (--master picks the cluster); the statistics run here.

    \b
    Example:
      rtcap precursors --failure server_error --format json
    """
    from analyzer.precursors import analyse

    if master and engine != "spark":
        raise BadUsage("--master goes with --engine spark")
    opened = open_captures_for_cli(captures, include_replays)
    options = {
        "failure": failure,
        "window_seconds": window_seconds,
        "window_events": window_events,
        "first_failures_only": first_failures_only,
    }
    if engine == "spark":
        document = on_spark(captures, master, "precursors", include_replays=include_replays, **options)
    else:
        document = library(analyse, opened, **options)
    if document["failures"] == 0:  # nothing to compare: say so rather than print an empty table
        raise Failure(document["summary"])
    emit_document(document, "features", fmt, output)
    if strict and any(f["significant"] for f in document["features"]):
        sys.exit(1)


@click.command()
@click.argument("session", required=False)
@replays_option
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

    if session is None:
        checks = library(diagnose, open_captures_for_cli(captures, include_replays))
    else:
        capture = load(captures, session, max_messages=1)
        checks = library(diagnose, open_for_session(captures, capture), capture.session_id)
    emit(checks, fmt, output)
    if strict and "fail" in checks.column("status").to_pylist():
        sys.exit(1)


@click.command()
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
    capture = load(captures, session)
    try:
        made = build(open_for_session(captures, capture), capture, output)
    except OSError as e:
        raise Failure(f"cannot write {output}: {e.strerror or e}") from None
    failure = made["failure"]
    said = f"{failure['error_type']} at seq {failure['seq']}" if failure else "no failure"
    click.echo(f"wrote {output} for session {made['session_id']} ({said})", err=True)


@click.command()
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
    with indexing_progress() as progress:
        run(root, lambda line: click.echo(line), progress=progress, sessions=sessions)
