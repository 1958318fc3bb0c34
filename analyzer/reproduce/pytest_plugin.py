"""The ``rtcap_serve`` pytest fixture: serve a captured session to the code under test.

    def test_my_client_survives_the_failure(rtcap_serve):
        url = rtcap_serve("tests/data/server-error.msgpack", strict=True)
        ...  # point the client at url and check what it does

Registered through the ``pytest11`` entry point, so installing rtcap makes it available.

With ``strict=True``, a client that leaves the recording (a message that differs from the
recorded one, or one that never comes within ``timeout``) fails the test. It happens in
two steps: at once, the server closes that client's connection with 1008 and the
difference as its reason, so the client stops waiting for what will not come; and when the
test's body has returned or raised, the test fails (``pytest.fail``) with every difference
found, whatever else it raised then.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator

import pytest

from recorder.capture import read_capture
from recorder.serving import ServerThread

from .serve import Player, run_player

SETTLE_S = 2.0
"""How long, after a test's body, a strict server may take to finish comparing what its
clients sent (a client that closed has been compared by then; one still open, not quite)."""

_PLAYERS = pytest.StashKey[list[Player]]()


@pytest.fixture
def rtcap_serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """A function ``(capture_path, speed=1000.0, *, strict=False, timeout=10.0) -> URL``
    serving the capture's recorded server on ``ws://127.0.0.1`` (a free port) for the rest
    of the test. ``timeout``: seconds a server message waits for the client messages before
    it in the recording (``None``: for ever). Differences and timeouts are printed on
    stderr; with ``strict`` they fail the test (see the module's docstring)."""
    started: list[ServerThread] = []
    players = request.node.stash.setdefault(_PLAYERS, [])

    def start(
        capture: str | os.PathLike[str], speed: float = 1000.0, *, strict: bool = False, timeout: float | None = 10.0
    ) -> str:
        player = Player(
            read_capture(capture),
            speed=speed,
            timeout=timeout,
            strict=strict,
            report=lambda line: print(f"rtcap_serve: {line}", file=sys.stderr, flush=True),
        )
        players.append(player)
        thread = ServerThread(lambda ready, stop: run_player(player, "127.0.0.1", 0, ready=ready, stop=stop)).start()
        started.append(thread)
        return thread.url

    yield start
    for thread in started:
        thread.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail a test whose strict ``rtcap_serve`` saw its client leave the recording."""
    try:
        result = yield
    except Exception as raised:
        _fail_if_diverged(item, raised)
        raise
    _fail_if_diverged(item, None)
    return result


def _fail_if_diverged(item: pytest.Item, raised: Exception | None) -> None:
    strict = [player for player in item.stash.get(_PLAYERS, []) if player.strict]
    for player in strict:
        player.settle(SETTLE_S)
    problems = [line for player in strict for line in player.problems]
    if not problems:
        return
    message = "rtcap_serve (strict): the client left the recording:\n" + "\n".join(f"  {p}" for p in problems)
    if raised is not None:
        message += f"\n(the test then raised {type(raised).__name__}: {raised})"
    pytest.fail(message, pytrace=False)
