"""Rendering Arrow tables for people and programs: table, CSV, JSON, JSON lines, Parquet.

Timestamps become ISO-8601 UTC, maps JSON objects, and nothing else changes.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import decimal
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa


@contextlib.contextmanager
def private_file(path: Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """Open ``path`` for writing as a file only its owner can read (0600, also when it
    existed before with wider permissions), never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        yield f


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) 0700 if missing."""
    from recorder.capture import make_private_dirs

    make_private_dirs(path)


EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


class RenderError(ValueError):
    """An output file or format that cannot be honoured (a usage error)."""


def output_format(fmt: str | None, output: Path | None) -> str:
    """The format to write: from ``--output``'s extension, checked against ``--format``."""
    if output is None:
        return fmt or ("table" if sys.stdout.isatty() else "csv")
    by_extension = EXTENSIONS.get(output.suffix.lower())
    if by_extension is None:
        raise RenderError(f"--output {output}: use a .parquet, .csv, .json or .jsonl file")
    if fmt is not None and fmt != by_extension and not (fmt == "table" and by_extension == "parquet"):
        raise RenderError(f"--format {fmt} contradicts --output {output}")
    return by_extension


def plain(value: Any) -> Any:
    """A value as JSON would hold it."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows, each value made plain; map columns become objects even when empty."""
    maps = {f.name for f in table.schema if pa.types.is_map(f.type)}
    out = []
    for row in table.to_pylist():
        item = {}
        for key, value in row.items():
            if key in maps and value is not None:
                item[key] = {str(k): plain(v) for k, v in value}
            else:
                item[key] = plain(value)
        out.append(item)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write(table: pa.Table, fmt: str, out: IO[str]) -> None:
    """Write ``table`` to a text stream in ``fmt`` (table, csv, json, jsonl)."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in rows(table):
            writer.writerow([_cell(v) for v in row.values()])
    elif fmt == "json":
        json.dump(rows(table), out, ensure_ascii=False, indent=None)
        out.write("\n")
    elif fmt == "jsonl":
        for row in rows(table):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        _rich_table(table, out)


NARROWEST = 6
"""A column that is not an id is not folded narrower than this; past that, columns are
left out from the right (a terminal too narrow for them all)."""


def _rich_table(table: pa.Table, out: IO[str]) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    # On a terminal rich fits the table to it; in a file, lines are as long as they need.
    console = Console(file=out, soft_wrap=False, width=None if out.isatty() else 1000)
    cells = [[_short(f"{v:.4g}" if isinstance(v, float) else _cell(v)) for v in row.values()] for row in rows(table)]
    names = table.column_names
    shown = list(range(len(names)))

    def build() -> Table:
        view = Table(show_edge=False, header_style="bold")
        for i in shown:
            if names[i].endswith("_id"):
                # Ids are copied and pasted whole: never wrapped; the other columns give way.
                widest = max([len(names[i])] + [len(row[i]) for row in cells])
                view.add_column(names[i], no_wrap=True, min_width=widest)
            else:
                view.add_column(names[i], overflow="fold", min_width=min(NARROWEST, len(names[i])))
        for row in cells:
            view.add_row(*[row[i] for i in shown])
        return view

    unbounded = console.options.update_width(1 << 20)  # measure what it needs, not what it may have
    view = build()
    while Measurement.get(console, unbounded, view).minimum > console.width and len(shown) > 1:
        shown.pop(next(n for n in reversed(range(len(shown))) if names[shown[n]] != "session_id" or n == 0))
        view = build()
    console.print(view)
    if len(shown) < len(names):
        left = [name for i, name in enumerate(names) if i not in shown]
        console.print(f"({len(left)} columns left out to fit the terminal: {', '.join(left)}; try --format csv)")
    if table.num_rows == 0:
        out.write("(no rows)\n")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save(table: pa.Table, fmt: str, path: Path) -> None:
    """Write ``table`` to a file in ``fmt`` (parquet, csv, json, jsonl)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with private_file(path, binary=True) as f:
            pq.write_table(table, f)
        return
    with private_file(path) as f:
        write(table, fmt, f)
