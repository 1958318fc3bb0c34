"""``rtcap query --engine spark`` and ``rtcap precursors --engine spark``: pyspark in local
mode answers the README's example queries with the same rows as DuckDB, and finds what
precedes failures with the same document, over seeded simulator traffic with a planted
cause."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.sim.traffic import record_direct

QUICK_JIT = "-XX:TieredStopAtLevel=1"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark") / "captures"
    record_direct(root, ["fail p=0.04", "fail sent=input_audio_buffer.clear p=0.9"], sessions=15, seed=11)
    return root


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark for the module (it takes seconds to start); rtcap's commands reuse it.
    Its JVM compiles with the client compiler only: on jobs this small the server compiler's
    work never pays back, and it took a third of the JVM's CPU (32 s against 20 s measured),
    which the other test worker needs."""
    from analyzer.spark import session

    before = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = " ".join(filter(None, [before, QUICK_JIT]))
    started = session("local[2]")
    started.conf.set("spark.sql.shuffle.partitions", "2")  # 200 by default: tasks of nothing, here
    yield started
    started.stop()
    if before is None:
        del os.environ["JAVA_TOOL_OPTIONS"]
    else:
        os.environ["JAVA_TOOL_OPTIONS"] = before


def rows(corpus: Path, sql: str, *options: str) -> list[str]:
    result = CliRunner().invoke(cli, ["query", sql, "--format", "csv", "--captures", str(corpus), *options])
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    return lines


@pytest.mark.timeout(180)  # a Spark job takes a few seconds, even on a small corpus
def test_spark_answers_the_readme_queries_as_duckdb(corpus: Path, spark: Any) -> None:
    session = sorted(path.stem for path in corpus.glob("*/*.msgpack"))[5]
    readme = [
        "SELECT class, error_type, count(*) FROM failures GROUP BY ALL",
        "SELECT session_id, seq, class, error_type, message FROM failures",
        "SELECT * FROM responses WHERE status <> 'completed'",
        "SELECT response_id, status, error_type, input_tokens FROM responses "
        f"WHERE session_id = '{session}' ORDER BY created_seq",
        "SELECT f.session_id, e.seq, e.type FROM failures f JOIN events e "
        "ON e.session_id = f.session_id AND e.seq BETWEEN f.seq - 5 AND f.seq "
        "WHERE f.error_type = 'server_error' ORDER BY f.session_id, e.seq",
        "SELECT round(audio_ms) AS ms, count(*) FROM events "
        "WHERE type = 'input_audio_buffer.append' GROUP BY ALL ORDER BY ms",
        "SELECT status, avg(input_tokens), max(input_tokens) FROM responses GROUP BY ALL",
    ]
    for sql in readme:
        duckdb = rows(corpus, sql)
        assert duckdb, sql
        on_spark = rows(corpus, sql, "--engine", "spark")
        ordered = "ORDER BY" in sql
        assert (on_spark if ordered else sorted(on_spark)) == (duckdb if ordered else sorted(duckdb)), sql


def test_spark_refuses_what_is_not_a_query(corpus: Path, spark: Any) -> None:
    result = CliRunner().invoke(cli, ["query", "DROP VIEW events", "--engine", "spark", "--captures", str(corpus)])
    assert result.exit_code == 1
    assert result.output == "rtcap: error: only reading queries are allowed here, not DROP\n"


@pytest.mark.timeout(180)
def test_spark_precursors_give_the_document_duckdb_gives(corpus: Path, spark: Any) -> None:
    def document(*options: str) -> dict[str, Any]:
        args = ["precursors", "--format", "json", "--captures", str(corpus), "--window-events", "20", *options]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    duckdb = document()
    top = duckdb["features"][0]
    assert "input_audio_buffer.clear" in [top["feature"], *top["merged"]] and top["significant"], top
    # The same failures, controls, features with their counts and p-values, clustering
    # and position: the windows and their features are found by Spark, the rest is shared.
    assert document("--engine", "spark") == duckdb


def test_master_goes_with_spark(corpus: Path) -> None:
    result = CliRunner().invoke(cli, ["precursors", "--master", "local[2]", "--captures", str(corpus)])
    assert result.exit_code == 2
    assert result.output.endswith("rtcap: error: --master goes with --engine spark\n")
