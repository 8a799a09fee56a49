"""The queue each TCP flow builds through the tunnel, measured from the flow's own timestamps,
and the frames the pump drops to keep it short (pure: no I/O, the caller gives the time).

The pump sees every PPP frame both ways. A TCP segment with the timestamp option (RFC 7323,
on by default in Linux, the BSDs and macOS) tells, without any help from the far end:

- for a flow sending up (this side's workstation is the sender): the round trip through
  everything after the pump, from when a TSval first went up to when the far end's ACK
  echoes it (TSecr) on the way down: the pump's queue, the SSH socket, the WAN, the remote
  side, and back;
- for a flow sending down (the far side's workstation is the sender): the one-way delay
  from the sender's clock (TSval) to this pump, up to a constant offset: its rise over the
  flow's smallest (kept from its first packet) is the queue the flow built on the way down
  (the remote pty, sshd, the WAN). The sender's clock must tick in milliseconds (Linux, the
  BSDs, macOS, Windows); a flow whose clock does not (checked over its first second, within
  a factor of two) is left alone.

Either way the queueing delay is the sample minus the flow's minimum over the last
MIN_WINDOW seconds. When it stays above the target for an interval, CoDel's control law
(RFC 8289) drops one of the flow's data frames, then more, faster, until it falls: the
sender slows down instead of filling the queues pppssh cannot reach (the remote pty, the
remote sshd's buffer and socket). Pure ACKs, non-TCP packets, TCP without timestamps, and
every LCP/IPCP frame pass untouched; so does any frame that cannot be parsed. Dropping or
reordering whole frames needs VJ header compression off (`novj`): the plan sees to that.

What a hostile peer can do with it: send frames whose timestamps make pppssh drop frames of
the same flow (which the peer could drop itself anyway), or many flows: at most MAX_FLOWS
are tracked, the least recently seen forgotten first.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .queues import CoDel, WindowExtreme
from .rwnd import ACK, MIN_WINDOW, SYN, WindowClamp

__all__ = [
    "FlowDelay",
    "Segment",
    "WindowMin",
    "parse_frame",
]

PPP_FLAG, PPP_ESC = 0x7E, 0x7D
PROTO_IP, PROTO_VJ_UNCOMPRESSED, PROTO_IPV6 = 0x0021, 0x002F, 0x0057
HEAD = 4 + 40 + 60  # address/control and protocol, the largest IP header we read, TCP's
CLOCK_CHECK = 1.0  # seconds of a flow's first packets that tell whether its clock is in ms
CLOCK_RANGE = (0.5, 2.0)  # ticks per ms a ms clock may seem to have over that second: a
# queue that grows or drains by up to half a second in it moves the ratio that far; the
# clocks it must tell apart tick 1000 times slower or faster (10 Hz, 100 Hz, 250 Hz, us)
SAMPLE_AGE = 1.0  # seconds after which a flow's last delay sample no longer counts
TSVALS_KEPT = 512  # TSvals of a flow sending up remembered until an ACK echoes one
MAX_FLOWS = 1024
CODEL_INTERVAL = 0.100  # seconds above target before the first drop (about one WAN RTT)
NO_BACKLOG = 1 << 30  # CoDel's backlog test does not apply: the queue is not ours
HOL_POLL = 0.010  # seconds between two looks at the SSH socket's loss counters
HOL_HOLD = 1.0  # seconds without drops after the SSH connection lost a segment

_TS = struct.Struct(">II")


@dataclass(frozen=True)
class Segment:
    """What the pump needs of one TCP segment: its flow (source address and port, then the
    destination's), payload bytes, and its timestamps (None without the option)."""

    flow: tuple[bytes, bytes, int, int]
    payload: int
    tsval: int | None
    tsecr: int | None
    flags: int = 0  # TCP's flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10)
    ack: int = 0  # the acknowledgment number
    window: int = 0  # the window field as sent (before its scale)
    wscale: int | None = None  # the window scale option's shift (a SYN's), None without
    at: int = -1  # where the TCP header starts in the frame's unescaped contents

    def reverse(self) -> tuple[bytes, bytes, int, int]:
        """The flow of the segments that answer this one."""
        src, dst, sport, dport = self.flow
        return (dst, src, dport, sport)


def _unescape(frame: bytes, limit: int) -> bytes:
    """The first limit bytes of an HDLC-like frame's contents: flags gone, 0x7D escapes
    undone."""
    head = frame[: 2 * limit + 2]
    if PPP_ESC not in head:  # nothing escaped (asyncmap 0 and no 0x7D/0x7E byte): a slice
        return head.strip(b"~")[:limit]
    out = bytearray()
    i, n = 0, len(frame)
    while i < n and len(out) < limit:
        b = frame[i]
        if b == PPP_FLAG:
            i += 1
            continue
        if b == PPP_ESC:
            if i + 1 >= n:
                break
            out.append(frame[i + 1] ^ 0x20)
            i += 2
            continue
        out.append(b)
        i += 1
    return bytes(out)


def _tcp(head: bytes, at: int, flow_addrs: tuple[bytes, bytes], payload_end: int) -> Segment | None:
    """The TCP header at head[at:], its options read for timestamps."""
    if len(head) < at + 20:
        return None
    sport, dport = struct.unpack_from(">HH", head, at)
    doff = (head[at + 12] >> 4) * 4
    if doff < 20:
        return None
    payload = payload_end - at - doff
    if payload < 0:
        return None
    ack, flags, window = struct.unpack_from(">I x B H", head, at + 8)
    tsval = tsecr = wscale = None
    i, end = at + 20, min(at + doff, len(head))
    while i < end:
        kind = head[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        size = head[i + 1]
        if size < 2 or i + size > end:
            break
        if kind == 8 and size == 10:
            tsval, tsecr = _TS.unpack_from(head, i + 2)
        elif kind == 3 and size == 3:
            wscale = min(head[i + 2], 14)  # RFC 7323: larger shifts are taken as 14
        i += size
    flow = (flow_addrs[0], flow_addrs[1], sport, dport)
    return Segment(flow, payload, tsval, tsecr, flags, ack, window, wscale, at)


def parse_frame(frame: bytes) -> Segment | None:
    """The TCP segment a PPP frame carries (IPv4, VJ-uncompressed IPv4, or IPv6 with TCP
    straight after its header), or None for anything else or anything malformed (the peer
    writes these bytes: nothing in them may raise in the pump)."""
    try:
        return _parse(_unescape(frame, HEAD))
    except (IndexError, struct.error):  # every read is bounds-checked; this is the backstop
        return None


def _parse(head: bytes) -> Segment | None:
    """parse_frame on the unescaped head of a frame."""
    at = 2 if head[:2] == b"\xff\x03" else 0  # address and control, unless compressed away
    if len(head) < at + 1:
        return None
    if head[at] & 1:  # protocol field compressed to one byte
        proto, at = head[at], at + 1
    else:
        if len(head) < at + 2:
            return None
        proto, at = (head[at] << 8) | head[at + 1], at + 2
    if proto in (PROTO_IP, PROTO_VJ_UNCOMPRESSED):
        if len(head) < at + 20 or head[at] >> 4 != 4:
            return None
        ihl = (head[at] & 0x0F) * 4
        total = struct.unpack_from(">H", head, at + 2)[0]
        # VJ's uncompressed frame has its slot number in place of the protocol: TCP it is
        if ihl < 20 or (proto == PROTO_IP and head[at + 9] != 6):
            return None
        if struct.unpack_from(">H", head, at + 6)[0] & 0x1FFF:  # a later fragment
            return None
        addrs = (head[at + 12 : at + 16], head[at + 16 : at + 20])
        return _tcp(head, at + ihl, addrs, at + total)
    if proto == PROTO_IPV6:
        if len(head) < at + 40 or head[at] >> 4 != 6 or head[at + 6] != 6:
            return None
        length = struct.unpack_from(">H", head, at + 4)[0]
        addrs = (head[at + 8 : at + 24], head[at + 24 : at + 40])
        return _tcp(head, at + 40, addrs, at + 40 + length)
    return None


class WindowMin(WindowExtreme):
    """The smallest sample of the last `window` seconds (MIN_WINDOW unless told)."""

    def __init__(self, window: float = MIN_WINDOW) -> None:
        """Nothing seen yet."""
        super().__init__(window)


@dataclass
class _Flow:
    """What is known of one flow's delay."""

    seen: float
    smallest: WindowMin = field(default_factory=WindowMin)
    excess: float = 0.0  # the last queueing delay measured, seconds
    sampled: float = -math.inf  # when
    codel: CoDel | None = None
    # sending up: when each TSval first went up
    sent: OrderedDict[int, float] = field(default_factory=OrderedDict)
    # sending down: the first (time, TSval), and whether the clock ticks in ms
    first: tuple[float, int] | None = None
    clock_ok: bool | None = None


class FlowDelay:
    """The pump's per-flow delay control, both ways: up() for each frame the local pppd sends
    (True: drop it), down() for each frame from the channel (True: drop it)."""

    def __init__(
        self,
        target: float,
        target_up: float = 0.0,
        interval: float = CODEL_INTERVAL,
        losses: Callable[[], int | None] | None = None,
        window_target: float = 0.0,
        window_target_up: float | None = None,
    ) -> None:
        """Drop a flow's data frames once its queueing delay stays above target seconds
        (flows sending down; 0: never), target_up seconds (flows sending up; 0: never).
        losses: a counter of the segments the SSH connection itself lost (its TCP socket's
        retransmissions and out-of-order arrivals), None when unknown. window_target: narrow
        the windows receivers advertise to flows coming down so that their queue stays near
        it, window_target_up for flows going up (pppssh.rwnd; 0: never; None: as
        window_target)."""
        self.target = target
        up = window_target if window_target_up is None else window_target_up
        self.clamp = WindowClamp(window_target, up) if window_target > 0 or up > 0 else None
        self.target_up = target_up
        self.interval = interval
        self._losses = losses
        self._loss_count: int | None = None
        self._polled = -math.inf
        self._hold_until = -math.inf
        self.held = 0  # drops CoDel asked for while the connection was recovering a loss
        self._flows: OrderedDict[tuple[bytes, bytes, int, int], _Flow] = OrderedDict()
        self.dropped_up = 0
        self.dropped_down = 0
        self.excess_up: deque[float] = deque(maxlen=4096)  # the last samples, for the log
        self.excess_down: deque[float] = deque(maxlen=4096)

    def _flow(
        self, key: tuple[bytes, bytes, int, int], now: float, target: float | None
    ) -> _Flow | None:
        """The flow's state, made with CoDel's target when one is given (the least recently
        seen forgotten beyond MAX_FLOWS)."""
        flow = self._flows.get(key)
        if flow is not None:
            flow.seen = now
            self._flows.move_to_end(key)
        elif target is not None:
            flow = self._flows[key] = _Flow(now, codel=CoDel(target, self.interval))
            if len(self._flows) > MAX_FLOWS:
                self._flows.popitem(last=False)
        return flow

    def _recovering(self, now: float) -> bool:
        """Whether the SSH connection lost a segment in the last HOL_HOLD seconds: the
        delay behind that loss is head-of-line blocking in the outer TCP, which dropping
        inner frames cannot shorten (on a lossy WAN it would only cost throughput)."""
        if self._losses is not None and now - self._polled >= HOL_POLL:
            self._polled = now
            count = self._losses()
            if count is not None:
                if self._loss_count is not None and count != self._loss_count:
                    self._hold_until = now + HOL_HOLD
                self._loss_count = count
        return now < self._hold_until

    def _drop(self, flow: _Flow, now: float) -> bool:
        """CoDel's decision on one of flow's data frames, from its last delay sample; none
        while the SSH connection recovers a loss (CoDel starts over after it)."""
        excess = flow.excess if now - flow.sampled < SAMPLE_AGE else 0.0
        assert flow.codel is not None
        if self._recovering(now):
            if flow.codel.drop(0.0, now, NO_BACKLOG) or excess >= flow.codel.target:
                self.held += 1
            return False
        return flow.codel.drop(excess, now, NO_BACKLOG)

    @property
    def acts_up(self) -> bool:
        """Whether frames going up must be shown to up_frame()."""
        return bool(self.target_up) or self.clamp is not None

    def up_frame(self, frame: bytes, now: float) -> bytes | None:
        """A frame on its way up: None to drop it (up()), else the frame to send, its
        window narrowed when it is an ACK of a flow the clamp holds."""
        if not (self.target_up or self.clamp):
            return frame
        seg = parse_frame(frame)
        if seg is None:
            return frame
        if self.target_up and self._up(seg, now):
            return None
        if self.clamp is None:
            return frame
        return self._clamp(self.clamp, frame, seg, True, None, now)

    def _clamp(
        self,
        clamp: WindowClamp,
        frame: bytes,
        seg: Segment,
        going_up: bool,
        queue: float | None,
        now: float,
    ) -> bytes:
        """What the window clamp sees of a segment (its SYN, its data, the ACK it carries),
        and the frame to pass on (its window narrowed)."""
        if seg.flags & SYN:
            clamp.syn(seg.flow, seg.flags, seg.wscale, going_up)
            return frame
        recovering = self._recovering(now)
        if seg.payload:
            clamp.data(
                seg.flow, going_up, seg.payload, seg.tsval, seg.tsecr, queue, now, recovering
            )
        if seg.flags & ACK:
            frame = clamp.ack(
                frame, seg.reverse(), going_up, seg.flags, seg.window, seg.tsval, seg.tsecr,
                seg.at, now, recovering, seg.ack,
            )  # fmt: skip
        return frame

    def up(self, frame: bytes, now: float) -> bool:
        """A frame on its way up: remember when its TSval first went; drop it when it is
        data of a flow whose round trip has stayed too long above its smallest."""
        if not self.target_up:
            return False
        seg = parse_frame(frame)
        return seg is not None and self._up(seg, now)

    def _up(self, seg: Segment, now: float) -> bool:
        """up() on the segment a frame carries."""
        if seg.tsval is None or seg.payload == 0:
            return False
        flow = self._flow(seg.flow, now, self.target_up)
        assert flow is not None
        if seg.tsval not in flow.sent:
            flow.sent[seg.tsval] = now
            if len(flow.sent) > TSVALS_KEPT:
                flow.sent.popitem(last=False)
        if self._drop(flow, now):
            self.dropped_up += 1
            return True
        return False

    def down(self, frame: bytes, now: float) -> bool:
        """down_frame(), only whether the frame is dropped."""
        return self.down_frame(frame, now) is None

    def down_frame(self, frame: bytes, now: float) -> bytes | None:
        """A frame on its way down: an ACK's TSecr times the round trip of the flow it
        answers; a data segment's TSval its own one-way delay, and it is dropped (None) when
        that has stayed too long above its smallest. Else the frame to pass on, its window
        narrowed when it is an ACK of a flow going up that the clamp holds."""
        seg = parse_frame(frame)
        if seg is None:
            return frame
        dropped, queue = self._down(seg, now)
        if dropped:
            return None
        if self.clamp is not None:
            frame = self._clamp(self.clamp, frame, seg, False, queue, now)
        return frame

    def _down(self, seg: Segment, now: float) -> tuple[bool, float | None]:
        """down_frame()'s measure and decision: whether to drop the segment, and its one-way
        queueing delay (None: not measured)."""
        clamp = self.clamp
        if seg.tsecr is not None:
            back = self._flow(seg.reverse(), now, None)
            if back is not None:
                went = back.sent.pop(seg.tsecr, None)
                if went is not None:
                    rtt = now - went
                    back.excess = rtt - back.smallest.add(rtt, now)
                    back.sampled = now
                    self.excess_up.append(back.excess)
        if seg.tsval is None or seg.payload == 0 or not (self.target or clamp):
            return False, None
        flow = self._flow(seg.flow, now, self.target)
        assert flow is not None
        if flow.first is None:
            flow.first = (now, seg.tsval)
            return False, None
        since = now - flow.first[0]
        ticks = (seg.tsval - flow.first[1]) & 0xFFFFFFFF
        if ticks >= 1 << 31:  # reordered before the first one seen: not a sample
            return False, None
        # the one-way delay, up to the flow's constant offset; its smallest is kept from the
        # flow's first packet on, before any queue it builds (slow start fills one fast)
        delay = since - ticks / 1000
        excess = delay - flow.smallest.add(delay, now)
        if flow.clock_ok is None and since >= CLOCK_CHECK:
            low, high = CLOCK_RANGE
            flow.clock_ok = low <= ticks / 1000 / since <= high
        if not flow.clock_ok:
            return False, None
        flow.excess = excess
        flow.sampled = now
        self.excess_down.append(excess)
        if not self.target or (clamp is not None and clamp.holds(seg.flow)):
            return False, excess  # a flow whose window is narrowed slows down without drops
        if self._drop(flow, now):
            self.dropped_down += 1
            return True, excess
        return False, excess

    def flows(self) -> int:
        """Flows tracked."""
        return len(self._flows)

    def summary(self) -> str:
        """One line for the log: per way, the samples' queueing delay (median, p90 of the
        last ones) and the frames dropped."""

        def way(name: str, samples: deque[float], dropped: int) -> str:
            """One way's part."""
            if not samples:
                return f"{name}: no samples, {dropped} dropped"
            ordered = sorted(samples)
            p50, p90 = ordered[len(ordered) // 2], ordered[len(ordered) * 9 // 10]
            return (
                f"{name}: queue {p50 * 1000:.1f} ms median, {p90 * 1000:.1f} ms p90 "
                f"({len(ordered)} samples), {dropped} dropped"
            )

        clamp = f"; {self.clamp.summary()}" if self.clamp is not None else ""
        return (
            f"target {self.target * 1000:g} ms down, {self.target_up * 1000:g} ms up{clamp}, "
            f"{len(self._flows)} flows, {self.held} frames above it kept while the SSH "
            f"connection recovered a loss; "
            f"{way('up', self.excess_up, self.dropped_up)}; "
            f"{way('down', self.excess_down, self.dropped_down)}"
        )
