"""The pacer of replay and serve, on a fake clock: no socket, no sleep. Time is whatever
number a test passes; an answer is "send step k", "wait until t" or done."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from analyzer.reproduce.pacing import DONE, IdMap, Pacer, Send, Step, Wait, count_responses, plan, serve_plan
from recorder.capture import Capture, Message


def step(seq: int, after: int = 0, gap: float = 0.0, *, done: bool = False, needs: tuple[str, ...] = ()) -> Step:
    return Step(seq, json.dumps({"type": "x", "seq": seq}), after, gap, list(needs), done)


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def sent(action: Any) -> int:
    """The index of the step an answer sends (fails on any other answer)."""
    assert isinstance(action, Send), action
    return action.index


def capture(*messages: tuple[float, str, dict[str, Any]]) -> Capture:
    """A capture of ``(t_s, direction, event)`` messages, seq in order."""
    records = [
        Message(seq, int(t * 1e9), direction, "text", json.dumps(event).encode(), None, 0)
        for seq, (t, direction, event) in enumerate(messages)
    ]
    return Capture(Path("synthetic.msgpack"), {"session_id": "synthetic"}, records, None, "closed", [])


# A response that truncates the item of the previous one: it refers to a server-assigned id.
TRUNCATING = capture(
    (0.0, "received", ev("session.created", session={"id": "sess_1"})),
    (1.0, "sent", ev("response.create")),
    (1.1, "received", ev("response.created", response={"id": "resp_A"})),
    (1.2, "received", ev("response.output_item.added", item={"id": "item_A"})),
    (1.3, "received", ev("response.output_audio.delta", delta="")),
    (1.4, "received", ev("response.output_audio.delta", delta="")),
    (1.5, "received", ev("response.done", response={"id": "resp_A", "status": "completed"})),
    (3.0, "sent", ev("conversation.item.truncate", item_id="item_A", audio_end_ms=10)),
    (3.1, "received", ev("conversation.item.truncated", item_id="item_A")),
    (7.0, "sent", ev("response.create")),
)


# -- causal ----------------------------------------------------------------------------------


def test_causal_waits_for_as_many_server_units_as_were_recorded() -> None:
    pacer = Pacer([step(5, after=3)], start=0.0)
    assert pacer.next(0.0) == Wait(10.0)
    pacer.on_event(ev("a"), 0.1)
    pacer.on_event(ev("b"), 0.2)
    assert pacer.next(0.2) == Wait(10.0) and pacer.waiting_for == 2
    pacer.on_event(ev("c"), 0.3)
    action = pacer.next(0.3)
    assert sent(action) == 0 and action.note is None and pacer.notes == []


def test_a_run_of_deltas_counts_as_one() -> None:
    pacer = Pacer([step(9, after=3)], start=0.0)
    pacer.on_event(ev("response.created"), 0.1)
    for n in range(6):  # audio and transcript interleave: still one run
        pacer.on_event(ev("response.output_audio.delta" if n % 2 else "response.output_audio_transcript.delta"), 0.2)
    assert pacer.units.count == 2 and pacer.next(0.3) == Wait(10.0)
    pacer.on_event(ev("response.output_item.done"), 0.4)
    assert sent(pacer.next(0.4)) == 0


def test_a_pending_response_done_releases_the_step_early() -> None:
    # Recorded: ten server units and a response.done before the message; replayed, the
    # response is shorter. Only a response.done since the previous step counts.
    pacer = Pacer([step(1, after=1), step(20, after=10, done=True)], start=0.0)
    pacer.on_event(ev("response.done"), 0.0)
    assert sent(pacer.next(0.0)) == 0
    pacer.on_event(ev("response.created"), 0.1)
    assert pacer.next(0.1) == Wait(10.0)
    pacer.on_event(ev("response.done"), 0.2)
    assert sent(pacer.next(0.2)) == 1
    # Without after_done the same stream is no reason to go.
    strict = Pacer([step(20, after=10)], start=0.0)
    strict.on_event(ev("response.created"), 0.1)
    strict.on_event(ev("response.done"), 0.2)
    assert strict.next(0.2) == Wait(10.0)


def test_causal_gaps_are_not_before_the_previous_step() -> None:
    pacer = Pacer([step(1, gap=0.5), step(3, after=1, gap=2.0), step(5, after=1, gap=1.0)], start=0.0)
    assert pacer.next(0.0) == Wait(0.5)
    assert sent(pacer.next(0.5)) == 0
    pacer.on_event(ev("a"), 0.6)
    assert pacer.next(0.6) == Wait(2.5)  # 2 s after the previous step went
    assert pacer.next(2.4) == Wait(2.5)
    assert sent(pacer.next(2.5)) == 1
    # The server is late: the gap has passed by the time it answers, so it goes at once.
    pacer.on_event(ev("b"), 9.0)
    assert sent(pacer.next(9.0)) == 2


def test_speed_divides_the_recorded_gaps() -> None:
    steps = plan(TRUNCATING, "causal", speed=4)
    assert [(s.recorded_seq, s.after_server, s.not_before_s, s.after_done) for s in steps] == [
        (1, 1, 0.25, False),
        (7, 4, 0.5, True),  # response.created, item added, one delta run, response.done
        (9, 1, 1.0, False),
    ]
    pacer = Pacer(steps, start=100.0)
    pacer.on_event(ev("session.created"), 100.0)
    assert pacer.next(100.0) == Wait(100.25)
    assert sent(pacer.next(100.25)) == 0


# -- timed and asap --------------------------------------------------------------------------


def test_timed_follows_the_recorded_times_from_the_start() -> None:
    steps = plan(TRUNCATING, "timed", speed=2)
    assert [(s.after_server, s.not_before_s) for s in steps] == [(0, 0.5), (0, 1.5), (0, 3.5)]
    pacer = Pacer(steps, pace="timed", start=10.0)
    assert pacer.next(10.0) == Wait(10.5)  # nothing arrived, and it does not matter
    assert sent(pacer.next(11.0)) == 0  # late
    assert pacer.next(11.0) == Wait(11.5)  # from the start, not from the previous step
    assert sent(pacer.next(11.5)) == 1


def test_asap_sends_at_once_but_waits_for_the_ids_it_must_map() -> None:
    steps = plan(TRUNCATING, "asap")
    assert [s.needs for s in steps] == [[], ["item_A"], []]
    pacer = Pacer(steps, pace="asap", start=0.0, ids=IdMap(TRUNCATING))
    assert sent(pacer.next(0.0)) == 0
    assert pacer.next(0.0) == Wait(10.0)  # the truncate names item_A: its new id first
    pacer.on_event(ev("response.created", response={"id": "resp_X"}), 0.1)
    assert pacer.next(0.1) == Wait(10.0)
    pacer.on_event(ev("response.output_item.added", item={"id": "item_X"}), 0.2)
    action = pacer.next(0.2)
    assert sent(action) == 1 and json.loads(action.data)["item_id"] == "item_X"
    assert sent(pacer.next(0.2)) == 2


def test_without_an_id_map_nothing_waits_for_ids_or_is_rewritten() -> None:
    pacer = Pacer(plan(TRUNCATING, "asap"), pace="asap", start=0.0)
    assert [sent(pacer.next(0.0)) for _ in range(3)] == [0, 1, 2]


# -- timeouts, the end -----------------------------------------------------------------------


def test_after_the_timeout_a_step_goes_anyway_and_the_divergence_is_noted() -> None:
    pacer = Pacer([step(7, after=2), step(8, after=1)], start=0.0, timeout=10.0)
    pacer.on_event(ev("a"), 1.0)
    assert pacer.next(9.9) == Wait(10.0)
    action = pacer.next(10.0)
    assert sent(action) == 0 and action.note == "waited 10 s for the server before seq 7"
    assert pacer.next(10.0) == Wait(20.0)  # the next step's time counts from this one
    assert sent(pacer.next(20.0)) == 1
    assert pacer.notes == ["waited 10 s for the server before seq 7", "waited 10 s for the server before seq 8"]


def test_ids_that_never_come_are_waited_for_up_to_the_timeout() -> None:
    steps = plan(TRUNCATING, "asap")
    pacer = Pacer(steps, pace="asap", start=0.0, timeout=2.5, ids=IdMap(TRUNCATING))
    assert sent(pacer.next(0.0)) == 0
    assert pacer.next(1.0) == Wait(2.5)
    action = pacer.next(2.5)
    assert sent(action) == 1 and json.loads(action.data)["item_id"] == "item_A"  # as recorded
    assert pacer.notes == []


def test_after_the_last_step_it_waits_for_the_recorded_responses_to_end() -> None:
    pacer = Pacer([step(1)], start=0.0, expected_done=1)
    assert sent(pacer.next(0.0)) == 0
    assert pacer.next(1.0) == Wait(10.0)
    pacer.on_event(ev("response.done"), 2.0)
    assert pacer.next(2.0) is DONE
    late = Pacer([step(1)], start=0.0, expected_done=1)
    sent(late.next(0.0))
    assert late.next(10.0) is DONE  # the response never ended: done waiting all the same


def test_a_replay_waits_for_the_responses_the_recording_started_to_end() -> None:
    # Recorded: the connection dropped during the response, so no response.done. The
    # replay still waits for its own response to end, by a response.done or a drop.
    dropped = capture(
        (0.0, "received", ev("session.created")),
        (1.0, "sent", ev("response.create")),
        (1.1, "received", ev("response.created", response={"id": "resp_A"})),
        (1.2, "received", ev("response.output_audio.delta", delta="")),
    )
    assert count_responses(dropped) == 1 and count_responses(TRUNCATING) == 1
    pacer = Pacer(plan(dropped), start=0.0, expected_done=count_responses(dropped))
    pacer.on_event(ev("session.created"), 0.0)
    assert sent(pacer.next(1.0)) == 0
    pacer.on_event(ev("response.created"), 1.1)
    assert pacer.next(1.2) == Wait(11.0)
    pacer.on_close(1.5)
    assert pacer.next(1.5) is DONE


def test_a_closed_connection_ends_it() -> None:
    pacer = Pacer([step(1, after=1), step(2)], start=0.0)
    pacer.on_close(0.5)
    assert pacer.next(0.5) is DONE and pacer.notes == [] and pacer.waiting_for is None


def test_an_unknown_pace_is_refused() -> None:
    with pytest.raises(ValueError, match="sometimes"):
        Pacer([], pace="sometimes")


# -- serve: the same core from the other side ------------------------------------------------


def test_serve_plan_counts_client_messages_from_the_start() -> None:
    steps = serve_plan(TRUNCATING, speed=10)
    assert [(s.recorded_seq, s.after_server) for s in steps] == [(0, 0), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (8, 2)]
    assert [s.not_before_s for s in steps] == pytest.approx([0.0, 0.11, 0.01, 0.01, 0.01, 0.01, 0.16])


def test_serve_releases_each_server_message_by_client_count() -> None:
    steps = [step(0), step(2, after=1), step(3, after=1), step(5, after=3, gap=1.0)]
    pacer = Pacer(steps, start=0.0, timeout=None, absolute=True, peer="client")
    assert sent(pacer.next(0.0)) == 0
    assert pacer.next(0.0) == Wait(None) and pacer.waiting_for == 0  # for ever, by default
    # The client runs ahead: three messages before the server said anything more. Counted
    # from the start, all three server messages are due (not one more client message each).
    for t in (0.1, 0.2, 0.3):
        pacer.on_event(None, t)
    assert [sent(pacer.next(0.3)) for _ in range(2)] == [1, 2]
    assert pacer.next(0.3) == Wait(1.3)  # not before its gap after the previous one
    assert sent(pacer.next(1.3)) == 3
    assert pacer.next(1.3) is DONE


def test_serve_with_a_timeout_names_the_client_message_it_waited_for() -> None:
    steps = [step(0), step(4, after=2), step(5, after=2), step(7, after=3)]
    steps = [dataclasses.replace(s, kind=k) for s, k in zip(steps, ["a", "response.created", "b", "c"], strict=True)]
    kinds = ["session.update", "response.create", "response.cancel"]
    pacer = Pacer(steps, start=0.0, timeout=5.0, absolute=True, peer="client", peer_kinds=kinds)
    sent(pacer.next(0.0))
    pacer.on_event(None, 1.0)
    assert pacer.waiting_for == 1 and pacer.next(1.0) == Wait(5.0)
    action = pacer.next(5.0)
    assert sent(action) == 1
    assert action.note == (
        "waited 5 s for client message 1 (response.create) before server message 1 (response.created, seq 4)"
    )
    # Given up on client message 1, the next server message that waits for it goes at once:
    # a missing message costs one timeout, not one per server message after it.
    assert sent(pacer.next(5.0)) == 2 and len(pacer.notes) == 1
    assert pacer.next(5.0) == Wait(10.0) and pacer.waiting_for == 1  # message 2 needs one more
    pacer.on_event(None, 6.0)
    assert pacer.next(6.0) == Wait(10.0)
    pacer.on_event(None, 7.0)
    assert sent(pacer.next(7.0)) == 3 and len(pacer.notes) == 1


def test_serve_plan_names_each_server_message() -> None:
    assert [s.kind for s in serve_plan(TRUNCATING)][:3] == [
        "session.created",
        "response.created",
        "response.output_item.added",
    ]
