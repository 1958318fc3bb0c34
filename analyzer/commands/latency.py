"""Latency: ``rtcap latency``."""

from __future__ import annotations

from pathlib import Path

import click

from analyzer.cliutil import BadUsage, captures_option, emit, library, open_captures_for_cli, output_options


@click.command()
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only sessions with this label (repeatable).")
@click.option(
    "--since", metavar="WHEN", help="Only sessions started since WHEN: an ISO date or time, or 30m, 2h, 7d ago."
)
@output_options
@captures_option
def latency(labels: tuple[str, ...], since: str | None, fmt: str | None, output: Path | None, captures: Path) -> None:
    """How slow the turns are: p50, p90 and p99 of each latency, in ms.

    The latencies of each turn (the turns view): end of speech to first audio (the end of
    speech is speech_stopped, or the commit without server VAD), commit to
    response.created, and response.created to first audio. A row for all the sessions'
    turns (group "all"), then one per label value (group "K=V"), with how many turns
    measured it.

    \b
    Example:
      rtcap latency --since 2h --label app=kiosk
    """
    from analyzer.explore import since_time
    from analyzer.latency import latency as measure
    from recorder.session import parse_labels

    try:
        wanted = parse_labels(labels, env="")  # filters, not labels to write: $RTCAP_LABELS has no say
        when = since_time(since) if since else None
    except ValueError as e:
        raise BadUsage(str(e)) from None
    emit(library(measure, open_captures_for_cli(captures), labels=wanted, since=when), fmt, output)
