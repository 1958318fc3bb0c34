"""``rtcap ship`` to a real S3 endpoint (moto in server mode on a loopback port), read back
with boto3; and to ``file://``."""

from __future__ import annotations

import json
import logging
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from analyzer.cli import cli
from analyzer.locate import capture_files
from recorder.events import RECEIVED, SENT
from recorder.session import capture_path

RTCAP = [sys.executable, "-m", "analyzer"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A fresh bucket; the store's credentials and endpoint only in its usual variables."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=endpoint)
    name = request.node.name.replace("_", "-").lower()[:50]
    client.create_bucket(Bucket=name)
    return client, name


def stored(client: Any, name: str) -> dict[str, bytes]:
    listing = client.list_objects_v2(Bucket=name).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=name, Key=item["Key"])["Body"].read() for item in listing}


def corpus(make_capture: Any, count: int, size: int = 2000) -> dict[str, bytes]:
    """``count`` closed captures, each with ``size`` bytes of audio; their bytes by path
    relative to the root."""
    for i in range(count):
        make_capture(
            [
                (0.0, RECEIVED, {"type": "session.created", "session": {"id": f"sess_{i}"}}),
                (0.1, SENT, {"type": "input_audio_buffer.append", "audio": "AAAA" * (size // 4)}),
                (0.2, SENT, {"type": "response.create"}),
            ]
        )
    root = make_capture.root
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in capture_files(root)}


def ship(captures: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["ship", *args, "--captures", str(captures)])


def test_ship_copies_closed_captures_once(bucket: Any, make_capture: Any, captures: Path) -> None:
    client, name = bucket
    local = corpus(make_capture, 3)
    still_open = make_capture.open()
    result = ship(captures, f"s3://{name}/host-a")
    assert result.exit_code == 0, result.output
    assert result.output == f"shipped 3 captures (0.0 MB) to s3://{name}/host-a; 1 open (not shipped)\n"
    assert stored(client, name) == {f"host-a/{rel}": data for rel, data in local.items()}

    result = ship(captures, f"s3://{name}/host-a")
    assert result.output == (
        f"shipped 0 captures (0.0 MB) to s3://{name}/host-a; 3 already there, 1 open (not shipped)\n"
    )

    still_open.end(2_000_000, closed_by="client", code=1000)
    result = ship(captures, f"s3://{name}/host-a")
    assert result.output == f"shipped 1 capture (0.0 MB) to s3://{name}/host-a; 3 already there\n"
    path = capture_path(captures, still_open.session_id)
    assert stored(client, name)[f"host-a/{path.relative_to(captures).as_posix()}"] == path.read_bytes()


def test_a_copy_cut_short_or_different_is_redone(bucket: Any, make_capture: Any, captures: Path) -> None:
    client, name = bucket
    local = corpus(make_capture, 3)
    (first, data1), (second, data2), _ = sorted(local.items())
    client.put_object(Bucket=name, Key=first, Body=data1[: len(data1) // 2])  # cut short
    client.put_object(Bucket=name, Key=second, Body=bytes(len(data2)))  # same size, other bytes
    result = ship(captures, f"s3://{name}")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"shipped 3 captures (0.0 MB) to s3://{name}\n")
    assert stored(client, name) == local


def test_a_killed_ship_is_completed_by_the_next(bucket: Any, make_capture: Any, captures: Path) -> None:
    client, name = bucket
    local = corpus(make_capture, 40, size=200_000)
    process = subprocess.Popen([*RTCAP, "ship", f"s3://{name}/p", "--captures", str(captures)])
    deadline = time.monotonic() + 30
    try:
        while not client.list_objects_v2(Bucket=name).get("KeyCount"):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    before = client.list_objects_v2(Bucket=name)["KeyCount"]
    assert 0 < before < len(local)

    result = ship(captures, f"s3://{name}/p")
    assert result.exit_code == 0, result.output
    assert f"; {before} already there" in result.output
    assert stored(client, name) == {f"p/{rel}": data for rel, data in local.items()}


def test_watch_ships_sessions_as_they_close(bucket: Any, make_capture: Any, captures: Path) -> None:
    client, name = bucket
    local = corpus(make_capture, 1)
    session = make_capture.open()
    process = subprocess.Popen(
        [*RTCAP, "ship", f"s3://{name}", "--watch", "--interval", "0.1", "--captures", str(captures)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == f"shipped 1 capture (0.0 MB) to s3://{name}; 1 open (not shipped)\n"
        assert stored(client, name) == local
        session.end(1_000_000, closed_by="client", code=1000)
        assert process.stdout.readline() == f"shipped 1 capture (0.0 MB) to s3://{name}; 1 already there\n"
        assert len(stored(client, name)) == 2
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.splitlines()[-1] == "rtcap: error: interrupted"


def test_delete_after_removes_only_verified_closed_captures(make_capture: Any, captures: Path, tmp_path: Path) -> None:
    local = corpus(make_capture, 2)
    still_open = make_capture.open()
    dest = tmp_path / "store"
    result = ship(captures, f"file://{dest}", "--delete-after")
    assert result.exit_code == 0, result.output
    assert result.output == f"shipped 2 captures (0.0 MB) to file://{dest}; 1 open (not shipped), 2 deleted here\n"
    assert capture_files(captures) == [capture_path(captures, still_open.session_id)]
    assert {path.relative_to(dest).as_posix(): path.read_bytes() for path in capture_files(dest)} == local
    assert {stat.S_IMODE(path.stat().st_mode) for path in capture_files(dest)} == {0o600}


def test_a_store_without_its_library_names_the_extra(captures: Path) -> None:
    captures.mkdir(exist_ok=True)
    for url, extra in (("gs://bucket/prefix", "gcs"), ("az://container/prefix", "azure")):
        result = subprocess.run([*RTCAP, "ship", url, "--captures", str(captures)], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (1, "")
        scheme = url.split(":")[0]
        assert result.stderr == f"rtcap: error: {scheme}:// URLs need the {extra} extra: pip install 'rtcap[{extra}]'\n"


def test_a_missing_bucket_is_one_error(bucket: Any, make_capture: Any, captures: Path) -> None:
    corpus(make_capture, 2)
    result = subprocess.run(
        [*RTCAP, "ship", "s3://no-such-bucket/p", "--captures", str(captures)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "rtcap: error: s3://no-such-bucket/p: no bucket no-such-bucket, or no access to it\n"


def test_ship_takes_no_credentials_as_options() -> None:
    result = CliRunner().invoke(cli, ["ship", "--help"])
    options = json.dumps([param.opts for param in cli.commands["ship"].params])
    assert result.exit_code == 0
    for word in ("key", "secret", "token", "password", "credential", "endpoint"):
        assert word not in options


# -- --captures s3://...: every reading command over the store, the index published beside it


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded simulated traffic with a planted cause (a clear before the failures), recorded
    without audio bytes (as --no-audio does): a tenth of the size to ship and fetch, and
    every reading command answers from lengths and events alike."""
    from analyzer.sim.traffic import record_direct

    root = tmp_path_factory.mktemp("planted") / "captures"
    rules = ["fail p=0.04", "fail sent=input_audio_buffer.clear p=0.9"]
    record_direct(root, rules, sessions=40, seed=11, audio=False)
    return root


@pytest.fixture
def shipped(bucket: Any, planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, name = bucket
    assert ship(planted, f"s3://{name}/fleet").exit_code == 0
    return f"s3://{name}/fleet"


KEYS = {
    "sessions": ["session_id"],
    "events": ["session_id", "seq"],
    "responses": ["session_id", "created_seq", "response_id"],
    "failures": ["session_id", "seq", "source"],
}


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_reading_command_answers_over_s3_as_locally(shipped: str, planted: Path) -> None:
    session = capture_files(planted)[3].stem
    for command in (
        ["sessions", "--format", "csv"],
        ["query", "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type", "--format", "csv"],
        ["query", "SELECT * FROM failures ORDER BY session_id, seq", "--format", "json"],
        ["show", session[:20], "--format", "jsonl"],
        ["precursors", "--format", "json"],
        ["doctor", "--format", "csv"],
        ["latency", "--format", "csv"],
    ):
        local = run(*command, "--captures", str(planted))
        assert run(*command, "--captures", shipped) == local, command
    document = json.loads(run("precursors", "--format", "json", "--captures", shipped))
    assert document["failures"] > 0 and document["features"][0]["feature"].startswith("input_audio_buffer.clear")


def test_the_index_is_published_beside_the_captures(bucket: Any, shipped: str, planted: Path) -> None:
    import pyarrow.dataset as ds
    import s3fs

    from analyzer.remote import TABLES, dataset_files, latest
    from analyzer.views import open_captures

    client, name = bucket
    run("sessions", "--captures", shipped)
    assert latest(shipped)["generation"] == 1
    local = open_captures(planted, include_replays=True)
    fs = s3fs.S3FileSystem()
    files = dataset_files(shipped)
    for table in TABLES:
        assert files[table] == [
            f"s3://{name}/fleet/.rtcap/dataset/{table}/day={day}/" + files[table][0].rsplit("/")[-1]
            for day in sorted({p.parent.name for p in capture_files(planted)})
        ]
        paths = [f.removeprefix("s3://") for f in files[table]]
        published = ds.dataset(paths, filesystem=fs, format="parquet", partitioning="hive").to_table()
        expected = local.sql(f"SELECT * FROM {table}")
        order = [(column, "ascending") for column in KEYS[table]]
        assert published.drop_columns(["day"]).sort_by(order).to_pylist() == expected.sort_by(order).to_pylist()

    run("query", "SELECT 1", "--captures", shipped)
    assert latest(shipped)["generation"] == 1  # nothing changed: nothing written

    gone = capture_files(planted)[0].relative_to(planted).as_posix()
    client.delete_object(Bucket=name, Key=f"fleet/{gone}")
    run("sessions", "--captures", shipped)
    entry = latest(shipped)
    assert entry["generation"] == 2 and all(gone not in day["sources"] for day in entry["days"].values())
    sessions = ds.dataset([f.removeprefix("s3://") for f in dataset_files(shipped)["sessions"]], filesystem=fs)
    assert sessions.count_rows() == len(capture_files(planted)) - 1


def test_two_indexers_at_once_never_both_publish(shipped: str, planted: Path) -> None:
    from analyzer.remote import commit, latest, mirror, prepare
    from analyzer.store import StoreError

    root = mirror(shipped)
    first, second = prepare(shipped, root, batch=500), prepare(shipped, root)
    assert first.generation == second.generation == 1
    commit(first)
    with pytest.raises(StoreError, match="another rtcap published the index of .* at the same time"):
        commit(second)
    assert latest(shipped) == first.entry
    # Written 500 rows at a time, the tables are the views all the same.
    import pyarrow.dataset as ds
    import s3fs

    from analyzer.remote import dataset_files
    from analyzer.views import open_captures

    local = open_captures(planted, include_replays=True)
    for table, files in dataset_files(shipped).items():
        published = ds.dataset([f.removeprefix("s3://") for f in files], filesystem=s3fs.S3FileSystem()).to_table()
        order = [(column, "ascending") for column in KEYS[table]]
        assert published.sort_by(order).to_pylist() == local.sql(f"SELECT * FROM {table}").sort_by(order).to_pylist()


def test_commands_that_record_take_no_url(captures: Path) -> None:
    result = CliRunner().invoke(cli, ["proxy", "--upstream", "ws://127.0.0.1:1", "--captures", "s3://b/p"])
    assert result.exit_code == 2
    assert "rtcap proxy writes captures to a local directory, not s3://b/p (ship them with rtcap ship)" in result.output


def test_watch_goes_on_when_the_store_refuses_a_pass(bucket: Any, make_capture: Any, captures: Path) -> None:
    client, name = bucket
    local = corpus(make_capture, 1)
    later = f"{name}-later"
    process = subprocess.Popen(
        [*RTCAP, "ship", f"s3://{later}", "--watch", "--interval", "0.1", "--captures", str(captures)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        assert process.stderr.readline().startswith("rtcap ship: watching ")
        assert process.stderr.readline() == (
            f"rtcap: warning: cannot ship s3://{later}: no bucket {later}, or no access to it\n"
        )
        client.create_bucket(Bucket=later)
        line = process.stdout.readline()
        while line.startswith("shipped 0 captures"):
            line = process.stdout.readline()
        assert line == f"shipped 1 capture (0.0 MB) to s3://{later}\n"
        assert stored(client, later) == local
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 130
