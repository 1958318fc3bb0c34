"""``rtcap precursors`` on a large corpus, and on half of it to show how time grows.

Corpora of 1,000 and 500 sessions x 1,000 messages (as in ``index_bench.py``), where 3% of
responses fail with a server_error, most of them right after an input_audio_buffer.clear.
Each corpus is indexed first (not timed here: that is ``index_bench.py``'s business), then
``rtcap precursors --format json`` runs in a process of its own: time, peak RSS, and
whether it found the planted cause. Target: under 10 s at the full size, linear growth.
Run: ``make bench`` (or ``.venv/bin/python bench/precursors_bench.py``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import _templates, measure, session_messages, write_session  # noqa: E402


def corpus(root: Path, sessions: int, messages: int) -> None:
    rng = random.Random(7)
    templates = _templates(rng)
    for _ in range(sessions):
        write_session(root, session_messages(messages, rng, templates, fail=0.03), None, rng)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000, help="per session")
    args = parser.parse_args()
    rtcap = str(Path(sys.executable).parent / "rtcap")
    results = []
    print(f"precursors benchmark: python {sys.version.split()[0]}")
    for sessions in (args.sessions // 2, args.sessions):
        work = Path(tempfile.mkdtemp(prefix="rtcap-precursors-bench-"))
        try:
            root = work / "captures"
            corpus(root, sessions, args.messages)
            measure([rtcap, "query", "SELECT count(*) FROM events", "--captures", str(root), "--format", "csv"])
            seconds, rss, out, _ = measure([rtcap, "precursors", "--captures", str(root), "--format", "json"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        document = json.loads(out)
        top = document["features"][0] if document["features"] else {}
        results.append((sessions * args.messages, seconds, rss))
        print(
            f"  {sessions * args.messages:>9,} messages: {seconds:6.2f} s, peak RSS {rss:5.0f} MB; "
            f"{document['failures']} failures, {document['controls']} controls; top: {top.get('feature')} "
            f"(p={top.get('p_value', 1):.1g}, merged {len(top.get('merged', []))})"
        )
    (half_n, half_s, _), (full_n, full_s, _) = results
    growth = (full_s / half_s) / (full_n / half_n)
    print(f"\n  full size under 10 s: {full_s:.2f} s  {'PASS' if full_s < 10 else 'MISS'}")
    ratio = f"x{full_s / half_s:.2f} for x{full_n / half_n:.0f} the messages"
    print(f"  growth from half to full: {ratio} ({growth:.2f} of linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
