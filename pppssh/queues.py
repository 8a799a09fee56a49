"""Where pppssh holds or allows bytes on their way through the tunnel, and what it decides.

The SSH socket: its congestion control (TCP_CONGESTION) and how much it may hold unsent
(TCP_NOTSENT_LOWAT, and SIOCOUTQNSD to read it). The SSH window pppssh grants the remote
sshd: sized to the path's bandwidth-delay product when the site gives its rate. The pump's
own queue of PPP frames towards the channel: small frames (TCP ACKs, pings, LCP) ahead of
bulk, and bulk frames that waited longer than a target dropped, CoDel's way (RFC 8289), so
that the inner TCP slows down instead of filling the tunnel. The frame splitter, the
classifier, the queue and CoDel are pure; the socket functions touch one socket only.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CoDel",
    "FrameQueue",
    "FrameSplitter",
    "WindowExtreme",
    "available_congestion",
    "channel_window",
    "congestion_note",
    "is_bulk",
    "notsent_bytes",
    "set_congestion",
    "set_notsent_lowat",
    "set_pacing",
    "tcp_rtt",
]

PPP_FLAG = 0x7E
BULK_FRAME = 256  # bytes on the wire (escaped, with flag): larger frames are bulk
WINDOW_MAX = 2 * 1024 * 1024  # OpenSSH's own window: what pppssh grants when the rate is unknown
WINDOW_MIN = 16 * 1024  # a few of sshd's packets (one per ~4 KB read of its pty)
WINDOW_BDPS = 2.0  # the window in bandwidth-delay products (asyncssh adjusts at half)
CODEL_TARGET = 0.005  # seconds a bulk frame may wait in the pump's queue before CoDel acts
CODEL_INTERVAL = 0.100  # seconds above target before the first drop (a WAN's RTT)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # bytes per second
PACING_SHARE = 0.95  # of the site's bandwidth: the WAN's queue stays short
SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the send queue not yet sent
_TCPI_RTT = struct.Struct("=68xI")  # struct tcp_info: 8 bytes of u8, 15 u32, then tcpi_rtt (us)
_TCPI_LOSSES = struct.Struct("=100xI120xI")  # tcpi_total_retrans, tcpi_rcv_ooopack (5.4+)
_TCPI_DELIVERY = struct.Struct("=160xQ")  # tcpi_delivery_rate, bytes/s (4.9+)
NOTSENT_AUTO = -1  # tcp_notsent_lowat = auto: AUTO_SECONDS of the measured rate
AUTO_SECONDS = 0.004  # the unsent bytes allowed: this long at the delivery rate...
AUTO_MIN, AUTO_MAX = 8192, 256 * 1024  # ...within these bounds
AVAILABLE = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


# ---------------------------------------------------------------- the SSH socket


def available_congestion(name: str, proc: Path = AVAILABLE, modules: Path | None = None) -> bool:
    """Whether this kernel offers congestion control name: loaded, or a tcp_NAME module."""
    try:
        if name in proc.read_text().split():
            return True
    except OSError:
        pass
    where = modules or Path("/lib/modules") / os.uname().release / "kernel/net/ipv4"
    return any(where.glob(f"tcp_{name}.ko*"))


def congestion_note(name: str, proc: Path = AVAILABLE, modules: Path | None = None) -> str:
    """For `pppssh check`: which congestion control the SSH socket will get, in words."""
    try:
        default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        default = "unknown"
    if not name:
        return f"the system's default, {default} (tcp_congestion = default)"
    if available_congestion(name, proc, modules):
        return name
    return f"{name} is not in this kernel: the system's default, {default}"


def set_congestion(sock: socket.socket, name: str) -> str | None:
    """Give sock congestion control name if the kernel has it; the one in effect after
    (None when the socket has none, e.g. not TCP). Never raises: the default stays."""
    try:
        if name:  # not in this kernel: OSError, and the system's default stays
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode())
        got = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16)
    except OSError:
        return None
    return got.split(b"\0", 1)[0].decode("ascii", "replace")


def set_notsent_lowat(sock: socket.socket, limit: int) -> bool:
    """TCP_NOTSENT_LOWAT: sock reports writable only while fewer than limit bytes wait
    unsent. False when the socket does not take it."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, limit)
    except OSError:
        return False
    return True


def set_pacing(sock: socket.socket, mbit: float) -> bool:
    """Pace sock at PACING_SHARE of mbit Mbit/s (SO_MAX_PACING_RATE, TCP's own pacing);
    False when it does not take it."""
    rate = int(mbit * 1e6 / 8 * PACING_SHARE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, min(rate, 2**32 - 1))
    except OSError:
        return False
    return True


def notsent_bytes(fd: int) -> int:
    """Bytes in the socket's send queue not yet sent (SIOCOUTQNSD); 0 if it cannot tell."""
    try:
        got = fcntl.ioctl(fd, SIOCOUTQNSD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", got)[0])


def _tcp_info(sock: socket.socket, layout: struct.Struct) -> tuple[int, ...] | None:
    """The fields of layout from a TCP socket's TCP_INFO; None when it has none or this
    kernel's struct tcp_info is shorter."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, layout.size)
    except OSError:
        return None
    return layout.unpack(info) if len(info) >= layout.size else None


def tcp_rtt(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT of a TCP socket in seconds (TCP_INFO), None if unknown."""
    got = _tcp_info(sock, _TCPI_RTT)
    return got[0] / 1e6 if got and got[0] else None


def tcp_delivery_rate(sock: socket.socket) -> int | None:
    """The kernel's latest delivery rate of a TCP socket in bytes/s (TCP_INFO), None if
    unknown."""
    got = _tcp_info(sock, _TCPI_DELIVERY)
    return got[0] if got and got[0] else None


def auto_notsent(rate: int | None) -> int:
    """The unsent bytes tcp_notsent_lowat = auto allows at rate bytes/s: AUTO_SECONDS of it
    within [AUTO_MIN, AUTO_MAX] (AUTO_MIN while the rate is unknown)."""
    if not rate:
        return AUTO_MIN
    return max(AUTO_MIN, min(AUTO_MAX, int(rate * AUTO_SECONDS)))


def tcp_losses(sock: socket.socket) -> int | None:
    """Segments a TCP connection lost either way, as counters that grow: its
    retransmissions plus the out-of-order segments it received (a hole the peer must fill);
    None when the kernel does not tell (before 5.4, or not TCP)."""
    got = _tcp_info(sock, _TCPI_LOSSES)
    return sum(got) if got is not None else None


def channel_window(mbit: float, rtt: float | None) -> int:
    """The SSH window to grant: WINDOW_BDPS bandwidth-delay products of a path of mbit
    Mbit/s and rtt seconds, within [WINDOW_MIN, WINDOW_MAX]; WINDOW_MAX when either is
    unknown (0 or None)."""
    if not mbit or not rtt or not math.isfinite(mbit * rtt):
        return WINDOW_MAX
    bdp = mbit * 1e6 / 8 * rtt
    return max(WINDOW_MIN, min(WINDOW_MAX, math.ceil(WINDOW_BDPS * bdp)))


# ---------------------------------------------------------------- PPP frames in the pump


class FrameSplitter:
    """Cut the HDLC-like byte stream of a pty into whole frames, each ending with its flag
    (0x7E). A frame's first flag, if the sender put one, stays with the frame before it as
    an empty frame's end; bytes after the last flag wait for the next feed."""

    def __init__(self) -> None:
        """Nothing held."""
        self._rest = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole frames data completes, each with its closing flag; flags alone (an
        empty frame between two flags) come out as b"~" and can go with any neighbour."""
        self._rest += data
        end = self._rest.rfind(PPP_FLAG)
        if end < 0:
            return []
        whole = bytes(self._rest[: end + 1])
        del self._rest[: end + 1]
        frames = []
        start = 0
        while start < len(whole):
            stop = whole.index(PPP_FLAG, start)
            frames.append(whole[start : stop + 1])
            start = stop + 1
        return frames

    def pending(self) -> int:
        """Bytes held after the last flag (a frame still arriving)."""
        return len(self._rest)

    def take_pending(self) -> bytes:
        """What is held, handed over as it is (the stream is not PPP, or it ended)."""
        data = bytes(self._rest)
        self._rest.clear()
        return data


class WindowExtreme:
    """The smallest (or, largest: the largest) sample of the last `window` seconds, kept in
    tenths of it."""

    def __init__(self, window: float, largest: bool = False) -> None:
        """Nothing seen yet."""
        self.slot = window / 10
        self.largest = largest
        self._best: list[tuple[int, float]] = []  # (slot number, best in it), in order

    def add(self, value: float, now: float) -> float:
        """Take value seen at now; the best of the window after it."""
        slot = int(now / self.slot)
        best = self._best
        if best and best[-1][0] == slot:
            if (value > best[-1][1]) if self.largest else (value < best[-1][1]):
                best[-1] = (slot, value)
        else:
            best.append((slot, value))
            while best[0][0] <= slot - 10:
                del best[0]
        values = (b for _, b in best)
        return max(values) if self.largest else min(values)


def is_bulk(frame: bytes) -> bool:
    """A frame that may wait behind small ones and be dropped: larger than BULK_FRAME bytes.
    TCP ACKs, pings, DNS, keystrokes and every LCP/IPCP frame are smaller."""
    return len(frame) > BULK_FRAME


@dataclass
class CoDel:
    """CoDel's drop decision (RFC 8289, section 5) for one queue, at dequeue time.

    drop(sojourn, now, backlog) says whether the frame just dequeued should be dropped,
    given how long it waited and how many bytes are still queued behind it."""

    target: float = CODEL_TARGET
    interval: float = CODEL_INTERVAL
    mtu: int = 1500
    first_above: float = 0.0
    dropping: bool = False
    drop_next: float = 0.0
    count: int = 0
    last_count: int = 0
    drops: int = 0

    def _control_law(self, t: float) -> float:
        """The next drop time: interval / sqrt(count) after t."""
        return t + self.interval / math.sqrt(max(1, self.count))

    def _ok_to_drop(self, sojourn: float, now: float, backlog: int) -> bool:
        """Whether the delay has stayed above target for a whole interval."""
        if sojourn < self.target or backlog <= self.mtu:
            self.first_above = 0.0
            return False
        if self.first_above == 0.0:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def drop(self, sojourn: float, now: float, backlog: int) -> bool:
        """Whether to drop the frame that waited sojourn seconds (see the class)."""
        ok = self._ok_to_drop(sojourn, now, backlog)
        if self.dropping:
            if not ok:
                self.dropping = False
                return False
            if now >= self.drop_next:
                self.count += 1
                self.drop_next = self._control_law(self.drop_next)
                self.drops += 1
                return True
            return False
        if not ok:
            return False
        self.dropping = True
        delta = self.count - self.last_count
        recent = now - self.drop_next < 16 * self.interval
        self.count = delta if delta > 1 and recent else 1
        self.last_count = self.count
        self.drop_next = self._control_law(now)
        self.drops += 1
        return True


@dataclass
class FrameQueue:
    """The pump's queue towards the channel: small frames first, bulk frames in order behind
    them, each bulk frame timed from its arrival and dropped by CoDel when it waited too
    long. take(room, now) gives the bytes to send next."""

    codel: CoDel | None = field(default_factory=CoDel)
    small: deque[bytes] = field(default_factory=deque)
    bulk: deque[tuple[float, bytes]] = field(default_factory=deque)
    size: int = 0
    dropped: int = 0

    def put(self, frames: list[bytes], now: float) -> None:
        """Queue frames that arrived at now."""
        for frame in frames:
            if is_bulk(frame):
                self.bulk.append((now, frame))
            else:
                self.small.append(frame)
            self.size += len(frame)

    def take(self, room: int, now: float) -> bytes:
        """Up to about room bytes to send (at least one frame if any is queued): all small
        frames first, then bulk frames in order, leaving out those CoDel drops (each frame
        ends with its flag, so the stream stays whole)."""
        out: list[bytes] = []
        taken = 0
        while self.small and (taken < room or not out):
            frame = self.small.popleft()
            self.size -= len(frame)
            out.append(frame)
            taken += len(frame)
        while self.bulk and (taken < room or not out):
            since, frame = self.bulk.popleft()
            self.size -= len(frame)
            if self.codel is not None and self.codel.drop(now - since, now, self.size):
                self.dropped += 1
                continue
            out.append(frame)
            taken += len(frame)
        return b"".join(out)

    def oldest(self) -> float | None:
        """When the oldest bulk frame arrived (None: no bulk frame waits)."""
        return self.bulk[0][0] if self.bulk else None

    def __len__(self) -> int:
        """Frames queued."""
        return len(self.small) + len(self.bulk)
