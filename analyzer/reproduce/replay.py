"""``rtcap replay``: send a recorded session to a server again, and say whether its failure
came back.

What to send when is decided in :mod:`.pacing` (plain code, tested with a fake clock);
:func:`replay` is the thin network loop that runs it against a server, recording the new
session; :func:`run` replays a capture N times and compares failures and event sequences
with the recording's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlunsplit

from recorder import events
from recorder.capture import RECEIVED, SENT, Capture
from recorder.proxy import HOP_HEADERS as PROXY_HOP_HEADERS
from recorder.redact import REDACTED, SECRET_SUBPROTOCOL_PREFIXES, Redactor
from recorder.session import SessionRecorder, now_ns, who_closed

from .pacing import Done, IdMap, Pacer, Wait, count_responses, idle, plan, recorded_events

# The proxy's hop-by-hop headers, and the recorded client's User-Agent: a replay is
# rtcap talking, not the app.
HOP_HEADERS = PROXY_HOP_HEADERS | {"user-agent"}


def target_url(capture: Capture, to: str | None) -> str:
    """``--to`` resolved against the recorded URL; redacted query items dropped."""
    recorded = events.split_url(capture.header.get("url"))
    if to:
        given = events.split_url(to)
        if given.path in ("", "/"):
            recorded = recorded._replace(scheme=given.scheme, netloc=given.netloc)
        else:
            recorded = given
    query = "&".join(item for item in recorded.query.split("&") if item and REDACTED not in item)
    netloc = recorded.netloc.split("@")[-1]
    return urlunsplit((recorded.scheme, netloc, recorded.path, query, ""))


def shown_url(url: str) -> str:
    """A URL fit to print: secrets redacted, as a capture would hold it (one that cannot
    be parsed is not shown at all)."""
    try:
        return Redactor().redact_url(url)[0]
    except ValueError:
        return "(a URL that cannot be parsed)"


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
        host = events.split_url(url).hostname or ""
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
    """Where two :func:`shape` s first differ (one ending early included), or ``None``."""
    for (r_seq, expected), (p_seq, got) in zip(recorded, replayed, strict=False):
        if expected != got:
            return {"recorded_seq": r_seq, "replay_seq": p_seq, "expected": expected, "got": got}
    if len(recorded) != len(replayed):
        shorter = min(len(recorded), len(replayed))
        left = recorded[shorter] if shorter < len(recorded) else None
        right = replayed[shorter] if shorter < len(replayed) else None
        return {
            "recorded_seq": left[0] if left else None,
            "replay_seq": right[0] if right else None,
            "expected": left[1] if left else None,
            "got": right[1] if right else None,
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
    from websockets.typing import Subprotocol

    received: list[tuple[int, dict[str, Any] | None]] = []
    offered = [Subprotocol(p) for p in subprotocols or ()] or None
    async with connect(
        url, additional_headers=headers or [], subprotocols=offered, max_size=None, open_timeout=timeout
    ) as ws:
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
        loop = asyncio.get_running_loop()
        pacer = Pacer(
            plan(capture, pace, speed),
            pace=pace,
            start=loop.time(),
            timeout=timeout,
            ids=IdMap(capture) if map_ids else None,
            expected_done=count_responses(capture),
        )
        woken = asyncio.Event()

        async def receive() -> None:
            try:
                async for message in ws:
                    seq = recorder.message(RECEIVED, message, now_ns())
                    event = events.parse(message) if isinstance(message, str) else None
                    received.append((seq, event))
                    pacer.on_event(event, loop.time())
                    woken.set()
            finally:
                pacer.on_close(loop.time())
                woken.set()

        reader = asyncio.ensure_future(receive())
        while not isinstance(action := pacer.next(loop.time()), Done):
            if isinstance(action, Wait):
                await idle(action, woken, loop.time())
                continue
            recorder.message(SENT, action.data, now_ns())
            try:
                await ws.send(action.data)
            except ConnectionClosed:
                break
        if not pacer.closed:
            await ws.close()
        await asyncio.wait([reader], timeout=timeout)
        closed_by, code, reason = who_closed(ws.protocol, peer="server", local="client")
    recorder.end(now_ns(), closed_by=closed_by, code=code, reason=reason)
    end = {"closed_by": closed_by, "code": code, "reason": reason}
    return {"session_id": recorder.session_id, "received": received, "end": end, "notes": pacer.notes}


def target_failure(capture: Capture, failure: str) -> events.Failure | None:
    """The recording's first failure of kind ``failure`` (what a replay tries to bring back)."""
    # The end counts: a connection dropped during a response is a failure, as in the
    # failures view, and the replay's own end is judged the same way.
    found = events.failures(recorded_events(capture), capture.end)
    return next((f for f in found if events.failure_matches(f, failure)), None)


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
    failure: str = events.DEFAULT_FAILURE,
    map_ids: bool = True,
) -> dict[str, Any]:
    """Replay ``capture`` ``repeat`` times; the result document SPEC describes. The URL
    it shows, in the document and in errors, is redacted: ``--to`` may carry a key."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    url = target_url(capture, to)
    shown = shown_url(url)
    try:
        parse_uri(url)
    except InvalidURI as e:  # its message quotes the URL, credentials and all
        raise InvalidURI(shown, e.msg) from None
    headers, protocols = connection_headers(capture, url, extra_headers)
    recorded = recorded_events(capture)
    target = target_failure(capture, failure)
    expected_shape = shape(recorded)
    entries = []
    lost = 0  # replays that did not reproduce it, having left the recording before it
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
        found = [f for f in events.failures(result["received"], result["end"]) if events.failure_matches(f, failure)]
        hit = next(
            (
                f
                for f in found
                if target and f.error_type == target.error_type and f.response_index == target.response_index
            ),
            None,
        )
        diverged_at = divergence(expected_shape, shape(result["received"]))
        entries.append(
            {
                "session_id": result["session_id"],
                "reproduced": hit is not None,
                "failure": failure_entry(hit or found[0]) if (hit or found) else None,
                "diverged_at": diverged_at,
                "notes": result["notes"],
            }
        )
        lost += hit is None and target is not None and diverged_before(diverged_at, target)
    reproduced = sum(1 for e in entries if e["reproduced"])
    return {
        "replays": entries,
        "reproduced": reproduced,
        "of": repeat,
        "target": failure_entry(target) if target else None,
        "url": shown,
        "pace": pace,
        "summary": verdict(reproduced, repeat, target is not None, failure, diverged=lost),
    }


def diverged_before(diverged_at: dict[str, Any] | None, target: events.Failure) -> bool:
    """Whether a replay left the recording before the position of the failure it should
    reproduce: then whether the failure would have come back is unknown. A failure with no
    seq (the connection's end) is at the end of the recording."""
    if diverged_at is None or diverged_at["recorded_seq"] is None:
        return False  # it followed the recording to its end, and went on
    return target.seq is None or diverged_at["recorded_seq"] < target.seq


def verdict(reproduced: int, of: int, has_target: bool, failure: str, diverged: int = 0) -> str:
    """What the reproduction rate suggests, in one sentence. ``diverged``: how many of
    the replays that did not reproduce the failure left the recording before its position
    (:func:`diverged_before`). Those say nothing about it: with any of them the verdict is
    inconclusive, and "transient" is kept for replays that followed the recording to the
    failure's position and did not fail there."""
    if not has_target:
        return f"The recording has no {failure} to reproduce; {of} replay(s) ran."
    rate = f"reproduced {reproduced} of {of} times ({reproduced / of:.0%})"
    if reproduced == of:
        return f"The failure {rate}: it looks deterministic, triggered by what the client sent."
    if diverged:
        which = "every replay" if diverged == of else f"{diverged} of the replays"
        return f"The failure {rate}, but {which} diverged from the recording before it (see diverged_at): inconclusive."
    if reproduced == 0:
        return (
            f"The failure was not reproduced in {of} replay(s) that followed the recording up to it: "
            "it looks transient, or depends on server state."
        )
    return f"The failure {rate}: it looks transient or load-dependent rather than caused by the messages alone."
