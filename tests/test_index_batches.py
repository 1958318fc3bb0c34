"""The index reads captures a batch at a time: what it holds must not depend on where the
batches fall, in worker processes or not, and an update must resume a batch-read capture
where it stopped."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from analyzer.views import open_captures
from recorder import capture
from recorder.session import RECEIVED, SENT
from tests.conftest import CaptureMaker

AUDIO = base64.b64encode(bytes(range(240)) * 2).decode()  # 480 bytes
G711_OUT = {"type": "session.updated", "session": {"output_audio_format": "g711_ulaw"}}
EVENTS = """
    SELECT session_id, seq, t_s, ts, direction, type, event_id, response_id, item_id, bytes,
           audio_ms, redacted, payload::VARCHAR AS payload
    FROM events ORDER BY session_id, seq
"""


def session(n: int, switch_at: int | None) -> list[tuple[float, int, object]]:
    """``n`` messages: audio both ways and transcript text, the output format switching to
    G.711 at message ``switch_at``."""
    out: list[tuple[float, int, object]] = []
    for k in range(n):
        t = k / 100
        if k == switch_at:
            out.append((t, RECEIVED, G711_OUT))
        elif k % 3 == 0:
            out.append((t, SENT, {"type": "input_audio_buffer.append", "audio": AUDIO}))
        elif k % 3 == 1:
            out.append((t, RECEIVED, {"type": "response.output_audio.delta", "response_id": "resp_1", "delta": AUDIO}))
        else:
            out.append((t, RECEIVED, {"type": "response.output_audio_transcript.delta", "delta": f"word {k} é"}))
    return out


def events_of(root: Path) -> list[dict[str, object]]:
    return open_captures(root).sql(EVENTS).to_pylist()


@pytest.mark.parametrize("captures_count", [3, 17])  # under 16: read in this process; else in workers
def test_the_index_does_not_depend_on_the_batch_size(
    make_capture: CaptureMaker, captures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captures_count: int
) -> None:
    for n in range(captures_count):
        make_capture(session(40 + n, switch_at=7 + n))
    small = tmp_path / "small"
    shutil.copytree(captures, small)
    whole = events_of(captures)
    monkeypatch.setattr(capture, "COLUMN_ROWS", 3)
    assert events_of(small) == whole
    assert len(whole) == sum(40 + n for n in range(captures_count))
    # The format followed across batches: 480 bytes are 10 ms of PCM16, 60 ms of G.711.
    first = [row for row in whole if row["session_id"] == whole[0]["session_id"]]
    deltas = [row["audio_ms"] for row in first if row["type"] == "response.output_audio.delta"]
    assert deltas[:2] == [10.0, 10.0] and deltas[-1] == 60.0
    assert all(row["audio_ms"] is None for row in first if row["type"] == G711_OUT["type"])


def test_an_update_resumes_a_capture_read_in_batches(
    make_capture: CaptureMaker, captures: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "COLUMN_ROWS", 4)
    recorder = make_capture.open()
    for seq, (t, direction, event) in enumerate(session(30, switch_at=5)):
        if seq == 13:
            assert len(events_of(captures)) == 13  # read while open, in batches of 4
        recorder.message(direction, json.dumps(event), int(t * 1e9))
    recorder.end(10**9, closed_by="client", code=1000)
    rows = events_of(captures)
    assert [row["seq"] for row in rows] == list(range(30))
    # The format the first read followed is where the second one starts from.
    deltas = {row["seq"]: row["audio_ms"] for row in rows if row["type"] == "response.output_audio.delta"}
    assert deltas == {seq: 10.0 if seq < 5 else 60.0 for seq in range(1, 30, 3)}


def test_stream_columns_batches_join_to_what_read_columns_reads(tmp_path: Path) -> None:
    golden = Path(__file__).parent / "data" / "capture-v1.msgpack"
    whole = capture.read_columns(golden)
    batches = list(capture.stream_columns(golden, rows=2))
    assert all(1 <= len(b.seq) <= 2 for b in batches[:-1]) and len(batches) > 2
    assert [s for b in batches for s in b.seq] == whole.seq
    assert [p for b in batches for p in b.payload] == whole.payload
    assert [a for b in batches for a in b.audio_bytes] == whole.audio_bytes
    last = batches[-1]
    assert last.end == whole.end and last.stop == whole.stop and last.problems == whole.problems == []
    assert all(b.header == whole.header for b in batches)
