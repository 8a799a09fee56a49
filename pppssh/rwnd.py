"""The window each TCP receiver advertises through the tunnel, narrowed to what the path
needs (pure: no I/O, the caller gives the time and the measured delay).

Every TCP flow through the tunnel has its sender on one side and its receiver on the other;
the pump sees the data one way and the receiver's ACKs the other. The sender may never
have more bytes in flight than the window those ACKs advertise. Dropping frames
(pppssh.flowdelay) tells a loss-based sender to halve its rate, and it fills the queues
again before the next drop: the queue it keeps and the throughput it loses are both tied
to the drops. Narrowing the window instead holds the sender at the path's rate times its
round trip plus a small target, with nothing dropped: the queues it would fill stay a few
ms long and the link stays full. Coming down, those are the queues out of pppssh's reach
(the remote pty, sshd's buffer and socket, the WAN's way down); going up, the pump's own,
the SSH socket's and the WAN's way up.

Per flow, from what the pump sees:

- the handshake, both ways: the receiver's window scale (its SYN or SYN-ACK) and whether
  the sender's SYN carried the option at all (else no scaling). A flow whose handshake the
  pump did not see (it began before this link) is left alone;
- its round trip, timed on TSvals that passed, a few per round trip (so a flow's state
  stays small however long its queue), the smallest of the last 10 s. Coming down: from an ACK
  going up (its TSval) to the first data segment that echoes it (TSecr), less that
  segment's one-way queueing delay (below). Going up: from a data segment going up to the
  first ACK that echoes it;
- its standing queue, the smallest over each round trip of its queueing delay (without the
  bursts of sshd's packets). Coming down: one way, from pppssh.flowdelay (the far sender's
  TSval against the pump's clock), or before the flow's clock is known to tick in ms (its
  first second), the round trip's rise over its smallest. Going up: the round trip's rise
  over its smallest (each sample, since a receiver may hold back an ACK for up to 40 ms
  when it has one segment to acknowledge: the smallest of several is the queue);
- the payload bytes that passed in that round trip (going up, the bytes the ACKs coming
  back acknowledged: data going up passes the pump before the path's queue, in its
  sender's bursts): the flow's rate.

Once the standing queue first exceeds the target (the path is full), the window is the
rate times the round trip plus the target (at least MIN_HOLD of the rate); then, each round
trip, it loses half the bytes the queue holds beyond the target (never going below that),
or grows (by an eighth while the queue
is under half the target, by a segment while under the target). It never shrinks while the
SSH connection recovers a lost segment (that delay is head-of-line blocking, not a queue).

The delays are measured against their smallest of the last 10 s, and a flow held at its
target never shows its queue empty: left alone, that smallest would creep up by the target
every 10 s, and the queue with it. So a held flow whose queue has not been near empty
(under a quarter of the target) for DRAIN_AFTER seconds is drained, as BBR probes for its
round trip: for one round trip plus the target its window falls to DRAIN_SHARE of the
path's bandwidth-delay product (the window less the target's share), the queue empties,
and the delays measured behind it show it empty again. That costs the flow a tenth of one
round trip's bytes every DRAIN_AFTER seconds.

An ACK whose window exceeds that is rewritten: its window field, the TCP checksum
(updated, RFC 1624) and the PPP frame's FCS, re-escaped (every control character, which
any receiver takes whatever its ACCM). The right edge (ack plus window) this advertises
may fall behind one advertised before, which RFC 9293 (3.8.6.2.2) asks receivers not to
do because a segment the sender already sent past the new edge would be refused; here the
receiver still takes everything up to its own, larger window, so nothing is refused: the
sender (which must be robust to a shrinking window, the same section) only holds back new
data until the edge moves on. Without that, a window the receiver's autotuning grew to
megabytes in the flow's first second would keep the queue it allows for as long as the
sender takes to send that much. Only frames of at most BULK_FRAME bytes are rewritten
(ACKs, with SACK blocks); a frame whose FCS does not check out is left as it is.

What a hostile peer (or a local host) can do with it: send a SYN without the window scale
option, or with one, for its own flows (so pppssh reads the other side's windows with the
wrong scale, narrowing them: that slows only its own flows), send ACKs and timestamps that
make its own flows' windows narrow, or open many flows: at most MAX_FLOWS directions are
tracked, the least recently seen forgotten first. A host that forges someone else's
addresses and ports can send a SYN on their connection, which makes pppssh forget it (it
is then left to the delay control, as a flow whose handshake was not seen); a forged
SYN-ACK changes nothing, since only a connection's first one counts. The window is only
ever narrowed, never widened beyond what the receiver said.
"""

from __future__ import annotations

import binascii
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from .queues import BULK_FRAME, PPP_FLAG, WindowExtreme

__all__ = ["WindowClamp", "fcs16", "rewrite_window"]

SYN, ACK = 0x02, 0x10
PPP_ESC = 0x7D
MAX_FLOWS = 1024
PROBES = 16  # TSvals of a flow timed per half round trip, at most (4 half ones are kept)
MIN_SEGMENTS = 2  # the window never goes below this many of the flow's largest segments
DEFAULT_MSS = 1400  # until a segment is seen
GROW_FAST = 1 / 8  # the window's growth per round trip while the queue is under half the target
SHRINK_GAIN = 0.5  # of the bytes queued beyond the target, the share taken off per round trip
MIN_WINDOW = 10.0  # seconds a smallest delay is remembered (BBR's min_rtt window)
RATE_WINDOW = 2.0  # seconds the largest rate of a round trip is kept: the path's, when full
MIN_PERIOD = 0.040  # seconds a rate is measured over, at least (one round trip otherwise)
MIN_HOLD = 0.020  # seconds of the rate a window holds at least: a fast path's round trip is
# shorter than the pauses a busy gateway's scheduler makes in the pump
DRAIN_AFTER = 8.0  # seconds a held flow may go without a near-empty queue before a drain
DRAIN_SHARE = 0.9  # of the path's bandwidth-delay product, the window while it drains
GOOD_FCS = 0xF0B8  # RFC 1662: the FCS over a frame and its own FCS


_REFLECT = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))  # each byte's bits reversed


def fcs16(data: bytes | bytearray, fcs: int = 0xFFFF) -> int:
    """RFC 1662's 16-bit FCS of data (unescaped), before its final complement: the CCITT
    CRC (binascii's, in C) of the bit-reversed bytes, bit-reversed (RFC 1662 sends the
    least significant bit first); fcs is the register's starting value."""
    reg = binascii.crc_hqx(bytes(data).translate(_REFLECT), _reflect16(fcs))
    return _reflect16(reg)


def _reflect16(value: int) -> int:
    """value's 16 bits in reverse order."""
    return (_REFLECT[value & 0xFF] << 8) | _REFLECT[value >> 8]


def _unescape_all(body: bytes) -> bytes | None:
    """A frame's contents between its flags, escapes undone; None if an escape is cut off."""
    if PPP_ESC not in body:
        return body
    first, *rest = body.split(b"\x7d")
    out = [first]
    for part in rest:
        if not part:  # an escape at the end, or two in a row
            return None
        out.append(bytes((part[0] ^ 0x20,)))
        out.append(part[1:])
    return b"".join(out)


_ESCAPED = [bytes((PPP_ESC, b ^ 0x20)) if b < 0x20 or b in (PPP_FLAG, PPP_ESC) else bytes((b,))
            for b in range(256)]  # fmt: skip


def _escape(data: bytes | bytearray) -> bytes:
    """Contents escaped for the line: flag, escape and every control character."""
    return b"".join(map(_ESCAPED.__getitem__, data))


def _csum_update(check: int, old: int, new: int) -> int:
    """The Internet checksum check with one 16-bit word changed from old to new (RFC 1624,
    equation 3)."""
    s = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rewrite_window(frame: bytes, at: int, raw: int) -> bytes | None:
    """frame (as the pump cut it: escaped contents, flags around them) with the TCP header
    at `at` in its contents given window field raw, the checksum and FCS to match; None when
    the frame does not check out (its FCS, or too short), so it must pass as it is."""
    lead = len(frame) - len(frame.lstrip(b"~"))
    trail = len(frame) - len(frame.rstrip(b"~"))
    body = _unescape_all(frame[lead : len(frame) - trail])
    if body is None or len(body) < at + 20 + 2 or fcs16(body) != GOOD_FCS:
        return None
    content = bytearray(body[:-2])
    old, check = struct.unpack_from(">HH", content, at + 14)
    raw &= 0xFFFF
    struct.pack_into(">HH", content, at + 14, raw, _csum_update(check, old, raw))
    fcs = fcs16(content) ^ 0xFFFF
    content += struct.pack("<H", fcs)
    return b"~" * lead + _escape(content) + b"~" * max(1, trail)


Key = tuple[bytes, bytes, int, int]  # source address and port, destination's: a direction


@dataclass
class _Flow:
    """What the clamp knows of one direction of a connection, keyed by its data's direction:
    its sender's SYN, its receiver's SYN (whose windows are narrowed), and its measures."""

    up: bool = False  # its data goes up (the sender is on this side)
    sender_syn: bool = False
    sender_scales: bool = False  # the sender's SYN had the option
    receiver_syn: bool = False
    receiver_scale: int | None = None  # the receiver's SYN: its shift, or None without
    probes: OrderedDict[int, float] = field(default_factory=OrderedDict)  # TSval: when
    rtts: WindowExtreme = field(default_factory=lambda: WindowExtreme(MIN_WINDOW))
    rtt: float | None = None  # the smallest round trip now
    rates: WindowExtreme = field(default_factory=lambda: WindowExtreme(RATE_WINDOW, largest=True))
    mss: int = 0
    started: float = -1.0  # the round trip being measured began (-1: not yet)
    received: int = 0  # payload bytes in it (going up: the bytes acknowledged)
    acked: int | None = None  # going up: the highest ACK number seen
    queue: float = math.inf  # the smallest queueing delay in it
    window: float | None = None  # bytes; None: not narrowed (yet)
    low_at: float = 0.0  # when its queue was last near empty
    drain_until: float = -1.0  # its window is below the path's BDP until then

    @property
    def shift(self) -> int | None:
        """The receiver's window scale in effect, None until both SYNs were seen."""
        if not (self.sender_syn and self.receiver_syn):
            return None
        if self.receiver_scale is None or not self.sender_scales:
            return 0
        return self.receiver_scale


def _reverse(key: Key) -> Key:
    """The other direction of the connection."""
    src, dst, sport, dport = key
    return (dst, src, dport, sport)


class WindowClamp:
    """Per flow, either way: observe its handshake, its data, its ACKs and its queueing
    delay; narrow the windows its receiver advertises (see the module). going_up says on
    which way the pump saw a segment."""

    def __init__(self, target: float, target_up: float | None = None) -> None:
        """Keep each flow's standing queue near target seconds (flows coming down; 0: leave
        them alone), target_up (flows going up; 0: leave them alone; None: as target)."""
        self.target = target
        self.target_up = target if target_up is None else target_up
        self._flows: OrderedDict[Key, _Flow] = OrderedDict()
        self.rewritten = 0
        self.narrowed_flows = 0
        self.drains = 0

    def _flow(self, key: Key, make: bool) -> _Flow | None:
        """The flow's state (made when make; the least recently seen forgotten beyond
        MAX_FLOWS)."""
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)
        elif make:
            flow = self._flows[key] = _Flow()
            if len(self._flows) > MAX_FLOWS:
                self._flows.popitem(last=False)
        return flow

    def holds(self, key: Key) -> bool:
        """Whether the flow key's windows are narrowed."""
        flow = self._flows.get(key)
        return flow is not None and flow.window is not None

    def flows(self) -> int:
        """Flow directions tracked."""
        return len(self._flows)

    def _opened(self, key: Key, flags: int) -> _Flow:
        """The flow's state for a SYN with flags: a SYN alone opens a new connection (the
        ports may be an old one's: nothing of it is kept), a SYN-ACK answers one."""
        if not flags & ACK:
            self._flows.pop(key, None)
        flow = self._flow(key, True)
        assert flow is not None
        return flow

    def syn(self, key: Key, flags: int, wscale: int | None, going_up: bool) -> None:
        """A SYN or SYN-ACK from key's source: the sender's of data going key's way, the
        receiver's of data coming back. The first SYN-ACK of a connection counts: a later
        one (a retransmission says the same; anything else was forged, to make pppssh read
        the windows of someone else's connection with another scale) is left alone."""
        sending = self._opened(key, flags)
        if not sending.sender_syn:
            sending.up, sending.sender_syn = going_up, True
            sending.sender_scales = wscale is not None
        receiving = self._opened(_reverse(key), flags)
        if not receiving.receiver_syn:
            receiving.up, receiving.receiver_syn = not going_up, True
            receiving.receiver_scale = wscale

    def _target(self, flow: _Flow) -> float:
        """The queue flow is held at."""
        return self.target_up if flow.up else self.target

    def _held(self, key: Key, data_up: bool) -> _Flow | None:
        """The flow key, if its handshake was seen, its data goes the way data_up says and
        that way has a target."""
        flow = self._flows.get(key)
        if flow is None or flow.shift is None or flow.up != data_up:
            return None
        return flow if self._target(flow) > 0 else None

    def _timed(self, flow: _Flow, echoed: int | None, now: float) -> float | None:
        """A segment echoing TSval echoed passed at now: the round trip since that TSval
        passed, or None (not remembered); it and the TSvals before it are forgotten (an echo
        never goes back)."""
        probes = flow.probes
        if echoed is None or echoed not in probes:
            return None
        while True:
            tsval, when = probes.popitem(last=False)
            if tsval == echoed:
                return now - when

    @staticmethod
    def _remember(flow: _Flow, tsval: int | None, now: float) -> None:
        """A TSval that passed at now, to be timed by its echo: a new one, at most PROBES
        per half round trip, so that those remembered span a whole one at any rate."""
        if tsval is None or tsval in flow.probes:
            return
        probes = flow.probes
        if probes and flow.rtt is not None:
            last = next(reversed(probes.values()))
            if now - last < flow.rtt / (2 * PROBES):
                return
        probes[tsval] = now
        if len(probes) > 4 * PROBES:
            probes.popitem(last=False)

    def data(
        self,
        key: Key,
        going_up: bool,
        payload: int,
        tsval: int | None,
        tsecr: int | None,
        queue: float | None,
        now: float,
        recovering: bool = False,
    ) -> None:
        """A data segment of flow key passed the pump at now, going_up or coming down:
        payload bytes, its timestamps, and (coming down) its one-way queueing delay (None:
        not measured); recovering: the SSH connection lost a segment lately."""
        flow = self._held(key, going_up)
        if flow is None:
            return
        flow.mss = max(flow.mss, payload)
        if going_up:  # its ACK, coming down, times the round trip
            self._remember(flow, tsval, now)
        else:  # it answers an ACK that went up
            rtt = self._timed(flow, tsecr, now)
            if rtt is not None:
                # less the queue this segment met on the way down: a flow held at its
                # target never drains it, and a smallest round trip that kept it would
                # keep it too (see _adjust)
                base = max(rtt - queue, rtt / 4) if queue is not None else rtt
                flow.rtt = flow.rtts.add(base, now)
                if queue is None:  # the clock is not known yet: the round trip's rise
                    queue = rtt - flow.rtt
        if not going_up:  # going up, the bytes are counted as the ACKs coming back say (ack())
            self._account(flow, payload, queue, now, recovering)

    def _account(
        self, flow: _Flow, payload: int, queue: float | None, now: float, recovering: bool
    ) -> None:
        """Count payload bytes and a queue sample into the round trip being measured; at its
        end, adjust the window."""
        if flow.rtt is None:
            return
        if flow.started < 0:
            flow.started, flow.received, flow.queue = now, 0, math.inf
        flow.received += payload
        if queue is not None:
            flow.queue = min(flow.queue, queue)
            if queue <= self._target(flow) / 4:
                flow.low_at = now
        if now < flow.drain_until + flow.rtt:  # what a drain let through: not the flow's rate
            flow.started = -1.0
            return
        period = now - flow.started
        if period < max(flow.rtt + self._target(flow), MIN_PERIOD):
            return
        rate = flow.rates.add(flow.received / period, now)
        self._adjust(flow, rate, flow.queue, recovering)
        flow.started, flow.received, flow.queue = now, 0, math.inf

    def _adjust(self, flow: _Flow, rate: float, queue: float, recovering: bool) -> None:
        """One round trip's decision on flow's window from its rate (bytes/s: the largest
        of the last RATE_WINDOW seconds) and standing queue (seconds; inf: not measured)."""
        assert flow.rtt is not None
        if not math.isfinite(queue):
            return
        target = self._target(flow)
        mss = flow.mss or DEFAULT_MSS
        floor = MIN_SEGMENTS * mss
        if flow.window is None:
            if queue > target:  # the path is full: from now on, hold it there
                flow.window = max(floor, rate * max(flow.rtt + target, MIN_HOLD))
                self.narrowed_flows += 1
                flow.low_at = flow.started
            return
        window = flow.window
        if queue > target:
            # never below the bandwidth-delay product plus the target, with the largest rate
            # of the last seconds, the path's while it was full: a delay that is not a queue
            # (ACKs that travel in bunches, a receiver's delayed ACK) must not narrow the
            # window below what the path carries, then the rate with it, and so on down
            if not recovering:
                least = min(window, rate * max(flow.rtt + target, MIN_HOLD))
                window = max(least, window - SHRINK_GAIN * rate * (queue - target))
        elif queue < target / 2:
            window += max(mss, window * GROW_FAST)
        else:
            window += mss
        # a sender slower than its window (its own cwnd, or the application): the window
        # need not run away above what it uses
        ceiling = 2 * rate * (flow.rtt + target) + floor
        flow.window = max(floor, min(window, max(ceiling, flow.window)))

    def ack(
        self,
        frame: bytes,
        key: Key,
        going_up: bool,
        flags: int,
        window: int,
        tsval: int | None,
        tsecr: int | None,
        at: int,
        now: float,
        recovering: bool = False,
        ack: int | None = None,
    ) -> bytes:
        """A segment of flow key's receiver (an ACK of key's data, ack its number) passed
        the pump at now, going_up or coming down: it times the round trip, and its window
        is narrowed. The frame to pass on."""
        flow = self._held(key, not going_up)
        if flow is None or not flags & ACK:
            return frame
        if going_up:  # the data it lets go, coming down, times the round trip
            self._remember(flow, tsval, now)
        else:  # it answers data that went up: the round trip, queues and all
            acked = 0  # the bytes it acknowledges: the rate the path delivers (data going up
            # passes the pump before the path's queue, in the sender's bursts)
            if ack is not None:
                if flow.acked is not None:
                    acked = (ack - flow.acked) & 0xFFFFFFFF
                    acked = acked if acked < 1 << 30 else 0  # an older ACK, reordered
                if flow.acked is None or acked:
                    flow.acked = ack
            rtt = self._timed(flow, tsecr, now)
            queue = None
            if rtt is not None:
                flow.rtt = flow.rtts.add(rtt, now)
                queue = rtt - flow.rtt
            self._account(flow, acked, queue, now, recovering)
        return self._narrow(frame, flow, window, at, now)

    def _narrow(self, frame: bytes, flow: _Flow, window: int, at: int, now: float) -> bytes:
        """frame with its window narrowed to what flow is held at (or during a drain, below
        it), if that is less than what it says."""
        rtt, shift = flow.rtt, flow.shift
        if flow.window is None or rtt is None or shift is None or len(frame) > BULK_FRAME:
            return frame
        held = flow.window
        if now >= flow.drain_until and now - flow.low_at > DRAIN_AFTER:
            flow.drain_until = now + rtt + self._target(flow)
            flow.low_at = flow.drain_until
            self.drains += 1
        if now < flow.drain_until:
            held = DRAIN_SHARE * held * rtt / (rtt + self._target(flow))
        held = max(held, MIN_SEGMENTS * (flow.mss or DEFAULT_MSS))
        raw = max(1, -(-int(held) >> shift))  # in the scale's units, rounded up
        if raw >= window:
            return frame
        out = rewrite_window(frame, at, raw)
        if out is None:
            return frame
        self.rewritten += 1
        return out

    def summary(self) -> str:
        """One line's part for the log."""
        held = [f for f in self._flows.values() if f.window is not None]
        parts = []
        for name, up in (("down", False), ("up", True)):
            windows = sorted(int(f.window) for f in held if f.up == up and f.window)
            if windows:
                parts.append(f", {name} windows now {windows[len(windows) // 2]} bytes median")
        return (
            f"window target {self.target * 1000:g} ms down, {self.target_up * 1000:g} ms up: "
            f"{self.narrowed_flows} flows narrowed, "
            f"{self.rewritten} ACKs rewritten, {self.drains} drains{''.join(parts)}"
        )
