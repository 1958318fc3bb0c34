"""``rtcap demo``: rtcap's whole job, offline, on a simulated voice agent.

A simulator fails with server_error after an out-of-band response.create with an object
tool_choice (a precursor reported in the wild; REALTIME.md) and, rarely, at random. A few
dozen varied sessions are recorded through `rtcap proxy` and through the in-process shim
with the openai SDK; then the captures are indexed, the precursors ranked, one failing
session checked and replayed (the planted cause and a transient failure, to show the
difference), and a report bundle written. Everything printed is computed, nothing canned.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import recorder
from recorder.capture import Capture, make_private_dirs

from .doctor import diagnose
from .locate import load_session
from .page import write_page
from .precursors import analyse
from .report import build as build_report
from .reproduce.replay import run as replay
from .sim import traffic
from .sim.simulator import RunningSimulator, Simulator
from .views import Captures, open_captures

PLANTED = "fail field=response.create:response.tool_choice.type=function p=0.85"
TRANSIENT = "fail p=0.03"
SEED = 7


async def _sdk_session(url: str, rng: random.Random) -> None:
    """One session through the openai SDK's realtime client (recorded by the shim)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-demo-not-a-real-key", websocket_base_url=url + "/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session=traffic.session_update(rng))  # type: ignore[arg-type]
        for _ in range(rng.randint(3, 5)):
            for client_event in traffic.turn_events(rng):
                await conn.send(client_event)  # type: ignore[arg-type]
            async for event in conn:
                if event.type == "response.done":
                    output = event.response.output or []
                    if output and output[0].type == "function_call":
                        item = {
                            "type": "function_call_output",
                            "call_id": output[0].call_id,
                            "output": '{"celsius": 21}',
                        }
                        await conn.conversation.item.create(item=item)  # type: ignore[arg-type]
                        await conn.response.create(response={"tool_choice": "auto"})
                        continue
                    break


async def _sdk_sessions(url: str, sessions: int) -> None:
    for n in range(sessions):
        await _sdk_session(url, random.Random(f"sdk/{SEED}/{n}"))


def _first_failures(captures: Captures) -> dict[str, str | None]:
    """For each session with a server_error: the tool_choice type of the response.create
    before its first one (``function`` for the planted cause, None for a transient one)."""
    rows = captures.sql(
        """
        WITH first AS (
            SELECT session_id, min(t_s) AS t_s FROM failures WHERE error_type = 'server_error' GROUP BY ALL
        ), cause AS (
            SELECT f.session_id, r.created_seq FROM failures f JOIN first USING (session_id, t_s)
            JOIN responses r ON r.session_id = f.session_id AND r.response_id = f.response_id
        )
        SELECT c.session_id, arg_max(e.payload->'response'->'tool_choice'->>'type', e.seq) AS choice
        FROM cause c JOIN events e ON e.session_id = c.session_id AND e.seq < c.created_seq
        WHERE e.type = 'response.create'
        GROUP BY ALL ORDER BY c.session_id
        """
    ).to_pylist()
    return {row["session_id"]: row["choice"] for row in rows}


def run(
    root: Path, say: Callable[[str], None], progress: Callable[[int, int], None] | None = None, sessions: int = 40
) -> dict[str, Any]:
    """The demo, printing as it goes; returns what it found (for tests)."""
    shutil.rmtree(root, ignore_errors=True)
    make_private_dirs(root)
    simulator = RunningSimulator(Simulator([PLANTED, TRANSIENT], seed=SEED, speed=1000)).start()
    found: dict[str, Any] = {}
    try:
        say(f"1. A simulated realtime server at {simulator.url}")
        say(f"   faults: '{PLANTED}' and '{TRANSIENT}'")
        through_sdk = max(1, sessions // 4)
        relay = traffic.proxied(simulator.url, root, {"app": "kiosk", "via": "proxy"})
        try:
            asyncio.run(traffic.drive(relay.url + "/v1/realtime?model=gpt-realtime", sessions - through_sdk, SEED, 8))
        finally:
            relay.stop()
        with recorder.recording(captures=root, labels={"app": "kiosk", "via": "shim"}):
            asyncio.run(_sdk_sessions(simulator.url, through_sdk))
        proxied = sessions - through_sdk
        say(f"2. Recorded {proxied} sessions through rtcap proxy and {through_sdk} through the shim (openai SDK)")

        captures = open_captures(root, progress=progress)
        query = "SELECT count(*) AS n, sum(messages) AS messages, sum(failures) AS failures FROM sessions"
        [counts] = captures.sql(query).to_pylist()
        say(f"3. Indexed {counts['n']} sessions: {counts['messages']} messages, {counts['failures']} failures")

        document = found["precursors"] = analyse(captures)
        say("\n4. What precedes server_error (rtcap precursors):")
        say(f"   {document['summary']}")
        clusters, place = document["clustering"], document["position"]
        say(
            f"   Failures after failures: {clusters['after_failure']} of {clusters['of']} turns right after a failure "
            f"failed, {clusters['after_success']} of {clusters['of2']} after a healthy response "
            f"({'clustered' if clusters['significant'] else 'no clustering'})."
        )
        if place is not None:
            say(
                f"   Position: {place['feature']} in {place['failures_with']} of {place['of']} failures, "
                f"{place['controls_with']} of {place['of2']} healthy responses "
                f"({'failures come late' if place['significant'] else 'no position effect'})."
            )
        say(_table(document["features"][:5]))

        examples = document["features"][0]["examples"] if document["features"] else []
        first = _first_failures(captures)
        # Replay an example whose first failure followed the top feature, and a session whose
        # first failure followed nothing in particular, to show the difference.
        planted = next((s for s in examples if first.get(s) == "function"), examples[0] if examples else None)
        transient = next((s for s, choice in first.items() if choice is None), None)
        if planted:
            checks = [c for c in diagnose(captures, planted).to_pylist() if c["status"] != "pass"]
            say(f"\n5. rtcap doctor {planted}:")
            for check in checks or [{"check": "every check", "status": "pass", "evidence": ""}]:
                say(f"   {check['status'].upper():5} {check['check']}: {check['evidence']}")
            say(f"\n6. Replaying {planted} (an example of the top feature), 5 times:")
            found["deterministic"] = _replay(load_session(root, planted), simulator.url, root)
            say(f"   {found['deterministic']['summary']}")
            if transient:
                say(f"   ...and {transient}, whose first failure followed nothing in particular, 5 times:")
                found["transient"] = _replay(load_session(root, transient), simulator.url, root)
                say(f"   {found['transient']['summary']}")
            bundle = found["report"] = root / f"report-{planted}.zip"
            build_report(captures, load_session(root, planted), bundle)
            say(f"\n7. Wrote a support bundle for the vendor: {bundle}")
            page = found["page"] = root / f"session-{planted}.html"
            write_page(captures, load_session(root, planted), page, at_failure=True)
            say(f"8. The failed session on a timeline, with its audio (open it in a browser): {page}")
    finally:
        simulator.stop()
    rtcap = program()
    say("\nExplore the same captures:")
    say(f"  {rtcap} sessions --captures {root} --failed")
    if planted:
        say(f"  {rtcap} show {planted} --captures {root}")
    say(f'  {rtcap} query "SELECT class, error_type, count(*) FROM failures GROUP BY ALL" --captures {root}')
    say(f"  {rtcap} precursors --captures {root} --format json")
    say(f"  {rtcap} ui --captures {root}")
    if rtcap != "rtcap":
        say(f"  ({rtcap} is not on PATH as rtcap: `source {Path(rtcap).parent}/activate` makes it so)")
    return found


def program(argv0: str | None = None) -> str:
    """How to type this rtcap in the commands the demo suggests: ``rtcap`` when that is
    what PATH finds, else the path it was started by (``.venv/bin/rtcap`` after
    ``make demo``)."""
    started = Path(argv0 if argv0 is not None else sys.argv[0])
    if started.name != "rtcap":  # started some other way (python -m analyzer, a test)
        return "rtcap"
    found = shutil.which("rtcap")
    if found is not None and Path(found).resolve() == started.resolve():
        return "rtcap"
    return os.path.relpath(started)


def _table(features: list[dict[str, Any]]) -> str:
    import pyarrow as pa

    from .render import write

    columns = ["feature", "kind", "failures_with", "controls_with", "lift", "p_value", "significant"]
    rows = [{k: f[k] for k in columns} for f in features]
    buffer = io.StringIO()
    if rows:
        write(pa.Table.from_pylist(rows), "table", buffer)
    return buffer.getvalue().rstrip()


def _replay(capture: Capture, url: str, root: Path) -> dict[str, Any]:
    return replay(capture, to=url, captures=root, pace="causal", speed=100, timeout=5, repeat=5)
