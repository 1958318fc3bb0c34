"""Apache Spark as the engine for the big queries: ``rtcap query --engine spark``.

Spark reads the index published as a dataset (:mod:`analyzer.remote`): the views
``sessions``, ``events``, ``responses`` and ``failures`` as Parquet with the views'
columns, hive-partitioned by day. :func:`register_views` makes them Spark views, for rtcap
and for a notebook or a Spark job; :func:`query` runs rtcap's SQL (DuckDB's dialect,
translated by sqlglot) over them and returns Arrow. pyspark and sqlglot are the optional
extra ``spark``.
"""

from __future__ import annotations

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
        builder = builder.master("local[*]")
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
    for table in TABLES[1:]:
        spark.sql(
            f"CREATE OR REPLACE TEMPORARY VIEW {table} AS SELECT {_list(columns[table])} FROM _all_{table} "
            "WHERE session_id IN (SELECT session_id FROM sessions)"
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
