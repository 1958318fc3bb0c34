"""``rtcap replay``: send a recorded session to a server again, and say whether its failure
came back.

Planning is plain code: :func:`plan` turns a capture into steps (which client message,
after how many server messages, not before when), and :class:`IdMap` rewrites the ids the
server assigned in the recording to the ones it assigns now. :func:`replay` is the thin
network loop that runs a plan against a server, recording the new session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from recorder import events
from recorder.capture import RECEIVED, SENT, Capture, Message
from recorder.proxy import HOP_HEADERS as PROXY_HOP_HEADERS
from recorder.redact import REDACTED, SECRET_SUBPROTOCOL_PREFIXES
from recorder.session import SessionRecorder, now_ns, who_closed

# The proxy's hop-by-hop headers, and the recorded client's User-Agent: a replay is
# rtcap talking, not the app.
HOP_HEADERS = PROXY_HOP_HEADERS | {"user-agent"}


@dataclasses.dataclass
class Step:
    """Send one recorded client message."""

    recorded_seq: int
    data: str | bytes
    after_server: int
    """How many server units (a run of deltas counts as one) since the previous step must
    have arrived first (``causal``)."""
    not_before_s: float
    """Seconds after the previous step (``causal``) or after the start (``timed``)."""
    needs: list[str]
    """Recorded server ids this message refers to, which must be mapped first."""
    after_done: bool = False
    """A response ended before this message in the recording: once the replayed one ends,
    the message goes even if fewer server messages came (``causal``)."""


def _event(message: Message) -> dict[str, Any] | None:
    # A binary frame that happens to start with "{" is still not an event.
    return events.parse(message.data()) if message.opcode == "text" else None


def plan(capture: Capture, pace: str = "causal", speed: float = 1.0) -> list[Step]:
    """The steps that send a capture's client messages again."""
    assigned: set[str] = set()
    steps: list[Step] = []
    server_since: list[str | None] = []  # types of the server events since the last step
    previous_t = 0
    for message in capture.messages:
        event = _event(message)
        if message.direction == events.RECEIVED:
            server_since.append(events.event_type(event))
            if event:
                assigned.update(i for _, i in events.server_ids(event))
            continue
        needs = sorted({s for s in events.strings(event) if s in assigned}) if event else []
        gap = (message.t_ns - previous_t) / 1e9 / speed
        at = message.t_ns / 1e9 / speed
        data = message.data().decode("utf-8", errors="replace") if message.opcode == "text" else message.data()
        if pace == "causal":
            ended = events.RESPONSE_DONE in server_since
            steps.append(Step(message.seq, data, events.count_units(server_since), gap, needs, ended))
        elif pace == "timed":
            steps.append(Step(message.seq, data, 0, at, needs))
        else:
            steps.append(Step(message.seq, data, 0, 0.0, needs))
        server_since = []
        previous_t = message.t_ns
    return steps


class IdMap:
    """Recorded server ids to the replay's, matched by kind and order of appearance."""

    def __init__(self, capture: Capture) -> None:
        self.recorded: dict[str, list[str]] = {kind: [] for kind in events.ID_KINDS}
        for _, event in recorded_events(capture):
            for kind, value in events.server_ids(event) if event else []:
                if value not in self.recorded[kind]:
                    self.recorded[kind].append(value)
        self.seen: dict[str, list[str]] = {kind: [] for kind in events.ID_KINDS}
        self.mapping: dict[str, str] = {}

    def learn(self, event: dict[str, Any]) -> None:
        """Take note of the ids a replayed server event assigns."""
        for kind, value in events.server_ids(event):
            if value in self.seen[kind]:
                continue
            index = len(self.seen[kind])
            self.seen[kind].append(value)
            if index < len(self.recorded[kind]):
                self.mapping[self.recorded[kind][index]] = value

    def rewrite(self, data: str | bytes) -> str | bytes:
        """A client message with every mapped id replaced."""
        if not isinstance(data, str) or not self.mapping:
            return data
        try:
            event = json.loads(data)
        except ValueError:
            return data
        changed = False

        def swap(value: Any) -> Any:
            nonlocal changed
            if isinstance(value, str) and value in self.mapping:
                changed = True
                return self.mapping[value]
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            if isinstance(value, list):
                return [swap(v) for v in value]
            return value

        rewritten = swap(event)
        return json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False) if changed else data


def target_url(capture: Capture, to: str | None) -> str:
    """``--to`` resolved against the recorded URL; redacted query items dropped."""
    recorded = urlsplit(capture.header.get("url") or "")
    if to:
        given = urlsplit(to)
        if given.path in ("", "/"):
            recorded = recorded._replace(scheme=given.scheme, netloc=given.netloc)
        else:
            recorded = given
    query = "&".join(item for item in recorded.query.split("&") if item and REDACTED not in item)
    netloc = recorded.netloc.split("@")[-1]
    return urlunsplit((recorded.scheme, netloc, recorded.path, query, ""))


def connection_headers(
    capture: Capture, url: str, extra: Iterable[str] = ()
) -> tuple[list[tuple[str, str]], list[str]]:
    """Headers and subprotocols for the replay: the recording's, less anything redacted or
    hop-by-hop, plus credentials from ``--header`` or the environment (never the capture)."""
    headers = [
        (k, v)
        for k, v in capture.header.get("request_headers") or []
        if k.lower() not in HOP_HEADERS and REDACTED not in v and not k.lower().startswith("x-stainless")
    ]
    given = [tuple(h.split(":", 1)) for h in extra]
    if not any(k.lower() in ("authorization", "api-key") for k, _ in given):
        host = urlsplit(url).hostname or ""
        if host.endswith(".openai.azure.com") and os.environ.get("AZURE_OPENAI_API_KEY"):
            given.append(("api-key", os.environ["AZURE_OPENAI_API_KEY"]))
        elif os.environ.get("OPENAI_API_KEY"):
            given.append(("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}"))
    names = {k.lower() for k, _ in given}
    headers = [(k, v) for k, v in headers if k.lower() not in names] + [(k.strip(), v.strip()) for k, v in given]
    protocols = [
        p for p in capture.header.get("subprotocols") or [] if not p.lower().startswith(SECRET_SUBPROTOCOL_PREFIXES)
    ]
    return headers, protocols


def failure_entry(failure: events.Failure) -> dict[str, Any]:
    """A failure as the result document shows it (SPEC: seq, source, error_type, code,
    message, response_index)."""
    keys = ("seq", "source", "error_type", "code", "message", "response_index")
    return {key: getattr(failure, key) for key in keys}


def shape(received: Iterable[tuple[int, dict[str, Any] | None]]) -> list[tuple[int, str]]:
    """Event types for comparison, runs of deltas collapsed (their number depends on what
    was said); ``response.done`` carries its status."""
    labels: list[tuple[int, str | None]] = []
    for seq, event in received:
        kind = events.event_type(event) if event else "(non-json)"
        if kind == events.RESPONSE_DONE:
            kind += f":{events.response_status(event or {})}"
        labels.append((seq, kind))
    return [(seq, str(kind)) for seq, kind in events.collapse(labels)]


def divergence(recorded: list[tuple[int, str]], replayed: list[tuple[int, str]]) -> dict[str, Any] | None:
    for (r_seq, expected), (p_seq, got) in zip(recorded, replayed, strict=False):
        if expected != got:
            return {"recorded_seq": r_seq, "replay_seq": p_seq, "expected": expected, "got": got}
    if len(recorded) != len(replayed):
        shorter = min(len(recorded), len(replayed))
        expected = recorded[shorter][1] if shorter < len(recorded) else None
        got = replayed[shorter][1] if shorter < len(replayed) else None
        return {
            "recorded_seq": recorded[shorter][0] if expected else None,
            "replay_seq": replayed[shorter][0] if got else None,
            "expected": expected,
            "got": got,
        }
    return None


async def replay(
    capture: Capture,
    url: str,
    *,
    captures: Path,
    pace: str = "causal",
    speed: float = 1.0,
    timeout: float = 10.0,
    headers: list[tuple[str, str]] | None = None,
    subprotocols: list[str] | None = None,
    map_ids: bool = True,
) -> dict[str, Any]:
    """Replay ``capture`` to ``url`` once; returns the replay's entry of the result."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    steps = plan(capture, pace, speed)
    ids = IdMap(capture)
    received: list[tuple[int, dict[str, Any] | None]] = []
    units = events.Units()
    dones = 0
    arrived = asyncio.Event()
    closed = asyncio.Event()
    notes: list[str] = []
    expected_done = sum(1 for _, e in recorded_events(capture) if events.event_type(e) == events.RESPONSE_DONE)

    async with connect(
        url, additional_headers=headers or [], subprotocols=subprotocols or None, max_size=None, open_timeout=timeout
    ) as ws:  # type: ignore[arg-type]
        # The replay's capture is created once the server has accepted it, so a refused
        # connection leaves no empty file behind.
        recorder = SessionRecorder.create(
            captures,
            url=url,
            request_headers=headers or [],
            recorder="replay",
            labels=capture.header.get("labels") or {},
            replay_of=capture.session_id,
        )
        recorder.start(
            now_ns(),
            response_headers=ws.response.headers.raw_items() if ws.response else (),
            subprotocol=ws.subprotocol,
        )

        async def receive() -> None:
            nonlocal dones
            try:
                async for message in ws:
                    seq = recorder.message(RECEIVED, message, now_ns())
                    event = events.parse(message) if isinstance(message, str) else None
                    received.append((seq, event))
                    if event is not None:
                        ids.learn(event)
                    dones += events.event_type(event) == events.RESPONSE_DONE
                    units.add(events.event_type(event))
                    arrived.set()
            finally:
                closed.set()
                arrived.set()

        async def wait_until(condition: Any, deadline: float) -> bool:
            while not condition():
                if closed.is_set():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), remaining)
                except TimeoutError:
                    return condition()
            return True

        reader = asyncio.ensure_future(receive())
        started = time.monotonic()
        mark_units, mark_dones, mark_t = 0, 0, started
        for step in steps:
            if closed.is_set():
                break

            def ready(t: int = mark_units + step.after_server, s: Step = step, d: int = mark_dones) -> bool:
                # A pending response.done counts: once the replayed response has ended, a
                # shorter stream than the recorded one is no reason to wait for more.
                return units.count >= t or (s.after_done and dones > d)

            if not await wait_until(ready, time.monotonic() + timeout) and not closed.is_set():
                notes.append(f"waited {timeout:g} s for the server before seq {step.recorded_seq}")
            if map_ids and step.needs:
                await wait_until(lambda s=step: all(n in ids.mapping for n in s.needs), time.monotonic() + timeout)
            send_at = (mark_t if pace == "causal" else started) + step.not_before_s
            if pace != "asap" and send_at > time.monotonic():
                await asyncio.sleep(send_at - time.monotonic())
            if closed.is_set():
                break
            data = ids.rewrite(step.data) if map_ids else step.data
            recorder.message(SENT, data, now_ns())
            try:
                await ws.send(data)
            except ConnectionClosed:
                break
            mark_units, mark_dones, mark_t = units.count, dones, time.monotonic()
        await wait_until(lambda: dones >= expected_done, time.monotonic() + timeout)
        if not closed.is_set():
            await ws.close()
        await asyncio.wait([reader], timeout=timeout)
        closed_by, code, reason = who_closed(ws.protocol, peer="server", local="client")
    recorder.end(now_ns(), closed_by=closed_by, code=code, reason=reason)
    return {"session_id": recorder.session_id, "received": received, "notes": notes}


def recorded_events(capture: Capture) -> list[tuple[int, dict[str, Any] | None]]:
    return [(m.seq, _event(m)) for m in capture.messages if m.direction == events.RECEIVED]


def run(
    capture: Capture,
    *,
    to: str | None,
    captures: Path,
    pace: str = "causal",
    speed: float = 1.0,
    timeout: float = 10.0,
    repeat: int = 1,
    extra_headers: Iterable[str] = (),
    failure: str = "server_error",
    map_ids: bool = True,
) -> dict[str, Any]:
    """Replay ``capture`` ``repeat`` times; the result document SPEC describes."""
    url = target_url(capture, to)
    headers, protocols = connection_headers(capture, url, extra_headers)
    recorded = recorded_events(capture)
    target = next((f for f in events.failures(recorded) if events.failure_matches(f, failure)), None)
    expected_shape = shape(recorded)
    entries = []
    for _ in range(repeat):
        result = asyncio.run(
            replay(
                capture,
                url,
                captures=captures,
                pace=pace,
                speed=speed,
                timeout=timeout,
                headers=headers,
                subprotocols=protocols,
                map_ids=map_ids,
            )
        )
        found = [f for f in events.failures(result["received"]) if events.failure_matches(f, failure)]
        hit = next(
            (
                f
                for f in found
                if target and f.error_type == target.error_type and f.response_index == target.response_index
            ),
            None,
        )
        entries.append(
            {
                "session_id": result["session_id"],
                "reproduced": hit is not None,
                "failure": failure_entry(hit or found[0]) if (hit or found) else None,
                "diverged_at": divergence(expected_shape, shape(result["received"])),
                "notes": result["notes"],
            }
        )
    reproduced = sum(1 for e in entries if e["reproduced"])
    return {
        "replays": entries,
        "reproduced": reproduced,
        "of": repeat,
        "target": failure_entry(target) if target else None,
        "url": url,
        "pace": pace,
        "summary": verdict(reproduced, repeat, target is not None, failure),
    }


def verdict(reproduced: int, of: int, has_target: bool, failure: str) -> str:
    """What the reproduction rate suggests, in one sentence."""
    if not has_target:
        return f"The recording has no {failure} to reproduce; {of} replay(s) ran."
    rate = f"reproduced {reproduced} of {of} times ({reproduced / of:.0%})"
    if reproduced == of:
        return f"The failure {rate}: it looks deterministic, triggered by what the client sent."
    if reproduced == 0:
        return f"The failure was not reproduced in {of} replay(s): it looks transient, or depends on server state."
    return f"The failure {rate}: it looks transient or load-dependent rather than caused by the messages alone."
