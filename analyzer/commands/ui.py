"""``rtcap ui``: the captures in a browser."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from analyzer.cliutil import BadUsage, Failure, address, captures_option

DEFAULT_LISTEN = "127.0.0.1:8768"


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    from recorder.listen import parse_listen

    try:
        return parse_listen(value, 8768)
    except ValueError as e:
        raise BadUsage(str(e)) from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    callback=_listen,
    help="Where to listen (port 0 picks a free one). Anywhere but loopback needs --token.",
)
@click.option(
    "--token",
    metavar="T",
    envvar="RTCAP_UI_TOKEN",
    help="Every request must carry it (?token=T once, then a cookie; or Authorization: Bearer T). "
    "Also $RTCAP_UI_TOKEN.",
)
@captures_option
def ui(listen: tuple[str, int], token: str | None, captures: Path) -> None:
    """Browse the captures in a web browser: sessions, session pages, precursors, SQL.

    Read-only: it shows the views of `rtcap query` and runs SQL in the same sandbox.
    New captures appear as they are indexed. Needs the ui extra (pip install 'rtcap[ui]').

    \b
    Example:
      rtcap ui --captures captures/demo
      rtcap ui --listen 0.0.0.0:8768 --token "$(openssl rand -hex 16)"
    """
    host, port = listen
    if not _loopback(host) and not token:
        raise BadUsage(f"listening on {address(listen)} (not loopback) needs --token")
    if not captures.is_dir():
        raise BadUsage(f"no capture directory {captures}")
    try:
        from analyzer.ui.app import serve
    except ImportError as e:
        raise Failure(f"rtcap ui needs the ui extra: pip install 'rtcap[ui]' ({e.name} is missing)") from None
    try:
        serve(captures, host, port, token=token, ready=lambda url: click.echo(f"rtcap ui: {url}", nl=True))
    except OSError as e:
        raise Failure(f"cannot listen on {address(listen)}: {e.strerror or e}") from None
