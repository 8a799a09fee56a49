"""The pump's own frame queue (Bridge.send_limit) between a real pty and a fake channel: every
frame arrives whole and in size order, and a full channel or socket holds frames back."""

from __future__ import annotations

import asyncio
import os
import pty
import socket
import tty

from pppssh.bridge import Bridge


class FakeChannel:
    """What the Bridge calls on its channel, recording writes."""

    def __init__(self) -> None:
        """Nothing written yet."""
        self.written: list[bytes] = []
        self.limits: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        """Record one channel write."""
        self.written.append(data)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        """Record the limits."""
        self.limits = (high, low)

    def pause_reading(self) -> None:
        """Not used here."""

    def resume_reading(self) -> None:
        """Not used here."""


def frame(size: int, fill: bytes) -> bytes:
    """A frame of size bytes ending with its flag."""
    return fill * (size - 1) + b"~"


async def pump(frames: bytes, chan_full: bool = False) -> tuple[Bridge, FakeChannel]:
    """Write frames into a pty's slave, let a queued Bridge read the master, return both."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    a, b = socket.socketpair()  # a stand-in socket: SIOCOUTQNSD says 0, room is the limit
    bridge = Bridge()
    chan = FakeChannel()
    bridge.connection_made(chan)  # type: ignore[arg-type]
    try:
        bridge.send_limit(16384, a.fileno(), codel=False)
        if chan_full:
            bridge.pause_writing()
        bridge.attach(master)
        os.write(slave, frames)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if b"".join(chan.written) == frames or (chan_full and bridge._queue):
                break
    finally:
        bridge.detach()
        os.close(master)
        os.close(slave)
        a.close()
        b.close()
    return bridge, chan


def test_queued_pump_keeps_every_frame_whole() -> None:
    frames = b"".join(frame(n, bytes([65 + i % 26])) for i, n in enumerate([1400, 60, 900, 3]))
    bridge, chan = asyncio.run(pump(frames))
    assert chan.limits == (16384, 8192)
    sent = b"".join(chan.written)
    assert sorted(sent.split(b"~")) == sorted(frames.split(b"~"))  # the same frames
    assert len(sent) == len(frames) and bridge.bytes_to_remote == len(frames)
    assert bridge.frames_dropped() == 0


def test_small_frames_overtake_bulk_waiting_in_the_queue() -> None:
    bulk, ack = frame(1400, b"B"), frame(60, b"a")
    bridge, chan = asyncio.run(pump(bulk + ack, chan_full=True))
    assert chan.written == []  # the channel is full: the frames wait in the pump
    assert bridge._queue is not None and len(bridge._queue) == 2
    bridge._chan_full = False
    assert bridge._queue.take(1 << 16, 0.0) == ack + bulk


def test_without_a_limit_the_pump_is_the_direct_one() -> None:
    async def made() -> Bridge:
        """A bridge given limit 0."""
        bridge = Bridge()
        bridge.send_limit(0, 5)
        return bridge

    bridge = asyncio.run(made())
    assert bridge._queue is None and bridge.frames_dropped() == 0
