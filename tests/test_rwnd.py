"""The window clamp: ACKs going up rewritten (window, checksum, FCS), the handshake's scale,
the window's control from the measured rate, round trip and queue, and what it must leave
alone."""

from __future__ import annotations

import math
import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pppssh import rwnd
from pppssh.flowdelay import FlowDelay, parse_frame
from pppssh.rwnd import GOOD_FCS, WindowClamp, fcs16, rewrite_window

LOCAL, FAR = bytes([10, 1, 0, 5]), bytes([10, 2, 0, 7])
SYN, ACK = 0x02, 0x10


def _escape(body: bytes) -> bytes:
    """HDLC-like framing, escaping what pppd escapes with asyncmap 0."""
    out = bytearray([0x7E])
    for b in body:
        if b in (0x7E, 0x7D):
            out += bytes([0x7D, b ^ 0x20])
        else:
            out.append(b)
    return bytes(out + b"\x7e")


def _unescape(frame: bytes) -> bytes:
    """A frame's contents, FCS included."""
    out, i, body = bytearray(), 0, frame.strip(b"~")
    while i < len(body):
        if body[i] == 0x7D:
            out.append(body[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(body[i])
            i += 1
    return bytes(out)


def _checksum(data: bytes) -> int:
    """The Internet checksum of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    flags: int = ACK,
    ack: int = 0,
    window: int = 5000,
    payload: int = 0,
    ts: tuple[int, int] | None = (1, 0),
    wscale: int | None = None,
    seq: int = 1,
) -> bytes:
    """A PPP frame with an IPv4 TCP segment whose checksums and FCS are right."""
    opts = b""
    if ts is not None:
        opts += b"\x01\x01\x08\x0a" + struct.pack(">II", *ts)
    if wscale is not None:
        opts += b"\x01\x03\x03" + bytes([wscale])
    doff = 5 + len(opts) // 4
    data = bytes(payload)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0)
    tcp += opts
    pseudo = src + dst + struct.pack(">BBH", 0, 6, len(tcp) + len(data))
    check = _checksum(pseudo + tcp + data)
    tcp = tcp[:16] + struct.pack(">H", check) + tcp[18:]
    total = 20 + len(tcp) + len(data)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
    content = b"\xff\x03\x00\x21" + ip + tcp + data
    return _escape(content + struct.pack("<H", fcs16(content) ^ 0xFFFF))


def _tcp_ok(frame: bytes) -> tuple[int, bool]:
    """The window field of a frame's TCP header, and whether FCS and TCP checksum hold."""
    content = _unescape(frame)
    fcs_ok = fcs16(content) == GOOD_FCS
    ip = content[4:24]
    tcp_and_data = content[24:-2]
    pseudo = ip[12:20] + struct.pack(">BBH", 0, 6, len(tcp_and_data))
    tcp_ok = _checksum(pseudo + tcp_and_data) == 0
    return struct.unpack_from(">H", tcp_and_data, 14)[0], fcs_ok and tcp_ok


def test_segment_helper_is_valid() -> None:
    """The frames the tests build check out, and parse with flags, ack, window and scale."""
    f = segment(LOCAL, FAR, 40000, 5201, flags=SYN, window=64240, wscale=7, ts=(5, 0))
    assert _tcp_ok(f) == (64240, True)
    seg = parse_frame(f)
    assert seg is not None and (seg.flags, seg.window, seg.wscale, seg.tsval) == (SYN, 64240, 7, 5)


def test_rewrite_keeps_checksum_and_fcs_right() -> None:
    """The window changes; the TCP checksum and the FCS still hold, whatever the bytes that
    need escaping (0x7E, 0x7D, control characters) in the old or new header."""
    for window, ack, new in ((0x7E7D, 0x7D7E7D7E, 0x0101), (5000, 17, 0x7E), (65535, 0, 1)):
        f = segment(LOCAL, FAR, 40000, 5201, ack=ack, window=window, ts=(0x7D7E, 0x1F))
        seg = parse_frame(f)
        assert seg is not None
        out = rewrite_window(f, seg.at, new)
        assert out is not None and out.startswith(b"~") and out.endswith(b"~")
        assert _tcp_ok(out) == (new, True)
        back = parse_frame(out)
        assert back is not None and (back.ack, back.tsval, back.tsecr) == (ack, 0x7D7E, 0x1F)


def _fcs_by_the_rfc(data: bytes, fcs: int = 0xFFFF) -> int:
    """RFC 1662's FCS, computed as its section C.2 does, one byte at a time."""
    for b in data:
        fcs ^= b
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_fcs_is_the_rfcs(data: bytes, start: int) -> None:
    """The C-speed FCS (binascii's CRC on reflected bytes) is RFC 1662's."""
    assert fcs16(data, start) == _fcs_by_the_rfc(data, start)
    assert fcs16(data + struct.pack("<H", fcs16(data) ^ 0xFFFF)) == GOOD_FCS


def test_rewrite_refuses_a_frame_whose_fcs_is_wrong() -> None:
    """A corrupt frame passes as it is (the receiving pppd drops it)."""
    f = bytearray(segment(LOCAL, FAR, 40000, 5201))
    f[-3] ^= 0x01
    seg = parse_frame(bytes(f))
    assert seg is not None and rewrite_window(bytes(f), seg.at, 100) is None


class Path:
    """A transfer through a FlowDelay with the clamp, stepped every 0.5 ms: a download (FAR
    to LOCAL: the pump sits after the bottleneck, at the receiver's end) or an upload
    (LOCAL to FAR: the pump sits before it, at the sender's end). The sender is in slow
    start (no losses), held only by the window the receiver advertises as it reaches the
    sender through the pump; the bottleneck has rate bytes/s and a FIFO queue; the base
    round trip is rtt, half each way."""

    def __init__(
        self, fd: FlowDelay, rate: float, rtt: float, wscale: int = 7, up: bool = False
    ) -> None:
        self.fd, self.rate, self.rtt, self.up = fd, rate, rtt, up
        self.scale = wscale
        # what the receiver would advertise: like Linux's, it grows with what it has
        # received (here by all of it, from 64 KiB) up to far more than the path needs
        self.real = 1 << 22
        self.rewritten = 0
        self.advertised: list[int] = []
        down = (FAR, LOCAL, 5201, 40000)  # the connection of handshake(), data coming down
        back = (LOCAL, FAR, 40000, 5201)
        self.data_way, self.ack_way = (back, down) if up else (down, back)

    def _pump(self, frame: bytes, going_up: bool, t: float) -> bytes:
        """frame through the pump, as it passes it."""
        out = self.fd.up_frame(frame, t) if going_up else self.fd.down_frame(frame, t)
        assert out is not None
        return out

    def handshake(self, local_scale: int | None = 7, far_scale: int | None = 7) -> None:
        """SYN up from the local client, SYN-ACK down from the far server."""
        syn = segment(LOCAL, FAR, 40000, 5201, flags=SYN, window=64240, wscale=local_scale)
        assert self.fd.up_frame(syn, 0.0) == syn
        synack = segment(FAR, LOCAL, 5201, 40000, flags=SYN | ACK, wscale=far_scale)
        assert self.fd.down_frame(synack, 0.01) == synack

    def run(
        self, seconds: float, mss: int = 1400, delack: bool = False, bunch: float = 0.0
    ) -> tuple[float, float]:
        """Send for seconds; the mean queueing delay (s) of the last half's segments, and
        the bytes delivered per second over it. delack: the receiver acknowledges every
        second segment, a lone one after 40 ms (Linux's delayed ACK at its shortest).
        bunch: ACKs travel together, released every bunch seconds (as the remote sshd reads
        its pty)."""
        tick, half, up = 0.0005, self.rtt / 2, self.up
        cwnd, window, sent, acked, sender_acked = 10 * mss, 65535, 0, 0, 0
        echo = 0  # TSval of the last ACK the sender saw
        queue: deque[tuple[float, int, int, bytes]] = deque()  # (sent at, seq, TSval, frame)
        landing: deque[tuple[float, float, int, int, bytes]] = deque()  # (arrives, ...)
        acks: deque[tuple[float, bytes, int, int]] = deque()  # (reaches sender, frame, ...)
        pending: list[int] = []  # TSvals of segments received and not acknowledged yet
        timer = math.inf
        credit, delays, delivered, t = 0.0, [], 0, 0.02

        def send_ack() -> None:
            """The receiver's ACK of all it has, echoing the first segment's TSval."""
            mine = int(t * 1000) + 500_000  # the receiver's clock
            ack = segment(
                *self.ack_way, ack=acked & 0xFFFFFFFF,
                window=min(self.real, 65535 + acked) >> self.scale, ts=(mine, pending[0]),
            )  # fmt: skip
            if not up:
                out = self._pump(ack, True, t)
                self.rewritten += out != ack
                ack = out
            arrive = t + half
            if bunch:
                arrive = math.ceil(arrive / bunch) * bunch
            acks.append((arrive, ack, mine, acked))
            pending.clear()

        while t < seconds:
            while acks and acks[0][0] <= t:
                _, ack, echo, number = acks.popleft()
                if up:  # reaches the pump, then the sender
                    out = self._pump(ack, False, t)
                    self.rewritten += out != ack
                    ack = out
                win, ok = _tcp_ok(ack)
                assert ok
                window = win << self.scale
                self.advertised.append(window)
                cwnd += number - sender_acked
                sender_acked = number
            while sent - sender_acked + mss <= min(cwnd, window):
                sent += mss
                tsval = int(t * 1000) + 100_000  # the sender's clock
                data = segment(*self.data_way, payload=mss, ts=(tsval, echo))
                if up:
                    self._pump(data, True, t)
                queue.append((t, sent, tsval, data))
            credit = min(credit + self.rate * tick, max(2 * mss, 2 * self.rate * tick))
            while queue and credit >= mss:
                at, seq, tsval, data = queue.popleft()
                credit -= mss
                landing.append((t + half, at, seq, tsval, data))
            while landing and landing[0][0] <= t:
                _, at, seq, tsval, data = landing.popleft()
                if not up:  # the pump, then the receiver
                    self._pump(data, False, t)
                acked = seq
                pending.append(tsval)
                if not delack or len(pending) >= 2:
                    send_ack()
                    timer = math.inf
                elif len(pending) == 1:
                    timer = t + 0.040
                if t > seconds / 2:
                    delays.append(t - at - self.rtt / 2 - mss / self.rate)
                    delivered += mss
            if pending and t >= timer:
                send_ack()
                timer = math.inf
            t += tick
        return sum(delays) / max(1, len(delays)), delivered / (seconds / 2)


@pytest.mark.parametrize("up", [False, True], ids=["download", "upload"])
@pytest.mark.parametrize(
    ("rate", "rtt", "bound", "seconds"),
    [(500_000, 0.040, 0.010, 8.0), (3_000_000, 0.010, 0.016, 3.0),
     (10_000_000, 0.002, 0.024, 1.5), (500_000, 0.200, 0.040, 8.0)],
)  # fmt: skip
def test_a_transfer_is_held_near_the_target_without_losing_rate(
    rate: int, rtt: float, bound: float, seconds: float, up: bool
) -> None:
    """With a window far larger than the path needs, the queue would be seconds long;
    narrowed, it settles near the target (4 ms; on a round trip shorter than MIN_HOLD,
    near what MIN_HOLD leaves) and the path stays full, either way: the local receiver's
    ACKs narrowed going up, the far receiver's coming down."""
    fd = FlowDelay(0.0, window_target=0.004)
    path = Path(fd, rate=rate, rtt=rtt, up=up)
    path.handshake()
    queue, got = path.run(seconds)
    assert path.rewritten > 0 and fd.clamp is not None and fd.clamp.narrowed_flows == 1
    assert 0.0 < queue < bound, queue
    assert got > 0.97 * rate, got  # the path stays full
    assert min(path.advertised[-100:]) >= rate * rtt  # at least the path's own BDP


def test_a_long_download_does_not_creep() -> None:
    """Held at its target for 40 s, the flow never shows an empty queue by itself; the
    drains every few seconds keep the baselines, and so the queue, where they were."""
    fd = FlowDelay(0.0, window_target=0.004)
    path = Path(fd, rate=500_000, rtt=0.040)
    path.handshake()
    queue, got = path.run(40.0)
    assert fd.clamp is not None and fd.clamp.drains >= 2
    assert queue < 0.006 and got > 0.98 * 500_000, (queue, got)


def test_without_a_seen_handshake_nothing_is_rewritten() -> None:
    """A flow that began before the link (no SYN seen) keeps its windows."""
    fd = FlowDelay(0.0, window_target=0.004)
    path = Path(fd, rate=500_000, rtt=0.040)
    queue, _ = path.run(4.0)
    assert path.rewritten == 0 and queue > 1.0  # slow start up to the 4 MiB window


def test_without_window_scaling_the_raw_window_is_the_window() -> None:
    """The far side's SYN without the option: no scaling, the field is read as bytes."""
    fd = FlowDelay(0.0, window_target=0.004)
    path = Path(fd, rate=500_000, rtt=0.040, wscale=0)
    path.real = 65535
    path.handshake(local_scale=7, far_scale=None)
    assert fd.clamp is not None
    flow = fd.clamp._flows[(FAR, LOCAL, 5201, 40000)]
    assert flow.shift == 0
    queue, rate = path.run(6.0)
    assert path.rewritten > 0 and queue < 0.012 and rate > 0.97 * 500_000


def _handshake(clamp: WindowClamp, key: tuple[bytes, bytes, int, int]) -> None:
    """For the download key: the local side's SYN up (scale 7), the far side's SYN-ACK down
    (with the option)."""
    src, dst, sport, dport = key
    clamp.syn((dst, src, dport, sport), SYN, 7, going_up=True)
    clamp.syn(key, SYN | ACK, 7, going_up=False)
    assert clamp._flows[key].shift == 7


def test_never_widens_what_the_receiver_said() -> None:
    """A window smaller than the clamp's passes untouched; a larger one is narrowed."""
    clamp = WindowClamp(0.004)
    key = (FAR, LOCAL, 5201, 40000)
    _handshake(clamp, key)
    flow = clamp._flows[key]
    flow.window, flow.rtt, flow.low_at = 100_000.0, 0.040, math.inf
    f = segment(LOCAL, FAR, 40000, 5201, ack=5, window=100)
    assert clamp.ack(f, key, True, ACK, 100, None, None, 24, 0.1) == f and clamp.rewritten == 0
    big = segment(LOCAL, FAR, 40000, 5201, ack=5, window=5000)
    out = clamp.ack(big, key, True, ACK, 5000, None, None, 24, 0.2)
    assert _tcp_ok(out) == (-(-100_000 // 128), True) and clamp.rewritten == 1


def test_no_narrowing_while_the_ssh_connection_recovers() -> None:
    """The queue the pump measures while the SSH connection recovers a loss is head-of-line
    blocking: the window does not shrink for it."""
    clamp = WindowClamp(0.004)
    key = (FAR, LOCAL, 5201, 40000)
    _handshake(clamp, key)
    flow = clamp._flows[key]
    flow.rtt, flow.window, flow.mss = 0.040, 50_000.0, 1400
    clamp._adjust(flow, 500_000, 0.100, recovering=True)
    assert flow.window >= 50_000
    clamp._adjust(flow, 500_000, 0.100, recovering=False)
    assert flow.window < 50_000


def test_a_new_connection_on_the_same_ports_starts_over() -> None:
    """A SYN on a 4-tuple the clamp holds (the ports reused) forgets the old connection's
    window and scale; the SYN-ACK that answers it keeps what the SYN taught."""
    clamp = WindowClamp(0.004)
    key, up = (FAR, LOCAL, 5201, 40000), (LOCAL, FAR, 40000, 5201)
    clamp.syn(key, SYN, 7, going_up=False)  # the far side connects
    clamp.syn(up, SYN | ACK, 9, going_up=True)
    clamp._flows[key].window = 30_000.0
    assert clamp._flows[key].shift == 9 and clamp._flows[up].shift == 7
    clamp.syn(up, SYN, None, going_up=True)  # the local side connects anew, no option
    flow = clamp._flows[key]
    assert flow.window is None and flow.shift is None
    clamp.syn(key, SYN | ACK, 5, going_up=False)
    assert clamp._flows[key].shift == 0 and clamp._flows[up].shift == 0  # none either way


def test_flows_are_bounded() -> None:
    """SYNs from many ports cannot make the state grow past MAX_FLOWS."""
    clamp = WindowClamp(0.004)
    for port in range(rwnd.MAX_FLOWS + 30):
        clamp.syn((FAR, LOCAL, port, 1), SYN, 7, going_up=False)
    assert clamp.flows() == rwnd.MAX_FLOWS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.floats(0, 100), st.integers(0, 0xFFFF))
def test_any_bytes_never_raise(data: bytes, now: float, raw: int) -> None:
    """Whatever either side sends, the clamp answers without raising; a frame it rewrites
    still checks out."""
    fd = FlowDelay(0.005, window_target=0.004)
    for frame_ in (data, b"~\xff\x03\x00\x21" + data + b"~", b"~\x21" + data):
        fd.down(frame_, now)
        out = fd.up_frame(frame_, now)
        assert out is not None
        rewrite_window(frame_, 4, raw)


def test_the_bridge_sends_narrowed_acks_up() -> None:
    """Through the Bridge's way up (pty -> channel): a narrowed flow's ACK goes out with
    the smaller window, whole and valid; other frames pass as they were."""
    import asyncio

    from pppssh.bridge import Bridge

    async def run() -> list[bytes]:
        b = Bridge()
        b.delay_control(0.0, 0.0, -1, window_target=0.004)
        fd = b._flowdelay
        assert fd is not None and fd.clamp is not None and fd.acts_up
        key = (FAR, LOCAL, 5201, 40000)
        syn = segment(LOCAL, FAR, 40000, 5201, flags=SYN, wscale=7)
        ack = segment(LOCAL, FAR, 40000, 5201, ack=99, window=(1 << 21) >> 7)
        other = segment(LOCAL, FAR, 40001, 22, ack=5, window=100, payload=300)
        first = b._frames_up(syn)
        fd.clamp.syn(key, SYN | ACK, 7, going_up=False)
        assert fd.clamp._flows[key].shift == 7
        flow = fd.clamp._flows[key]
        flow.window, flow.rtt, flow.low_at = 30_000.0, 0.040, math.inf  # held, not draining
        return first + b._frames_up(ack + other[:50]) + b._frames_up(other[50:])

    bodies = [body for body in b"".join(asyncio.run(run())).split(b"~") if body]
    assert bodies[0] == segment(LOCAL, FAR, 40000, 5201, flags=SYN, wscale=7).strip(b"~")
    window, ok = _tcp_ok(b"~" + bodies[1] + b"~")
    assert ok and 30_000 <= window << 7 < 40_000
    other = segment(LOCAL, FAR, 40001, 22, ack=5, window=100, payload=300)
    assert bodies[2:] == [other.strip(b"~")]


def test_a_held_flow_loses_no_frames() -> None:
    """With delay_target as well, the flow whose window is narrowed is never dropped from:
    its queue stays near the window's target, far under CoDel's."""
    fd = FlowDelay(0.001, window_target=0.004)  # a CoDel target the clamp cannot keep under
    path = Path(fd, rate=500_000, rtt=0.040)
    path.handshake()
    path.run(8.0)
    assert fd.clamp is not None and fd.clamp.narrowed_flows == 1
    assert fd.dropped_down <= 3  # only before the window was first narrowed


@pytest.mark.parametrize("up", [False, True], ids=["download", "upload"])
def test_acks_in_bunches_and_delayed_do_not_starve_the_flow(up: bool) -> None:
    """A receiver that delays its ACKs and a path that carries them in bunches (as the
    remote sshd reads its pty) make round trips look longer than the queue is; the window
    must not follow them down below what the path carries (it did, to two segments, before
    the rate was taken as the largest of the last seconds)."""
    fd = FlowDelay(0.0, window_target=0.003)
    path = Path(fd, rate=3_000_000, rtt=0.010, up=up)
    path.handshake()
    queue, got = path.run(3.0, delack=True, bunch=0.008)
    assert fd.clamp is not None and fd.clamp.narrowed_flows == 1
    assert got > 0.9 * 3_000_000 and queue < 0.015, (got, queue)


def test_each_way_has_its_own_target() -> None:
    """window_target_up alone: an upload is held, a download is not (and the reverse)."""
    for down_ms, up_ms in ((0.0, 0.004), (0.004, 0.0)):
        for up in (False, True):
            fd = FlowDelay(0.0, window_target=down_ms, window_target_up=up_ms)
            path = Path(fd, rate=500_000, rtt=0.040, up=up)
            path.handshake()
            path.run(3.0)
            assert fd.clamp is not None
            held = (up_ms if up else down_ms) > 0
            assert (fd.clamp.narrowed_flows == 1) == held, (down_ms, up_ms, up)
            assert (path.rewritten > 0) == held


def test_a_forged_syn_ack_cannot_change_the_scale() -> None:
    """A SYN-ACK on a connection whose handshake was seen (forged by a host that spoofs its
    addresses, with a larger scale so that the windows would be narrowed 128 times) changes
    nothing; the windows of the held flow stay as they were."""
    clamp = WindowClamp(0.004)
    key = (FAR, LOCAL, 5201, 40000)
    _handshake(clamp, key)
    flow = clamp._flows[key]
    flow.window, flow.rtt, flow.low_at = 100_000.0, 0.040, math.inf
    clamp.syn((LOCAL, FAR, 40000, 5201), SYN | ACK, 14, going_up=True)
    clamp.syn(key, SYN | ACK, 14, going_up=False)
    assert clamp._flows[key].shift == 7
    big = segment(LOCAL, FAR, 40000, 5201, ack=5, window=5000)
    out = clamp.ack(big, key, True, ACK, 5000, None, None, 24, 0.2)
    assert _tcp_ok(out) == (-(-100_000 // 128), True)
