"""The frame-level relay under ``rtcap proxy``: backpressure and fragmented messages,
between real websockets clients and servers on loopback."""

from __future__ import annotations

import json

from websockets.sync.client import connect

from recorder.capture import read_capture
from tests.conftest import REALTIME, EchoServer
from tests.test_proxy import only_capture, wait_for

CHUNK = 256 * 1024  # bytes a message
COUNT = 256  # messages: 64 MiB, far more than every socket buffer on the way holds
BOUND = 2 * 1024 * 1024  # what the proxy may hold for one session: a few frames, not the stream


def test_a_slow_reader_holds_up_the_sender_not_the_proxy(start_proxy, captures) -> None:
    sent = []

    def stream(request):
        for n in range(COUNT):
            sent.append(n)
            yield n.to_bytes(4, "big") * (CHUNK // 4)

    with EchoServer(greet=stream) as upstream:
        proxy = start_proxy(upstream.url)
        # A client whose buffer takes two messages before it stops reading the socket.
        with connect(proxy.url + REALTIME, max_size=None, max_queue=2) as ws:
            wait_for(lambda: len(proxy.proxy.sessions) == 1)
            [session] = proxy.proxy.sessions
            # The app reads nothing: the proxy's write to it backs up, so it stops reading
            # the upstream, which then cannot send the rest.
            wait_for(lambda: session.upstream.paused)
            assert session.buffered() < BOUND
            assert len(sent) < COUNT
            held = []
            for n in range(COUNT):
                message = ws.recv()
                assert message == n.to_bytes(4, "big") * (CHUNK // 4)
                held.append(session.buffered())
            assert max(held) < BOUND, max(held)
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    got = read_capture(only_capture(captures))
    assert [(m.direction, len(m.data())) for m in got.messages] == [("received", CHUNK)] * COUNT


def test_fragmented_messages_are_relayed_frame_by_frame_and_recorded_whole(start_proxy, captures) -> None:
    fragments = [["Hel", "lo, ", "world"], [b"\x00\x01", b"\x02", b"\x03\x04"]]
    with EchoServer(greet=lambda request: fragments) as upstream:
        proxy = start_proxy(upstream.url)
        with connect(proxy.url + REALTIME, max_size=None) as ws:
            # The upstream's frames reach the app as they were sent (websockets ends a
            # fragmented message with an empty frame)...
            assert list(ws.recv_streaming()) == [*fragments[0], ""]
            assert list(ws.recv_streaming()) == [*fragments[1], b""]
            # ...and the app's fragmented message reaches the upstream, which echoes it whole.
            ws.send(['{"type":"conversation.item.create",', '"item":{"type":"message"}', "}"])
            assert json.loads(ws.recv()) == {"type": "conversation.item.create", "item": {"type": "message"}}
            assert ws.ping().wait(10)  # control frames between them keep working
            ws.send([b"\xff" * 70_000, b"\xfe" * 70_000])
            assert ws.recv() == b"\xff" * 70_000 + b"\xfe" * 70_000
    wait_for(lambda: read_capture(only_capture(captures)).state == "closed")
    got = read_capture(only_capture(captures))
    item = b'{"type":"conversation.item.create","item":{"type":"message"}}'
    big = b"\xff" * 70_000 + b"\xfe" * 70_000
    assert [(m.direction, m.opcode, m.data()) for m in got.messages] == [
        ("received", "text", b"Hello, world"),
        ("received", "binary", b"\x00\x01\x02\x03\x04"),
        ("sent", "text", item),
        ("received", "text", item),
        ("sent", "binary", big),
        ("received", "binary", big),
    ]
    assert (got.end["closed_by"], got.end["code"]) == ("client", 1000)
