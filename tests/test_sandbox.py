"""User SQL runs sandboxed: it reads the views and nothing else, and writes nothing.

The statements here are the ones an attacker tried (issue 12) and their relatives: a
COPY hidden in a CTE, EXPLAIN ANALYZE running its statement, settings, extensions,
files outside the index, the environment, the network, and views replaced on the
connection of the Python API.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from analyzer.cli import cli
from analyzer.views import QueryError, open_captures
from recorder.session import RECEIVED, SENT


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def root(captures: Path, make_capture) -> Path:
    make_capture(
        [
            (0, RECEIVED, {"type": "session.created", "session": {"id": "sess_1"}}),
            (1, SENT, {"type": "response.create"}),
        ]
    )
    open_captures(captures)  # index it once, so the statements below find the index in place
    return captures


@pytest.fixture
def loopback_server():
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"a\n1\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def attacks(root: Path, outside: Path, url: str) -> list[str]:
    capture = next(root.rglob("*.msgpack"))
    manifest = root / ".rtcap" / "manifest.parquet"
    segment = next((root / ".rtcap" / "events").glob("*.parquet"))
    return [
        f"WITH x AS (COPY (SELECT 'gone') TO '{capture}' (FORMAT csv)) SELECT 1",
        f"WITH x AS (COPY (SELECT 'gone') TO '{manifest}' (FORMAT csv)) SELECT * FROM events",
        f"EXPLAIN ANALYZE COPY (SELECT 'gone') TO '{segment}' (FORMAT csv)",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}/written.csv'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE SET enable_external_access = true",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "INSTALL httpfs",
        "LOAD httpfs",
        "FORCE INSTALL json",
        f"ATTACH '{outside}/x.db'",
        f"COPY (SELECT 1) TO '{outside}/plain.csv'",
        f"EXPORT DATABASE '{outside}/dump'",
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        f"SELECT * FROM read_parquet('{segment}')",
        f"SELECT * FROM read_csv('{capture}')",
        f"SELECT * FROM read_csv('{url}/exfiltrate')",
        f"SELECT * FROM read_json('{url}/x.json')",
        "SELECT getenv('HOME')",
        "CREATE OR REPLACE TEMP VIEW events AS SELECT 'spoofed' AS type",
        "DROP VIEW events",
        "CREATE OR REPLACE MACRO rtcap_failure_class(a, b, c) AS 'spoofed'",
    ]


def test_no_statement_escapes_the_sandbox(root: Path, tmp_path: Path, loopback_server, monkeypatch) -> None:
    url, hits = loopback_server
    monkeypatch.setenv("RTCAP_TEST_SECRET", "sk-should-never-be-seen")
    outside = tmp_path / "outside"
    outside.mkdir()
    captures = open_captures(root)
    before = fingerprint(root)
    answers = []
    for statement in attacks(root, outside, url):
        try:
            answers.append(captures.sql(statement).to_pylist())
        except QueryError as e:
            answers.append(str(e))
        # Whatever the statement did to its own connection is gone: the views answer as before.
        [row] = captures.sql(
            "SELECT count(*) AS n, count(DISTINCT type) AS types, (SELECT failures FROM sessions) AS failures "
            "FROM events"
        ).to_pylist()
        assert row == {"n": 2, "types": 2, "failures": 0}, statement
    assert fingerprint(root) == before
    assert list(outside.iterdir()) == []
    assert hits == []
    assert "sk-should-never-be-seen" not in json.dumps(answers)
    assert "root:" not in json.dumps(answers)  # nothing of /etc/passwd


def test_the_cli_refuses_the_same(root: Path, tmp_path: Path, loopback_server) -> None:
    url, hits = loopback_server
    outside = tmp_path / "outside"
    outside.mkdir()
    before = fingerprint(root)
    for statement in attacks(root, outside, url):
        result = CliRunner().invoke(cli, ["query", statement, "--captures", str(root), "--format", "json"])
        assert result.exit_code in (0, 1), (statement, result.output)
        assert "Traceback" not in result.output
    assert fingerprint(root) == before
    assert list(outside.iterdir()) == []
    assert hits == []


def test_reading_queries_still_work_in_the_sandbox(root: Path) -> None:
    captures = open_captures(root)
    rows = captures.sql(
        "SELECT type, payload->>'type' AS again, rtcap_failure_class('error', 'server_error', NULL) AS class "
        "FROM events ORDER BY seq"
    ).to_pylist()
    assert rows == [
        {"type": "session.created", "again": "session.created", "class": "server"},
        {"type": "response.create", "again": "response.create", "class": "server"},
    ]
    assert captures.sql("EXPLAIN SELECT * FROM sessions").num_rows > 0
    assert captures.sql("SELECT ? AS x", [os.sep]).to_pylist() == [{"x": os.sep}]
