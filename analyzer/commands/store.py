"""Object stores: ``rtcap ship``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from analyzer.cliutil import BadUsage, Failure, captures_option, plural, progress_bar


def _summary(report: Any, dest: str) -> str:
    size = f"{report.bytes / 1e6:.1f} MB"
    line = f"shipped {plural(len(report.copied), 'capture')} ({size}) to {dest}"
    extras = []
    if report.present:
        extras.append(f"{len(report.present)} already there")
    if report.open:
        extras.append(f"{len(report.open)} open (not shipped)")
    if report.deleted:
        extras.append(f"{len(report.deleted)} deleted here")
    if report.errors:
        extras.append(f"{len(report.errors)} failed")
    return line + (f"; {', '.join(extras)}" if extras else "")


@click.command()
@click.argument("dest", metavar="DEST")
@click.option("--watch", "keep_watching", is_flag=True, help="Keep shipping as sessions close, until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between passes with --watch.",
)
@click.option("--delete-after", is_flag=True, help="Remove each local capture once its copy is verified.")
@captures_option
def ship(dest: str, keep_watching: bool, interval: float, delete_after: bool, captures: Path) -> None:
    """Copy closed captures to an object store, as DEST/YYYY-MM-DD/<id>.msgpack.

    DEST is an fsspec URL: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix
    or file:///path. Credentials and endpoints come from the store's own environment
    (AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS,
    AZURE_STORAGE_CONNECTION_STRING...), never from an option. Running it again copies
    nothing twice and redoes a copy cut short; every copy is verified by size and checksum.
    Sessions still being recorded are left for a later pass.

    \b
    Examples:
      rtcap ship s3://voice-captures/host-a
      rtcap ship s3://voice-captures/host-a --watch --delete-after
    """
    from analyzer.store import StoreError, is_url, open_store, watch
    from analyzer.store import ship as ship_pass

    if not is_url(dest):
        raise BadUsage(f"DEST must be a URL (s3://, gs://, az://, file://), not {dest}")
    if not captures.is_dir():
        raise BadUsage(f"no capture directory {captures}")
    try:
        open_store(dest)  # a missing library or a bad URL is one error before anything is read
        with progress_bar("shipping captures", passes=True) as progress:
            if not keep_watching:
                report = ship_pass(captures, dest, delete_after=delete_after, progress=progress)
                click.echo(_summary(report, dest))
                if report.errors:
                    more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
                    raise Failure(f"cannot ship {report.errors[0]}{more}")
                return

            def heard(report: Any) -> None:
                if report.copied or report.deleted or report.errors:
                    click.echo(_summary(report, dest))
                for error in report.errors:
                    click.echo(f"rtcap: warning: cannot ship {error}", err=True)

            click.echo(f"rtcap ship: watching {captures} -> {dest} (Ctrl-C stops)", err=True)
            watch(captures, dest, delete_after=delete_after, interval=interval, on_pass=heard, progress=progress)
    except StoreError as e:
        raise Failure(str(e)) from None
