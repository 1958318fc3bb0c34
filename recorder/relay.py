"""A frame-level WebSocket relay: websockets' sans-I/O protocols driven from asyncio
``Protocol`` callbacks, with no per-message task, future or queue.

Each leg of a relayed session is a :class:`Leg`: bytes from its transport go into a
websockets ``ServerProtocol`` (the app's leg) or ``ClientProtocol`` (the upstream's),
and the frames that come out go straight to the other leg's protocol and transport.

- Every complete message is handed to the :class:`~recorder.session.SessionRecorder`
  (one write to the OS) before its last frame is forwarded. A fragmented message is
  forwarded frame by frame, and recorded whole when its last frame comes.
- Backpressure: when a leg's transport has more buffered than its high-water mark, the
  other leg stops reading until it drains, so a slow reader holds up the sender, not
  the proxy's memory.
- Ping frames are answered on the leg they came in on (as websockets does), not
  forwarded; each leg is pinged every 20 s and failed (1011) if no pong comes in 20 s.
- Close: the first leg to leave the open state decides how the session ended
  (``who_closed``), and that close is mirrored on the other leg; an abnormal close
  (1006) is mirrored as an abrupt drop. The session ends when both connections are gone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from websockets.frames import OP_BINARY, OP_CONT, OP_PONG, OP_TEXT
from websockets.protocol import OPEN, Protocol

from .session import SessionRecorder, now_ns, warn, who_closed

CLOSE_TIMEOUT = 10.0  # seconds a leg may take to finish its closing handshake
PING_INTERVAL = 20.0  # seconds between keepalive pings, and how long a pong may take
# Bytes read at a time: small enough that what one read brought reaches the other side
# while the next comes.
READ_SIZE = 64 * 1024


def read_buffer() -> memoryview:
    """A buffer for legs to read into. Legs on one event loop may share one: what is read
    into it is handed to the protocol (which copies it) before the next read."""
    return memoryview(bytearray(READ_SIZE))


class Leg(asyncio.BufferedProtocol):
    """One connection of a relayed session: its transport feeds the sans-I/O protocol ``ws``.

    ``side`` is who is at the far end (``"client"``: the app, ``"server"``: the upstream)
    and ``direction`` the recording direction of the messages it receives; it reads into
    ``buffer`` (see :func:`read_buffer`), with no allocation per read. Until
    :meth:`Session.link` joins it to its peer, the frames it receives wait in
    ``pending`` and its first event (the handshake request or response) goes to
    ``on_handshake``.
    """

    def __init__(self, ws: Protocol, side: str, direction: int, buffer: memoryview) -> None:
        self.ws = ws
        self.side = side
        self.direction = direction
        self.transport: Any = None  # an asyncio.Transport once connected
        self.peer: Leg | None = None
        self.session: Session | None = None
        self.recorder: SessionRecorder | None = None
        self.on_handshake: Callable[[Leg, Any], None] | None = None
        self.on_lost: Callable[[Leg], None] | None = None
        self.pending: list[Any] = []
        self.lost = False
        self._fragments: list[bytes] = []
        self._text = False
        self.paused = False  # reading paused because the peer's writes are backed up
        self._held = False  # reading paused by the handshake
        self._timers: list[asyncio.TimerHandle] = []
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping: bytes | None = None
        self._buffer = buffer

    # -- asyncio.BufferedProtocol callbacks -----------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the network: into the protocol, its frames relayed (or kept until
        the session is linked)."""
        ws = self.ws
        # websockets' reader appends what it gets to a bytearray, which takes any buffer.
        ws.receive_data(data)  # type: ignore[arg-type]
        events = ws.events_received()
        self.flush()
        peer = self.peer
        if peer is not None:
            relay = self.relay
            for event in events:
                relay(event)
            # What one read brought is forwarded in one write: a system call per frame
            # cost more than the rest of the relay. Each message was recorded already.
            peer.flush()
            if ws.state is not OPEN:
                self._closing()
        elif events:
            self._early(events)

    def eof_received(self) -> None:
        self.ws.receive_eof()
        events = self.ws.events_received()  # a handshake response whose body ends at EOF
        self.flush()
        if self.peer is not None:
            self._closing()
        elif events:
            self._early(events)
        # Returning None closes the transport: the WebSocket closing handshake is over or
        # failed, so nothing more is written after EOF.

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent: the protocol state becomes CLOSED
        self.ws.data_to_send()
        self.lost = True
        for timer in self._timers:
            timer.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.peer is not None:
            self._closing()
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer._pause(True)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._pause(False)

    # -- relaying -------------------------------------------------------------------

    def relay(self, frame: Any) -> None:
        """Forward one frame received on this leg to the peer; record each message
        whole before its last frame goes."""
        opcode = frame.opcode
        if opcode is OP_TEXT or opcode is OP_BINARY:
            if frame.fin:
                if self._record(opcode is OP_TEXT, frame.data):
                    self.peer.forward(opcode, frame.data, True)  # type: ignore[union-attr]
                return
            self._fragments = [frame.data]
            self._text = opcode is OP_TEXT
        elif opcode is OP_CONT:
            self._fragments.append(frame.data)
            if frame.fin:
                message, self._fragments = b"".join(self._fragments), []
                if not self._record(self._text, message):
                    return
        else:
            if opcode is OP_PONG and frame.data == self._ping:
                self._ping = None
            return  # pings are answered by the protocol; a close is seen by _closing
        self.peer.forward(opcode, frame.data, frame.fin)  # type: ignore[union-attr]

    def forward(self, opcode: Any, data: bytes, fin: bool) -> None:
        """Queue one frame of a message on this leg (dropped once it is closing); the
        next :meth:`flush` writes it."""
        ws = self.ws
        if ws.state is not OPEN:
            return
        if opcode is OP_TEXT:
            ws.send_text(data, fin)
        elif opcode is OP_BINARY:
            ws.send_binary(data, fin)
        else:
            ws.send_continuation(data, fin)

    def _record(self, text: bool, message: bytes) -> bool:
        """Hand a complete message to the recorder; False if it must not be forwarded
        (a text message that is not UTF-8 fails this leg with 1007, as websockets does)."""
        if text and not message.isascii():
            try:
                message.decode()
            except UnicodeDecodeError as e:
                self.ws.fail(1007, f"{e.reason} at position {e.start}")
                self.flush()
                return False
        recorder = self.recorder
        assert recorder is not None
        try:
            recorder.message(self.direction, message, now_ns(), text=text)
        except Exception as e:  # noqa: BLE001
            # SessionRecorder keeps any payload; should it fail all the same, the relay
            # goes on and the recording has a gap, said once.
            warn(f"session {recorder.session_id}: a message could not be recorded ({type(e).__name__})")
        return True

    def flush(self) -> None:
        """Write what the protocol has to send: frames, then maybe the end of the stream."""
        transport = self.transport
        chunks = self.ws.data_to_send()
        if not chunks or transport is None or transport.is_closing():
            pass
        elif chunks[-1]:
            transport.writelines(chunks)
        else:  # the protocol ends the stream after what it sends
            if len(chunks) > 1:
                transport.writelines(chunks[:-1])
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):  # uvloop may raise RuntimeError
                    pass
            else:
                transport.close()
        if self._close_timer is None and self.ws.close_expected() and not self.lost:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def close(self, code: int, reason: str = "") -> None:
        """Close this leg the way its peer was closed: with a close frame, or for 1006
        (an abnormal close) by dropping the connection."""
        if self.lost:
            return
        if code == 1006:
            self.abort()
            return
        if self.ws.state is OPEN:
            if code == 1005:
                self.ws.send_close()
            else:
                self.ws.send_close(code, reason)
        self.flush()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def _pause(self, paused: bool) -> None:
        self.paused = paused
        self._reading()

    def hold(self, held: bool) -> None:
        """Stop (or go on) reading while the handshake is under way."""
        self._held = held
        self._reading()

    def _reading(self) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        if self.paused or self._held:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _early(self, events: list[Any]) -> None:
        if self.on_handshake is not None:
            on_handshake, self.on_handshake = self.on_handshake, None
            on_handshake(self, events[0])
            events = events[1:]
        self.pending += events

    def _closing(self) -> None:
        if self.session is not None:
            self.session.closing(self)

    # -- keepalive ------------------------------------------------------------------

    def keepalive(self) -> None:
        """Ping this leg every ``PING_INTERVAL`` seconds; fail it (1011) if the previous
        ping got no pong by the next one."""
        if self.lost or self.ws.state is not OPEN:
            return
        if self._ping is not None:
            self.ws.fail(1011, "keepalive ping timeout")
            self.flush()
            self._closing()
            return
        self._ping = os.urandom(4)
        self.ws.send_ping(self._ping)
        self.flush()
        self.ping_later()

    def ping_later(self) -> None:
        """Schedule the next keepalive ping."""
        self._timers = [asyncio.get_running_loop().call_later(PING_INTERVAL, self.keepalive)]


class Session:
    """Two linked legs and their recorder: decides how the session ended, mirrors the
    close, and writes the end record once both connections are gone."""

    def __init__(
        self,
        recorder: SessionRecorder,
        app: Leg,
        upstream: Leg,
        *,
        log: Callable[[str], None],
        on_end: Callable[[Session], None] = lambda session: None,
    ) -> None:
        self.recorder = recorder
        self.app = app
        self.upstream = upstream
        self.log = log
        self.on_end = on_end
        self.ending: tuple[str, int, str] | None = None
        self.ended = asyncio.get_running_loop().create_future()

    def link(self) -> None:
        """Start relaying: join the legs, relay what each received meanwhile, start reading."""
        for leg, peer in ((self.app, self.upstream), (self.upstream, self.app)):
            leg.peer, leg.session, leg.recorder = peer, self, self.recorder
        for leg, peer in ((self.upstream, self.app), (self.app, self.upstream)):
            pending, leg.pending = leg.pending, []
            for event in pending:
                leg.relay(event)
            peer.flush()
        for leg in (self.app, self.upstream):
            if leg.lost or leg.ws.state is not OPEN:
                self.closing(leg)
            else:
                leg.hold(False)
                leg.ping_later()

    def closing(self, leg: Leg) -> None:
        """``leg`` left the open state (or its connection went): the first time, that is
        how the session ended, mirrored on the other leg; the end comes when both are gone."""
        if self.ending is None:
            self.ending = who_closed(leg.ws, peer=leg.side, local="rtcap")
            _, code, reason = self.ending
            other = self.upstream if leg is self.app else self.app
            other.close(code, reason)
        if self.app.lost and self.upstream.lost and not self.ended.done():
            self._end()

    def stop(self) -> None:
        """The proxy is stopping: close the app's leg with 1001 (going away), mirrored upstream."""
        self.app.close(1001)
        self.closing(self.app)

    def _end(self) -> None:
        recorder = self.recorder
        closed_by, code, reason = self.ending or ("rtcap", 1006, "")
        recorder.end(now_ns(), closed_by=closed_by, code=code, reason=reason)
        said = f"{code}: {recorder.scrubber.scrub_text(reason)[0]}" if reason else f"{code}"
        self.log(f"session {recorder.session_id} closed by {closed_by} ({said}), {recorder.seq} messages")
        self.ended.set_result(None)
        self.on_end(self)

    def buffered(self) -> int:
        """Bytes this session holds: both transports' write buffers and any fragments of
        a message still coming."""
        total = 0
        for leg in (self.app, self.upstream):
            if leg.transport is not None and not leg.lost:
                total += leg.transport.get_write_buffer_size()
            total += sum(len(fragment) for fragment in leg._fragments)
        return total
