"""Exploring: ``rtcap query``, ``sessions``, ``show`` and ``export``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from analyzer.cliutil import (
    BadUsage,
    Failure,
    captures_option,
    emit,
    engine_options,
    library,
    load,
    on_spark,
    open_captures_for_cli,
    open_for_session,
    output_options,
    plural,
    replays_option,
)


@click.command()
@click.argument("sql")
@replays_option
@engine_options
@output_options
@captures_option
def query(
    sql: str,
    include_replays: bool,
    engine: str,
    master: str | None,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """Run SQL over every capture (SQL of "-" is read from stdin).

    The views are sessions, events, failures and responses (see the README); queries
    are read-only. Captures are indexed first, incrementally, into CAPTURES/.rtcap/.
    With --engine spark the same SQL runs on Spark (translated by sqlglot) over the index
    published as a dataset (--master picks the cluster; local[*] by default).

    \b
    Example:
      rtcap query "SELECT type, count(*) FROM events WHERE direction = 'received' GROUP BY ALL"
      rtcap query "SELECT * FROM failures" --output failures.parquet
    """
    if master and engine != "spark":
        raise BadUsage("--master goes with --engine spark")
    if sql == "-":
        sql = sys.stdin.read()
    opened = open_captures_for_cli(captures, include_replays)
    if engine == "spark":
        emit(on_spark(captures, master, "query", sql, include_replays=include_replays), fmt, output)
        return
    emit(library(opened.sql, sql), fmt, output)


@click.command()
@replays_option
@click.option("--failed", is_flag=True, help="Only sessions with server or connection failures.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only sessions with this label (repeatable).")
@click.option(
    "--since", metavar="WHEN", help="Only sessions started since WHEN: an ISO date or time, or 30m, 2h, 7d ago."
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N sessions (the newest).")
@output_options
@captures_option
def sessions(
    include_replays: bool,
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
    opened = open_captures_for_cli(captures, include_replays)
    emit(library(list_sessions, opened, failed=failed, labels=wanted, since=when, limit=limit), fmt, output)


@click.command()
@click.argument("session")
@click.option("--around", type=int, metavar="SEQ", help="Show only the messages around this seq.")
@click.option(
    "--context",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --around: N messages each side (default 20).",
)
@click.option("--seq", "one", type=int, metavar="N", help="Print message N in full (its JSON), nothing else.")
@click.option(
    "--html",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the session's page (a timeline with its audio, self-contained) to FILE.",
)
@click.option("--no-audio", is_flag=True, help="With --html: leave the audio out of the page (the waveforms stay).")
@click.option("--chain", is_flag=True, help="Show every session of SESSION's chain (its reconnects) as one timeline.")
@output_options
@captures_option
def show(
    session: str,
    around: int | None,
    context: int | None,
    one: int | None,
    html: Path | None,
    no_audio: bool,
    chain: bool,
    fmt: str | None,
    output: Path | None,
    captures: Path,
) -> None:
    """Show a session as a timeline: seq, time, gap, direction, type, size, summary.

    Runs of deltas are collapsed into one line; failures are marked (and red on a
    terminal); the last line says how the session ended (closed, dropped, a failed
    handshake). SESSION may also be a capture file from anywhere, such as the one in a
    report bundle. With --format or --output, the same lines as rows.

    \b
    Example:
      rtcap show 20261125T2341 --around 118 --context 10
      rtcap show 20261125T2341 --seq 121
      rtcap show 20261125T2341 --html session.html
      rtcap show 20261125T2341 --chain
    """
    from analyzer.explore import message_json, render_timeline, session_timeline

    if chain:
        if around is not None or one is not None or html is not None:
            raise BadUsage("--chain shows whole sessions: leave out --around, --seq and --html")
        _show_chain(captures, session, fmt, output)
        return

    if context is not None and around is None:
        raise BadUsage("--context goes with --around")
    if no_audio and html is None:
        raise BadUsage("--no-audio goes with --html")
    if html is not None:
        if around is not None or one is not None or fmt is not None or output is not None:
            raise BadUsage("--html writes the whole session's page: leave out --around, --seq, --format and --output")
        from analyzer.page import write_page

        capture = load(captures, session)
        opened = open_for_session(captures, capture)
        try:
            size = library(write_page, opened, capture, html, audio=not no_audio)
        except OSError as e:
            raise Failure(f"cannot write {html}: {e.strerror or e}") from None
        click.echo(f"wrote {html} ({size / 1024:.0f} KiB); open it in a browser", err=True)
        return
    if one is not None:
        if around is not None:
            raise BadUsage("--seq shows one message; --around shows those around one: use either")
        try:
            click.echo(message_json(load(captures, session), one))
        except ValueError as e:
            raise BadUsage(str(e)) from None
        return
    capture = load(captures, session, max_messages=1)
    opened = open_for_session(captures, capture)
    try:
        lines = library(session_timeline, opened, capture.session_id, around, 20 if context is None else context)
    except ValueError as e:
        raise BadUsage(str(e)) from None
    # show is for reading: the timeline unless rows were asked for with --format or --output.
    if output is None and fmt in (None, "table"):
        render_timeline(lines, sys.stdout, color=sys.stdout.isatty())
    else:
        emit(lines, fmt, output)


def _show_chain(captures: Path, session: str, fmt: str | None, output: Path | None) -> None:
    import pyarrow.compute as pc

    from analyzer.explore import chain_timeline, render_timeline

    capture = load(captures, session, max_messages=1)
    lines = library(chain_timeline, open_for_session(captures, capture), capture.session_id)
    if output is not None or fmt not in (None, "table"):
        emit(lines, fmt, output)
        return
    members = list(dict.fromkeys(lines.column("session_id").to_pylist()))
    for n, member in enumerate(members, 1):
        part = lines.filter(pc.equal(lines.column("session_id"), member)).drop_columns(["session_id"])
        click.echo(f"session {member} ({n} of {len(members)} in its chain)")
        render_timeline(part, sys.stdout, color=sys.stdout.isatty())


@click.command()
@click.argument("sessions", metavar="SESSION...", nargs=-1, required=True)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout."
)
@click.option(
    "--audio",
    "audio_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write input.wav and output.wav into DIR.",
)
@click.option(
    "--har",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the sessions as a HAR file instead (one entry each, messages in _webSocketMessages).",
)
@click.option(
    "--har-audio",
    type=click.Choice(["keep", "length"]),
    default="keep",
    show_default=True,
    help="With --har: keep base64 audio, or replace it by its length.",
)
@captures_option
def export(
    sessions: tuple[str, ...],
    output: Path | None,
    audio_dir: Path | None,
    har: Path | None,
    har_audio: str,
    captures: Path,
) -> None:
    """Print a session's exact messages as JSON lines, or write sessions as a HAR.

    SESSION is a session id, a unique prefix of one, a capture file, or the server's own
    session id (sess_...). Each line is {"seq", "t_ns", "direction", "opcode", "data",
    "redacted"}: data is the exact text of the message, or base64 for a binary one.
    With --har FILE, every SESSION given is one entry of FILE, which DevTools, HTTP
    Toolkit and mitmproxy open and `rtcap import` reads back exactly.

    \b
    Example:
      rtcap export 20261125T2337 --output session.jsonl
      rtcap export 20261125T2337 20261125T2341 --har sessions.har
    """
    from analyzer.export import write_jsonl
    from analyzer.render import private_file

    if har is not None:
        if output is not None or audio_dir is not None:
            raise BadUsage("--har writes a HAR: use it without --output and --audio")
        from analyzer.commands.interchange import export_har

        export_har([load(captures, session) for session in sessions], har, har_audio)
        return
    if len(sessions) > 1:
        raise BadUsage("export writes one session as JSON lines; several go into one file with --har FILE")
    capture = load(captures, sessions[0])
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
        if audio_dir is None:  # with --audio alone, the WAVs are what was asked for
            write_jsonl(capture, sys.stdout)
        return
    try:
        with private_file(output) as f:
            count = write_jsonl(capture, f)
    except OSError as e:
        raise Failure(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"wrote {plural(count, 'message')} to {output}", err=True)
