"""Past one machine: DuckDB on the local root, DuckDB over an S3 endpoint, and Spark local,
side by side, at two sizes to show how each grows.

Corpora of half ``--sessions`` and ``--sessions`` sessions x ``--messages`` messages
(1,000 and 2,000 x 1,000 by default: 1M and 2M messages, as in ``precursors_bench.py``, with a planted
cause). For each, in processes of their own (wall time and peak RSS):

- DuckDB, local root: index (the first ``rtcap query``), query (the same question again),
  ``rtcap precursors``;
- DuckDB over S3 (moto in server mode on a loopback port, in this process): ``rtcap ship``,
  index (the first ``rtcap query --captures s3://...``: mirror, index, publish the
  dataset), query, ``rtcap precursors``;
- Spark local (``local[*]``): index (the first ``rtcap query --engine spark``: the dataset
  published beside the local index, Spark started, the query), query (the same again: a
  Spark of its own started, the query), ``precursors --engine spark`` (the windows described
  in Spark's Python workers), and the query alone in a Spark already started.

Run: ``make bench`` (or ``.venv/bin/python bench/scale_bench.py [--sessions N]``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_bench import measure  # noqa: E402
from precursors_bench import corpus  # noqa: E402

QUESTION = "SELECT type, direction, count(*), sum(bytes) FROM events GROUP BY ALL ORDER BY ALL"


def _s3(work: Path, bucket: str) -> tuple[dict[str, str], object]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        XDG_CACHE_HOME=str(work / "cache"),
    )
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return env, server


def _spark_query_alone(root: Path) -> float:
    """The query's own time in a Spark already started (the dataset already published)."""
    from analyzer import spark

    session = spark.session("local[*]")
    url = spark.publish_for_spark(root)
    spark.query(session, url, QUESTION)  # registers the views, warms the JVM
    start = time.perf_counter()
    spark.query(session, url, QUESTION)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions of the larger corpus")
    parser.add_argument("--messages", type=int, default=1000, help="per session")
    args = parser.parse_args()
    rtcap = str(Path(sys.executable).parent / "rtcap")
    rows: dict[tuple[str, str], list[float]] = {}
    print(f"scale benchmark: python {sys.version.split()[0]}")
    for sessions in (args.sessions // 2, args.sessions):
        size = f"{sessions * args.messages / 1e6:g}M"
        work = Path(tempfile.mkdtemp(prefix="rtcap-scale-bench-"))
        try:
            root = work / "captures"
            corpus(root, sessions, args.messages)
            bucket = f"bench-{sessions}"  # moto's store outlives its server: a bucket per size
            env, server = _s3(work, bucket)
            local = ["--captures", str(root), "--format", "csv"]
            remote = ["--captures", f"s3://{bucket}/fleet", "--format", "csv"]
            steps = [
                ("duckdb local", "index", [rtcap, "query", QUESTION, *local]),
                ("duckdb local", "query", [rtcap, "query", QUESTION, *local]),
                ("duckdb local", "precursors", [rtcap, "precursors", *local]),
                ("duckdb s3", "ship", [rtcap, "ship", f"s3://{bucket}/fleet", "--captures", str(root)]),
                ("duckdb s3", "index", [rtcap, "query", QUESTION, *remote]),
                ("duckdb s3", "query", [rtcap, "query", QUESTION, *remote]),
                ("duckdb s3", "precursors", [rtcap, "precursors", *remote]),
                ("spark local", "index", [rtcap, "query", QUESTION, "--engine", "spark", *local]),
                ("spark local", "query", [rtcap, "query", QUESTION, "--engine", "spark", *local]),
                ("spark local", "precursors", [rtcap, "precursors", "--engine", "spark", *local]),
            ]
            for engine, step, command in steps:
                seconds, rss, _, _ = measure(command, env)
                rows.setdefault((engine, step), []).append(seconds)
                print(f"  {size:>4} {engine:<12} {step:<11} {seconds:7.2f} s, peak RSS {rss:5.0f} MB", flush=True)
            alone = _spark_query_alone(root)
            rows.setdefault(("spark local", "query alone"), []).append(alone)
            print(f"  {size:>4} spark local  query alone {alone:7.2f} s (Spark started, views registered)")
            server.stop()  # type: ignore[attr-defined]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n  engine       step          half (s)  full (s)  growth for x2 the messages")
    for (engine, step), figures in rows.items():
        growth = f"x{figures[1] / figures[0]:.2f}" if len(figures) == 2 and figures[0] else ""
        print(f"  {engine:<12} {step:<11} " + "".join(f"{f:10.2f}" for f in figures) + f"  {growth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
