"""What every ``rtcap`` command shares: its errors, options and rendering of results."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

DEFAULT_CAPTURES = "captures"


class Failure(click.ClickException):
    """The command could not do its job (exit 1)."""

    exit_code = 1


class BadUsage(click.UsageError):
    """Bad input from the user (exit 2)."""


def _fail(message: str, code: int) -> None:
    click.echo(f"rtcap: error: {message}", err=True)
    sys.exit(code)


# -- shared options -------------------------------------------------------------------


RECORDING_COMMANDS = frozenset({"proxy", "run", "simulate", "import", "demo", "ship"})
"""Commands that write captures: their ``--captures`` is a local directory, never a URL."""


def _captures_root(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """A directory as a path; a store URL (s3://...) as the local mirror of its captures."""
    from analyzer.store import is_url

    if not is_url(value):
        return Path(value)
    name = ctx.command.name
    if name in RECORDING_COMMANDS:
        raise BadUsage(f"rtcap {name} writes captures to a local directory, not {value} (ship them with rtcap ship)")
    from analyzer.remote import mirror
    from analyzer.store import StoreError

    try:
        return mirror(value)
    except StoreError as e:
        raise Failure(str(e)) from None


def captures_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--captures DIR|URL``: the capture root ($RTCAP_CAPTURES, else ./captures), or a
    store URL (s3://, gs://, az://, file://) whose captures are mirrored locally."""
    return click.option(
        "--captures",
        envvar="RTCAP_CAPTURES",
        default=DEFAULT_CAPTURES,
        callback=_captures_root,
        metavar="DIR|URL",
        show_default="$RTCAP_CAPTURES or ./captures",
        help="Capture directory, or a store's URL (s3://bucket/prefix).",
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
    from recorder.events import DEFAULT_FAILURE

    return click.option("--failure", default=DEFAULT_FAILURE, show_default=True, metavar="KIND", help=help)


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


def emit(table: Any, fmt: str | None, output: Path | None) -> None:
    """Render an Arrow table to stdout, or save it to ``--output`` (0600)."""
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
    click.echo(f"wrote {plural(table.num_rows, 'row')} to {output}", err=True)


def open_captures_for_cli(captures: Path, include_replays: bool = False) -> Any:
    """Index the capture root (with a progress bar when that takes a while) and open it."""
    from analyzer.db import ConfigError
    from analyzer.views import open_captures

    if not captures.is_dir():
        raise BadUsage(f"no capture directory {captures}")
    with indexing_progress() as progress:
        try:
            opened = open_captures(captures, progress=progress, include_replays=include_replays)
        except ConfigError as e:
            raise BadUsage(str(e)) from None
        except OSError as e:
            raise Failure(f"cannot index {captures}: {e.strerror or e}") from None
    # Said once: the report lists only the captures this update read.
    for name in opened.report.damaged:
        click.echo(f"rtcap: warning: {name} is damaged (its problems: rtcap sessions, column problems)", err=True)
    for error in opened.report.errors:
        click.echo(f"rtcap: warning: {error}", err=True)
    _publish(captures)
    return opened


def _publish(captures: Path) -> None:
    """The index of a store's captures, published back beside them (when they changed)."""
    from analyzer.remote import publish, url_of
    from analyzer.store import StoreError

    url = url_of(captures)
    if url is not None:
        try:
            publish(url, captures)
        except StoreError as e:
            raise Failure(str(e)) from None


_HOLDERS: list[Any] = []  # temporary roots of captures from elsewhere, kept until exit


def open_for_session(captures: Path, capture: Any) -> Any:
    """The views over the root that holds ``capture`` (a temporary one for a capture from
    outside ``captures``), with replays in when the capture is one."""
    from analyzer.locate import root_holding
    from analyzer.views import REPLAY_RECORDERS

    try:
        root, holder = root_holding(captures, capture)
    except OSError as e:
        raise Failure(f"cannot read {capture.path}: {e.strerror or e}") from None
    if holder is not None:
        _HOLDERS.append(holder)
    return open_captures_for_cli(root, include_replays=capture.header.get("recorder") in REPLAY_RECORDERS)


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--engine duckdb|spark`` and ``--master URL`` (Spark's, local[*] by default)."""
    command = click.option(
        "--master", metavar="URL", help="Spark's master (spark://host:7077, yarn, local[4]); with --engine spark."
    )(command)
    return click.option(
        "--engine",
        type=click.Choice(["duckdb", "spark"]),
        default="duckdb",
        show_default=True,
        help="Where the SQL runs: DuckDB here, or Spark over the index published as a dataset.",
    )(command)


def on_spark(captures: Path, master: str | None, function: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``analyzer.spark.<function>(session, url, ...)`` over the (indexed) root's
    dataset; Spark's errors and a missing extra are one error line."""
    from analyzer import spark
    from analyzer.store import StoreError

    try:
        url = spark.publish_for_spark(captures)
        return getattr(spark, function)(spark.session(master), url, *args, **kwargs)
    except spark.SparkError as e:
        raise Failure(str(e)) from None
    except StoreError as e:
        raise Failure(str(e)) from None


def replays_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--include-replays``: the views also hold the sessions rtcap made itself."""
    return click.option(
        "--include-replays", is_flag=True, help="Also count replay, serve and simulator sessions (left out by default)."
    )(command)


def indexing_progress() -> contextlib.AbstractContextManager[Callable[[int, int], None] | None]:
    """A progress callback that shows a bar on a terminal once indexing takes a moment."""
    return progress_bar("indexing captures")


@contextlib.contextmanager
def progress_bar(label: str, *, passes: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """A ``(done, total)`` callback drawing a bar on a terminal once the work takes a moment
    (nothing off a terminal). With ``passes``, the bar goes when a pass is done and comes
    back for the next (``rtcap ship --watch``)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, TaskID

    started = time.monotonic()
    with Progress(transient=True) as bar:
        task: TaskID | None = None

        def advance(done: int, total: int) -> None:
            nonlocal task
            if task is None and time.monotonic() - started > 0.5:
                task = bar.add_task(label, total=total)
            if task is not None:
                bar.update(task, completed=done, total=total)
                if passes and done == total:
                    bar.remove_task(task)
                    task = None

        yield advance


def library(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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


def labels_from(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--label K=V`` pairs (and ``$RTCAP_LABELS``) as labels; a malformed one is bad usage."""
    from recorder.session import parse_labels

    try:
        return parse_labels(pairs)
    except ValueError as e:
        raise BadUsage(str(e)) from None


def emit_document(document: dict[str, Any], rows_key: str, fmt: str | None, output: Path | None) -> None:
    """A result document: the whole document as JSON, else its rows (after its summary)."""
    import json

    import pyarrow as pa

    from analyzer.render import RenderError, output_format, private_file

    try:
        chosen = output_format(fmt, output)
    except RenderError as e:
        raise BadUsage(str(e)) from None
    summary = document.get("summary")
    # The finding is one line for a person: above a table on the terminal, else on stderr,
    # so that piping the rows somewhere does not lose it.
    if summary and chosen == "table" and output is None:
        click.echo(summary + "\n")
    elif summary:
        click.echo(summary, err=True)
    if chosen == "json":
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        if output is None:
            sys.stdout.write(text)
            return
        try:
            with private_file(output) as f:
                f.write(text)
        except OSError as e:
            raise Failure(f"cannot write {output}: {e.strerror or e}") from None
        click.echo(f"wrote {plural(len(document[rows_key]), 'row')} to {output}", err=True)
        return
    rows = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()} for row in document[rows_key]]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"feature": pa.array([], pa.string())})
    emit(table, chosen, output)


def plural(count: int, noun: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def load(captures: Path, session: str, max_messages: int | None = None) -> Any:
    """The capture SESSION names (see :func:`analyzer.locate.load_session`)."""
    from analyzer.locate import SessionNotFound, load_session
    from recorder.capture import CaptureError

    try:
        return load_session(captures, session, max_messages)
    except SessionNotFound as e:
        raise BadUsage(str(e)) from None
    except CaptureError as e:
        raise Failure(str(e)) from None


def address(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
