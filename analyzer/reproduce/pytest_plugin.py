"""The ``rtcap_serve`` pytest fixture: serve a captured session to the code under test.

    def test_my_client_survives_the_failure(rtcap_serve):
        url = rtcap_serve("tests/data/server-error.msgpack")
        ...  # point the client at url and check what it does

Registered through the ``pytest11`` entry point, so installing rtcap makes it available.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from recorder.capture import read_capture
from recorder.serving import ServerThread

from .serve import Player, run_player


@pytest.fixture
def rtcap_serve() -> Iterator[Callable[..., str]]:
    """A function ``(capture_path, speed=1000.0) -> ws:// URL`` serving the capture's
    recorded server on 127.0.0.1 (a free port) for the rest of the test."""
    started: list[ServerThread] = []

    def start(capture: str | os.PathLike[str], speed: float = 1000.0) -> str:
        player = Player(read_capture(capture), speed=speed, report=lambda line: None)
        thread = ServerThread(lambda ready, stop: run_player(player, "127.0.0.1", 0, ready=ready, stop=stop)).start()
        started.append(thread)
        return thread.url

    yield start
    for thread in started:
        thread.stop()
