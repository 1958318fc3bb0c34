"""Apache Spark as the engine for the big queries: ``rtcap query --engine spark``.

Spark reads the index published as a dataset (:mod:`analyzer.remote`): the views
``sessions``, ``events``, ``responses`` and ``failures`` as Parquet with the views'
columns, hive-partitioned by day. :func:`register_views` makes them Spark views, for rtcap
and for a notebook or a Spark job; :func:`query` runs rtcap's SQL (DuckDB's dialect,
translated by sqlglot) over them and returns Arrow; :func:`precursors` runs ``rtcap
precursors`` with Spark as its :class:`analyzer.precursors.Engine`: the scan of the windows
and their features in Spark, the statistics here. pyspark and sqlglot are the optional
extra ``spark``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .remote import TABLES, dataset_files, latest, local_sources, publish, url_of

_REGISTERED: dict[int, tuple[str, bool, Any]] = {}  # a session's views: (url, replays, generation)


class SparkError(Exception):
    """Spark is missing, or cannot run or translate a statement."""


def _require() -> None:
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError:
        raise SparkError("--engine spark needs the spark extra: pip install 'rtcap[spark]'") from None


def session(master: str | None = None) -> Any:
    """A SparkSession on ``master`` (``local[*]`` when none is given, or the one
    ``spark-submit`` configured), its SQL times in UTC as rtcap's are."""
    _require()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("rtcap").config("spark.sql.session.timeZone", "UTC")
    builder = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    if master:
        builder = builder.master(master)
    elif not SparkSession.getActiveSession():
        master = "local[*]"
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Spark's Python workers run rtcap's functions (precursors): here, this interpreter.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def register_views(spark: Any, url: str, *, include_replays: bool = False) -> None:
    """Register ``sessions``, ``events``, ``responses`` and ``failures`` as Spark temporary
    views over the dataset published at ``url`` (its newest generation), each with its
    ``day`` partition column. Replays (replay, serve and simulator sessions) are left out
    unless ``include_replays``, as in rtcap's views. Use ``s3a://`` URLs on a cluster
    whose Hadoop reads S3 (an ``s3://`` URL is read as ``s3a://``)."""
    entry = latest(url)
    current = (url, include_replays, entry.get("generation"))
    if _REGISTERED.get(id(spark)) == current:
        return  # the views already read this generation
    files = dataset_files(url, entry)
    if not files["sessions"]:
        raise SparkError(f"no index published at {url}: run an rtcap command over it first")
    scheme = url.split("://", 1)[0]
    spark_scheme = "s3a" if scheme in ("s3", "s3a") else scheme
    for table in TABLES:
        paths = [f"{spark_scheme}://{path.split('://', 1)[1]}" for path in files[table]]
        base = paths[0].rsplit("/day=", 1)[0]
        frame = spark.read.option("basePath", base).parquet(*paths)
        frame.createOrReplaceTempView(f"_all_{table}")  # with day, for partition pruning
    # The views have exactly rtcap's columns, so SELECT * answers as it does in DuckDB.
    columns = {table: [c for c in spark.table(f"_all_{table}").columns if c != "day"] for table in TABLES}
    kept = "" if include_replays else " WHERE NOT is_replay"
    spark.sql(
        f"CREATE OR REPLACE TEMPORARY VIEW sessions AS SELECT {_list(columns['sessions'])} FROM _all_sessions{kept}"
    )
    # Only when sessions are left out do the other views need the join that leaves out theirs
    # (a job of its own in every statement that reads them).
    left_out = bool(kept) and bool(spark.sql("SELECT 1 FROM _all_sessions WHERE is_replay LIMIT 1").take(1))
    for table in TABLES[1:]:
        spark.sql(
            f"CREATE OR REPLACE TEMPORARY VIEW {table} AS SELECT {_list(columns[table])} FROM _all_{table}"
            + (" WHERE session_id IN (SELECT session_id FROM sessions)" if left_out else "")
        )

    _REGISTERED[id(spark)] = current


def _list(columns: list[str]) -> str:
    return ", ".join(f"`{column}`" for column in columns)


def translate(sql: str) -> str:
    """rtcap's SQL (DuckDB's dialect) as Spark SQL; one reading statement only."""
    _require()
    import sqlglot
    import sqlglot.expressions as exp

    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError as e:
        raise SparkError(" ".join(str(e).split())) from None
    if len(statements) != 1 or statements[0] is None:
        raise SparkError(f"expected one SQL statement, got {len(statements)}")
    if not isinstance(statements[0], exp.Query):
        raise SparkError(f"only reading queries are allowed here, not {statements[0].key.upper()}")
    return statements[0].sql(dialect="spark")


def publish_for_spark(root: Path) -> str:
    """The URL of the dataset of the (indexed) capture root ``root``: a store's, already
    published, or ``file://`` of a local root, published beside its index now."""
    from .index import index_dir

    url = url_of(root)
    if url is None:
        root = Path(root).absolute()
        index = index_dir(root)
        # Beside the index: in the root, or in the cache directory when the root is read-only.
        url = f"file://{root if index == root / '.rtcap' else index}"
        publish(url, root, local_sources(root))
    return url


def query(spark: Any, url: str, sql: str, *, include_replays: bool = False) -> Any:
    """Run one reading statement on Spark over the dataset at ``url``; returns Arrow."""
    translated = translate(sql)
    register_views(spark, url, include_replays=include_replays)
    from pyspark.errors import PySparkException

    try:
        return spark.sql(translated).toArrow()
    except PySparkException as e:
        raise SparkError(" ".join(str(e).split())[:500]) from None


class SparkEngine:
    """Spark as the :class:`analyzer.precursors.Engine` of ``rtcap precursors``: its
    statements translated by sqlglot and run over the views of :func:`register_views`,
    the windows a temporary view, its functions run by Spark's Python workers on each
    group of rows (``groupBy(key).applyInArrow``), so only their results come back."""

    def __init__(self, spark: Any, url: str, *, include_replays: bool = False) -> None:
        register_views(spark, url, include_replays=include_replays)
        self.spark = spark
        self.include_replays = include_replays

    def _frame(self, query: str, windows: Any) -> Any:
        if windows is not None:
            self.spark.createDataFrame(windows).createOrReplaceTempView("_rtcap_windows")
            query = query.replace("{windows}", "SELECT * FROM _rtcap_windows")
        return self.spark.sql(translate(query))

    def sql(self, query: str, windows: Any = None) -> Any:
        """Run one statement on Spark; its rows as Arrow."""
        return _run(lambda: self._frame(query, windows).toArrow())

    def apply(self, query: str, key: str, function: Callable[[Any], Any], schema: Any, windows: Any = None) -> Any:
        """``function`` on Spark's workers over each group of ``key`` of ``query``'s rows."""
        from pyspark.sql.pandas.types import from_arrow_schema

        def run() -> Any:
            grouped = self._frame(query, windows).groupBy(key)
            return grouped.applyInArrow(function, from_arrow_schema(schema)).toArrow()

        return _run(run)


def _run(action: Callable[[], Any]) -> Any:
    from pyspark.errors import PySparkException

    try:
        return action()
    except PySparkException as e:
        raise SparkError(" ".join(str(e).split())[:500]) from None


def precursors(spark: Any, url: str, *, include_replays: bool = False, **options: Any) -> dict[str, Any]:
    """``rtcap precursors`` on Spark over the dataset at ``url``: the same document as
    :func:`analyzer.precursors.analyse` gives over the same captures."""
    from .precursors import analyse

    return analyse(SparkEngine(spark, url, include_replays=include_replays), **options)
