"""pty-redir in Python: pump bytes between the local pty master and the SSH channel."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Callable

from . import asyncssh_compat
from .asyncssh_compat import asyncssh
from .flowdelay import FlowDelay
from .queues import (
    AUTO_MAX,
    AUTO_MIN,
    NOTSENT_AUTO,
    CoDel,
    FrameQueue,
    FrameSplitter,
    auto_notsent,
    notsent_bytes,
    set_notsent_lowat,
    tcp_delivery_rate,
    tcp_losses,
)

__all__ = ["RAW_PTY_MODES", "Bridge"]

# A cooked remote pty echoes the first LCP frames back (pppd: "Serial line is looped back")
# and turns 0x03 into SIGINT; ask sshd for a raw one.
RAW_PTY_MODES: dict[int, int] = {
    asyncssh.PTY_ECHO: 0,
    asyncssh.PTY_ECHOE: 0,
    asyncssh.PTY_ECHOK: 0,
    asyncssh.PTY_ECHONL: 0,
    asyncssh.PTY_ICANON: 0,
    asyncssh.PTY_ISIG: 0,
    asyncssh.PTY_IEXTEN: 0,
    asyncssh.PTY_OPOST: 0,
    asyncssh.PTY_ONLCR: 0,
    asyncssh.PTY_ICRNL: 0,
    asyncssh.PTY_INLCR: 0,
    asyncssh.PTY_IGNCR: 0,
    asyncssh.PTY_ISTRIP: 0,
    asyncssh.PTY_IXON: 0,
    asyncssh.PTY_IXOFF: 0,
    asyncssh.PTY_CS8: 1,
    asyncssh.PTY_PARENB: 0,
}

LOG = logging.getLogger("pppssh.daemon.bridge")  # into the daemon log
PPP_FLAG = 0x7E  # every HDLC-like PPP frame starts and ends with it
READ_CHUNK = 65536  # one read from the pty master
MERGE_LIMIT = 256 * 1024  # bytes merged into one channel write
PREAMBLE_LIMIT = 4096  # text kept from before the first frame (sudo/pppd errors)
RETUNE_EVERY = 0.1  # seconds between two looks at the delivery rate (tcp_notsent_lowat = auto)
QUEUE_LIMIT = 1024 * 1024  # the pump's own frame queue: beyond it, the pty waits (as before)


class Bridge(asyncssh.SSHClientSession[bytes]):
    """The SSH side of the pump: one session carrying the remote pppd's pty.

    Bytes from the channel go to the pty master; bytes read from the master go to the
    channel, many reads merged into one write. Each side pauses the other when its
    buffer fills: channel send window full -> stop reading the master; master full ->
    pause reading the channel (which closes the SSH window on the remote sender).
    """

    def __init__(self) -> None:
        """Start detached: bytes received before a pty is attached are held."""
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.master: int | None = None
        self._loop = asyncio.get_event_loop()
        self._outbuf = bytearray()  # channel -> pty, not yet written
        self._reading_master = False
        self._channel_blocked = False
        self._flush_pending = False
        self._in_socket_read = False  # inside the connection's data_received (see per_read)
        self.preamble = bytearray()  # what the remote printed before its first PPP frame
        self.first_frame = asyncio.Event()
        self.closed: asyncio.Future[int | None] = self._loop.create_future()
        self.master_closed: asyncio.Future[None] = self._loop.create_future()
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.bytes_from_remote = 0
        self.bytes_to_remote = 0
        self.close_reason: Exception | None = None
        # the pump's own queue towards the channel (send_limit(): off until asked)
        self._limit = 0
        self._queue: FrameQueue | None = None
        self._splitter = FrameSplitter()
        self._sock_fd = -1  # the SSH socket, to read how much it holds unsent
        self._watch_fd = -1  # a dup of it, watched for writable while it holds too much
        self._chan_full = False
        # per-flow delay control (delay_control(): off until asked)
        self._flowdelay: FlowDelay | None = None
        self._down_splitter = FrameSplitter()
        self._loss_sock: socket.socket | None = None
        self._rate_sock: socket.socket | None = None  # tcp_notsent_lowat = auto: the rate's
        self._retuned = -1e9  # when the auto limit was last looked at

    # ------------------------------------------------------------------ SSH side

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        """Keep the channel."""
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Remote pty output: PPP frames (or, before them, error text)."""
        self.bytes_from_remote += len(data)
        if not self.first_frame.is_set():
            at = data.find(PPP_FLAG)
            head = data if at < 0 else data[:at]
            room = PREAMBLE_LIMIT - len(self.preamble)
            if room > 0:
                self.preamble += head[:room]
            if at >= 0:
                self.first_frame.set()
        if self.master is None and len(self._outbuf) > 1 << 20:
            return  # nobody is listening yet; pppd retransmits what matters
        if self._flowdelay is not None:
            data = self._filter_down(data)
        self._outbuf += data
        # One pty write for all the packets of one socket read: asyncssh hands them over in
        # a row; the connection's data_received flushes when it returns (flush_per_read),
        # or, for data handed over any other way, the next turn of the loop does.
        if self._in_socket_read:
            return
        if not self._flush_pending and not self._channel_blocked:
            self._flush_pending = True
            self._loop.call_soon(self._merged_flush)

    def flush_per_read(self, conn: object) -> bool:
        """Write to the pty as soon as conn has handed over all packets of one socket read.

        Without this the write waits for the next turn of the event loop: one more epoll
        call and loop turn for every frame received. Only conn (an asyncio protocol) is
        changed: its data_received is wrapped. False, and nothing changed, if it has none.
        """

        def wrap(receive: Callable[..., None]) -> Callable[..., None]:
            """conn's own data_received, then one flush for all it handed over."""

            def data_received(data: bytes, *args: object) -> None:
                self._in_socket_read = True
                try:
                    receive(data, *args)
                finally:
                    self._in_socket_read = False
                if self._outbuf and not self._channel_blocked and not self._flush_pending:
                    self._flush_to_master()

            return data_received

        return asyncssh_compat.wrap_data_received(conn, wrap)

    def _merged_flush(self) -> None:
        """The flush data_received scheduled."""
        self._flush_pending = False
        self._flush_to_master()

    def exit_status_received(self, status: int) -> None:
        """Remember how the remote command ended."""
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        """Remember the signal that ended the remote command."""
        self.exit_signal = signal

    def pause_writing(self) -> None:
        """The SSH send window is full: stop reading the pty master (with the pump's own
        queue: stop taking from it)."""
        if self._queue is not None:
            self._chan_full = True
            return
        self._set_master_reader(False)

    def resume_writing(self) -> None:
        """Window open again: read the pty master (or send from the queue)."""
        if self._queue is not None:
            self._chan_full = False
            self._send_queued()
            return
        self._set_master_reader(True)

    # ------------------------------------------------------------------ the pump's queue

    def send_limit(self, limit: int, sock_fd: int, codel: bool = True) -> None:
        """Hold frames from the pty in the pump's own queue while the SSH socket has limit
        bytes or more unsent (its TCP_NOTSENT_LOWAT, set by the caller, wakes the pump when
        it has less): small frames go first and, with codel, bulk frames that waited too
        long are dropped. Call before attach(); limit 0 keeps the direct pump."""
        if limit == 0 or limit < NOTSENT_AUTO or sock_fd < 0:
            return
        if limit == NOTSENT_AUTO:  # AUTO_SECONDS of the socket's delivery rate, followed
            self._rate_sock = socket.socket(fileno=os.dup(sock_fd))
            limit = AUTO_MIN
        self._limit = limit
        self._sock_fd = sock_fd
        self._queue = FrameQueue(codel=CoDel() if codel else None)
        if self.chan is not None:
            high = AUTO_MAX if self._rate_sock is not None else limit
            self.chan.set_write_buffer_limits(high=high, low=high // 2)

    def delay_control(
        self,
        target: float,
        target_up: float = 0.0,
        sock_fd: int = -1,
        window_target: float = 0.0,
        window_target_up: float = 0.0,
    ) -> None:
        """Measure each TCP flow's queueing delay through the tunnel from its timestamps
        and drop its data frames CoDel's way while that stays above target seconds (flows
        coming down), target_up (flows going up) (pppssh.flowdelay), none while the SSH
        socket sock_fd (-1: unknown) recovers a loss; with window_target (flows coming down)
        and window_target_up (going up), narrow the windows their receivers advertise
        (pppssh.rwnd). Call before attach(); 0 leaves that alone."""
        if target > 0 or target_up > 0 or window_target > 0 or window_target_up > 0:
            losses = None
            if sock_fd >= 0:  # the SSH connection's TCP socket: its losses tell HOL from queue
                sock = self._loss_sock = socket.socket(fileno=os.dup(sock_fd))
                losses = functools.partial(tcp_losses, sock)
            self._flowdelay = FlowDelay(
                target, target_up, losses=losses, window_target=window_target,
                window_target_up=window_target_up,
            )  # fmt: skip

    def frames_dropped(self) -> int:
        """Frames the pump dropped: bulk ones its queue dropped, and those the delay control
        dropped either way."""
        dropped = self._queue.dropped if self._queue is not None else 0
        if self._flowdelay is not None:
            dropped += self._flowdelay.dropped_up + self._flowdelay.dropped_down
        return dropped

    @staticmethod
    def _split(splitter: FrameSplitter, data: bytes) -> list[bytes]:
        """The whole frames data completes; what has no flag in MERGE_LIMIT bytes is not PPP
        and passes on as it is."""
        frames = splitter.feed(data)
        if splitter.pending() > MERGE_LIMIT:
            frames.append(splitter.take_pending())
        return frames

    def _filter_down(self, data: bytes) -> bytes:
        """The frames of data (from the channel) the delay control keeps (the window clamp's
        ACKs narrowed)."""
        assert self._flowdelay is not None
        now = time.monotonic()
        down = self._flowdelay.down_frame
        frames = (down(f, now) for f in self._split(self._down_splitter, data))
        return b"".join(f for f in frames if f is not None)

    def _frames_up(self, data: bytes) -> list[bytes]:
        """The whole frames of data (from the pty) to send, after the delay control (and
        the window clamp)."""
        frames = self._split(self._splitter, data)
        if self._flowdelay is None or not self._flowdelay.acts_up:
            return frames
        now = time.monotonic()
        up = self._flowdelay.up_frame
        return [g for g in (up(f, now) for f in frames) if g is not None]

    def _queue_frames(self, data: bytes) -> None:
        """Put what was read from the pty in the queue as whole frames, then send."""
        assert self._queue is not None
        self._queue.put(self._frames_up(data), time.monotonic())
        if self._queue.size > QUEUE_LIMIT:
            self._set_master_reader(False)
        self._send_queued()

    def _send_queued(self) -> None:
        """Send from the queue as much as the socket has room for under the limit; when it
        has none, wait for it to become writable (fewer than limit bytes unsent)."""
        if self._queue is None or self.chan is None or self.closed.done():
            return
        if self._rate_sock is not None:
            self._retune(time.monotonic())
        while self._queue and not self._chan_full:
            room = self._limit - notsent_bytes(self._sock_fd)
            if room <= 0:
                self._watch_socket(True)
                return
            data = self._queue.take(room, time.monotonic())
            if data:
                self.bytes_to_remote += len(data)
                self.chan.write(data)
        self._watch_socket(False)
        if self._queue.size <= QUEUE_LIMIT // 2 and not self.master_closed.done():
            self._set_master_reader(True)

    def _retune(self, now: float) -> None:
        """tcp_notsent_lowat = auto: every RETUNE_EVERY seconds, the limit for the socket's
        delivery rate now (queues.auto_notsent); applied when it moved by a quarter."""
        if now - self._retuned < RETUNE_EVERY or self._rate_sock is None:
            return
        self._retuned = now
        limit = auto_notsent(tcp_delivery_rate(self._rate_sock))
        moved = 4 * abs(limit - self._limit) >= self._limit
        if moved and set_notsent_lowat(self._rate_sock, limit):
            self._limit = limit

    def _watch_socket(self, on: bool) -> None:
        """Watch (a dup of) the SSH socket for writable, or stop."""
        if on and self._watch_fd < 0:
            self._watch_fd = os.dup(self._sock_fd)
            self._loop.add_writer(self._watch_fd, self._socket_writable)
        elif not on and self._watch_fd >= 0:
            self._loop.remove_writer(self._watch_fd)
            os.close(self._watch_fd)
            self._watch_fd = -1

    def _socket_writable(self) -> None:
        """The socket holds fewer than limit bytes unsent: send more."""
        self._watch_socket(False)
        self._send_queued()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone (remote exit, our close, or a dead connection).

        What it delivered before it closed still goes to the pty (the peer's last LCP
        Terminate-Ack may be in it); the writer stays until that is written or detach().
        """
        self.close_reason = exc
        if self._flowdelay is not None:
            LOG.info("delay control: %s", self._flowdelay.summary())
        for sock in (self._loss_sock, self._rate_sock):
            if sock is not None:
                sock.close()
        self._loss_sock = self._rate_sock = None
        self._set_master_reader(False)
        self._watch_socket(False)
        if not self.closed.done():
            self.closed.set_result(self.exit_status)

    # ------------------------------------------------------------------ pty side

    def attach(self, master: int) -> None:
        """Start pumping with the local pty master (non-blocking)."""
        os.set_blocking(master, False)
        self.master = master
        if self.chan is None or self.closed.done():
            return
        self._flush_to_master()
        self._set_master_reader(True)

    def detach(self) -> None:
        """Stop touching the pty master (before it is closed)."""
        self._set_master_reader(False)
        self._watch_socket(False)
        if self.master is not None:
            self._loop.remove_writer(self.master)
        self.master = None

    def _set_master_reader(self, on: bool) -> None:
        """Watch, or stop watching, the master for readable data."""
        if self.master is None or on == self._reading_master:
            return
        if on and self.closed.done():
            return
        if on:
            self._loop.add_reader(self.master, self._read_master)
        else:
            self._loop.remove_reader(self.master)
        self._reading_master = on

    def _read_master(self) -> None:
        """Read the master until it is empty, send it all as one channel write."""
        assert self.master is not None and self.chan is not None
        chunks: list[bytes] = []
        size = 0
        while size < MERGE_LIMIT:
            try:
                chunk = os.read(self.master, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:  # the slave side closed: local pppd is gone
                    self._master_gone()
                    break
                raise
            if not chunk:
                self._master_gone()
                break
            chunks.append(chunk)
            size += len(chunk)
        if chunks:
            data = b"".join(chunks)
            if self._queue is not None:
                self._queue_frames(data)
                return
            if self._flowdelay is not None and self._flowdelay.acts_up:
                data = b"".join(self._frames_up(data))
                if not data:
                    return
            self.bytes_to_remote += len(data)
            self.chan.write(data)

    def _master_gone(self) -> None:
        """The local pppd closed its tty."""
        self._set_master_reader(False)
        if not self.master_closed.done():
            self.master_closed.set_result(None)

    def _flush_to_master(self) -> None:
        """Write what the channel gave us; if the master is full, pause the channel."""
        if self.master is None:
            return
        while self._outbuf:
            try:
                n = os.write(self.master, self._outbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self._outbuf.clear()
                    self._master_gone()
                    return
                raise
            del self._outbuf[:n]
            if self._outbuf:
                break  # a short write: the pty is full, the next write would say so (EAGAIN)
        blocked = bool(self._outbuf)
        if blocked != self._channel_blocked and self.chan is not None:
            self._channel_blocked = blocked
            if blocked:
                self.chan.pause_reading()
                self._loop.add_writer(self.master, self._flush_to_master)
            else:
                self._loop.remove_writer(self.master)
                if not self.closed.done():
                    self.chan.resume_reading()

    # ------------------------------------------------------------------ reporting

    def preamble_text(self) -> str:
        """What the remote printed before PPP started, as one readable line."""
        text = bytes(self.preamble).decode("utf-8", errors="replace")
        lines = [" ".join(line.split()) for line in text.replace("\r", "\n").split("\n")]
        return " | ".join(line for line in lines if line)

    def close(self) -> None:
        """Close the channel: sshd hangs up the remote pty, so pppd gets SIGHUP."""
        self.detach()
        if self.chan is not None:
            with contextlib.suppress(Exception):
                self.chan.close()

    def describe_end(self) -> str:
        """How the remote command ended, for error messages."""
        if self.exit_signal:
            return f"killed by SIG{self.exit_signal}"
        if self.exit_status is not None:
            return f"exit status {self.exit_status}"
        if self.close_reason is not None:
            return f"connection lost: {self.close_reason}"
        return "channel closed"
