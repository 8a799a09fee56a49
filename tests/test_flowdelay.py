"""The pump's per-flow delay control: PPP frames parsed for TCP timestamps, the queueing delay
measured both ways, CoDel's drops, and what it must leave alone."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pppssh import flowdelay, plan
from pppssh.config import ConfigError, SiteConfig, parse
from pppssh.flowdelay import FlowDelay, WindowMin, parse_frame

A, B = bytes([10, 1, 0, 5]), bytes([10, 2, 0, 7])


def _escape(body: bytes) -> bytes:
    """HDLC-like framing as pppd writes it: control characters, flag and escape escaped."""
    out = bytearray([0x7E])
    for b in body:
        if b < 0x20 or b in (0x7E, 0x7D):
            out += bytes([0x7D, b ^ 0x20])
        else:
            out.append(b)
    return bytes(out + b"\x7e")


def frame(
    src: bytes = A,
    dst: bytes = B,
    sport: int = 40000,
    dport: int = 5201,
    payload: int = 1400,
    ts: tuple[int, int] | None = (1000, 0),
    proto: bytes = b"\xff\x03\x00\x21",
) -> bytes:
    """A PPP frame carrying an IPv4 TCP segment (with the timestamp option when ts)."""
    opts = b"\x01\x01\x08\x0a" + struct.pack(">II", *ts) if ts is not None else b""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 1, (5 + len(opts) // 4) << 4, 0x10, 500, 0, 0)
    tcp += opts
    total = 20 + len(tcp) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src, dst)
    return _escape(proto + ip + tcp + b"\x00" * payload + b"\x12\x34")


def test_parse_ipv4_segment_with_timestamps() -> None:
    """Flow, payload and both timestamps come out of an escaped frame."""
    seg = parse_frame(frame(payload=1200, ts=(0x7E7D0011, 0x01020304)))
    assert seg is not None
    assert seg.flow == (A, B, 40000, 5201)
    assert (seg.payload, seg.tsval, seg.tsecr) == (1200, 0x7E7D0011, 0x01020304)
    assert seg.reverse() == (B, A, 5201, 40000)


def test_parse_compressed_address_and_protocol() -> None:
    """ACFC and PFC (no FF 03, a one-byte protocol) parse the same; so does VJ's
    uncompressed frame, whose protocol byte is a slot number."""
    for proto in (b"\x21", b"\x00\x21", b"\xff\x03\x21"):
        seg = parse_frame(frame(proto=proto, ts=(7, 8)))
        assert seg is not None and seg.tsval == 7
    body = bytearray(frame(ts=(9, 10)))
    assert parse_frame(frame(proto=b"\x00\x2f", ts=(9, 10))) is not None
    assert body  # the plain frame is untouched by the above


def test_parse_ipv6_segment() -> None:
    """TCP straight after an IPv6 header."""
    opts = b"\x01\x01\x08\x0a" + struct.pack(">II", 5, 6)
    tcp = struct.pack(">HHIIBBHHH", 1, 2, 0, 0, 8 << 4, 0x10, 0, 0, 0) + opts
    src, dst = b"\xfd" + b"\x00" * 15, b"\xfd" + b"\x00" * 14 + b"\x01"
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(tcp) + 100, 6, 64, src, dst)
    seg = parse_frame(_escape(b"\x00\x57" + ip6 + tcp + b"\x00" * 100))
    assert seg is not None and (seg.payload, seg.tsval, seg.flow[2]) == (100, 5, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"~",
        b"~\xff\x03\xc0\x21\x01\x01\x00\x04~",  # LCP
        b"~\xff\x03\x00\x2d\x01\x02~",  # VJ compressed: never parsed
        frame(proto=b"\xff\x03\x00\x21")[:30] + b"~",  # cut short
        b"~\xff\x03\x00\x21" + b"\x45" + b"\x00" * 3 + b"~",
        b"~" + b"\x7d" * 50 + b"~",
    ],
)
def test_anything_else_is_not_a_segment(data: bytes) -> None:
    """Non-TCP, truncated or malformed frames give None, never an exception."""
    assert parse_frame(data) is None


def test_udp_is_not_a_segment() -> None:
    """Another IP protocol: not TCP."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, A, B)
    assert parse_frame(_escape(b"\x00\x21" + ip + b"\x00" * 8)) is None


def test_window_min_forgets_after_the_window() -> None:
    """The smallest of the last 10 s; an older one no longer counts."""
    wm = WindowMin(10.0)
    assert wm.add(5.0, 0.0) == 5.0
    assert wm.add(7.0, 3.0) == 5.0
    assert wm.add(9.0, 10.5) == 7.0  # the 5.0 of second 0 is out of the window
    assert wm.add(8.0, 21.0) == 8.0


def _upload(fd: FlowDelay, rtt_of: object, seconds: float, step: float = 0.002) -> int:
    """A flow sending up at one frame per step for seconds; each frame's TSval is the ms it
    went, its ACK comes down rtt_of(t) later. The frames dropped."""
    assert callable(rtt_of)
    acks: list[tuple[float, int]] = []
    dropped = 0
    t = 0.0
    while t < seconds:
        while acks and acks[0][0] <= t:
            _, echo = acks.pop(0)
            fd.down(frame(src=B, dst=A, sport=5201, dport=40000, payload=0, ts=(1, echo)), t)
        tsval = int(t * 1000)
        if fd.up(frame(ts=(tsval, 1)), t):
            dropped += 1
        else:
            acks.append((t + rtt_of(t), tsval))
        t += step
    return dropped


def test_upload_with_a_steady_round_trip_is_left_alone() -> None:
    """No queue: the round trip stays at its smallest, nothing is dropped."""
    fd = FlowDelay(0, 0.005)
    assert _upload(fd, lambda t: 0.040, 3.0) == 0


def test_upload_whose_round_trip_grows_loses_frames() -> None:
    """A standing queue of 60 ms after the first second: frames of that flow are dropped,
    more than one (CoDel's control law), and only after an interval above target."""
    fd = FlowDelay(0, 0.005)
    dropped = _upload(fd, lambda t: 0.040 if t < 1.0 else 0.100, 3.0)
    assert dropped >= 3
    assert fd.dropped_up == dropped and fd.dropped_down == 0
    assert "up: queue 60.0 ms median" in fd.summary()


def test_upload_is_left_alone_by_default() -> None:
    """Without target_up (the default) the same growing round trip drops nothing."""
    fd = FlowDelay(0.005)
    assert _upload(fd, lambda t: 0.040 if t < 1.0 else 0.100, 3.0) == 0
    assert fd.flows() == 0 and "up: no samples, 0 dropped" in fd.summary()


def _download(fd: FlowDelay, owd_of: object, seconds: float, hz: int = 1000) -> int:
    """A flow sending down, TSval ticking hz per second, arriving owd_of(t) after it was
    sent. The frames dropped."""
    assert callable(owd_of)
    dropped = 0
    t = 0.0
    while t < seconds:
        arrive = t + owd_of(t)
        tsval = (int(t * hz) + 0xFFFFFF00) & 0xFFFFFFFF  # wraps during the run
        if fd.down(frame(src=B, dst=A, sport=5201, dport=40000, ts=(tsval, 3)), arrive):
            dropped += 1
        t += 0.002
    return dropped


def test_download_whose_one_way_delay_grows_loses_frames() -> None:
    """The sender's ms clock against ours: 50 ms of queue after 1.5 s is seen, dropped."""
    fd = FlowDelay(0.005)
    assert _download(fd, lambda t: 0.020 if t < 1.5 else 0.070, 4.0) >= 3
    assert fd.dropped_down >= 3 and fd.dropped_up == 0


def test_download_queue_built_in_slow_start_is_seen() -> None:
    """A queue that grows by 200 ms in the flow's first second (slow start into a full
    window) and stays: the clock still passes as ms, the smallest delay is the first
    packet's, and the standing queue is cut."""
    fd = FlowDelay(0.005)
    assert _download(fd, lambda t: 0.020 + min(t, 1.0) * 0.2, 4.0) >= 3


def test_download_steady_is_left_alone() -> None:
    """A constant one-way delay: nothing dropped."""
    assert _download(FlowDelay(0.005), lambda t: 0.020, 4.0) == 0


def test_download_with_a_clock_not_in_ms_is_left_alone() -> None:
    """A sender whose timestamps tick 250 times a second is not timed: no drops, even with a
    growing queue."""
    fd = FlowDelay(0.005)
    assert _download(fd, lambda t: 0.020 if t < 1.5 else 0.070, 4.0, hz=250) == 0


def test_acks_and_segments_without_timestamps_pass() -> None:
    """Pure ACKs and segments without the option are never dropped, whatever the delay."""
    fd = FlowDelay(0.001, 0.001)
    for i in range(2000):
        t = i * 0.002
        assert not fd.up(frame(ts=None), t)
        assert not fd.down(frame(payload=0, ts=(i, 0)), t)


def test_flows_are_bounded() -> None:
    """A peer sending from many ports cannot make the state grow past MAX_FLOWS."""
    fd = FlowDelay(0.005)
    for port in range(flowdelay.MAX_FLOWS + 50):
        fd.down(frame(src=B, dst=A, sport=port % 65536, ts=(port, 0)), port * 0.001)
    assert fd.flows() == flowdelay.MAX_FLOWS


BASE = (
    "[site]\nname = site-b\n[remote]\nhost = gw.example.net\nuser = pppssh\n"
    "identity = id_ed25519\nknown_hosts = known_hosts\n"
    "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
    "[networks]\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
)


def _parse(extra: str) -> SiteConfig:
    """BASE with extra lines at the end of [remote], parsed."""
    return parse(BASE.replace("[ppp]", extra + "[ppp]"), Path("site-b.conf"))


def test_delay_target_key_turns_vj_off() -> None:
    """delay_target, the window targets and the pump's queue each mean novj on the local
    pppd; without any, no novj."""
    nothing = "delay_target = 0\ntcp_notsent_lowat = 0\nwindow_target = 0\nwindow_target_up = 0\n"
    off, on = _parse(nothing), _parse("")
    assert (off.delay_target, on.delay_target, on.delay_target_up) == (0, 12, 0)
    assert (on.window_target, on.window_target_up) == (3, 5)
    assert "novj" not in plan.local_pppd_argv(off, 3)
    assert "novj" in plan.local_pppd_argv(on, 3)
    for extra in ("tcp_notsent_lowat = 16384\n", "delay_target_up = 20\n", "window_target = 3\n",
                  "window_target_up = 5\n"):  # fmt: skip
        quiet = nothing.replace(extra.split()[0] + " = 0\n", "")
        assert "novj" in plan.local_pppd_argv(_parse(quiet + extra), 3)
    assert "novj" in plan.local_pppd_argv(_parse("delay_target = 0\n"), 3)  # the pump's queue


def test_delay_target_out_of_range_is_refused() -> None:
    """A one-line error naming the file, line and key."""
    with pytest.raises(ConfigError, match=r"site-b.conf:8: delay_target: .*5000"):
        _parse("delay_target = 5000\n")


def test_bridge_drops_only_whole_frames_of_the_queued_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the Bridge: frames from the channel, cut anywhere across reads, reach the pty
    whole; once the flow's one-way delay has grown, some of its frames are left out, and
    another flow's frames (no timestamps) all arrive."""
    import asyncio

    from pppssh import bridge as bridge_mod

    clock = [0.0]
    monkeypatch.setattr(bridge_mod.time, "monotonic", lambda: clock[0])

    async def run() -> tuple[bridge_mod.Bridge, list[bytes]]:
        """Feed 3 s of a download and an untimed flow beside it."""
        b = bridge_mod.Bridge()
        b.delay_control(0.005)
        sent: list[bytes] = []
        t = 0.0
        while t < 3.0:
            owd = 0.020 if t < 1.5 else 0.080
            clock[0] = t + owd
            timed = frame(B, A, 5201, 40000, payload=600, ts=(int(t * 1000), 3))
            other = frame(src=B, dst=A, sport=22, dport=50000, payload=40, ts=None)
            data = timed + other
            sent += [timed, other]
            cut = len(data) // 3  # a read boundary inside the first frame
            b.data_received(data[:cut], None)  # type: ignore[arg-type]
            b.data_received(data[cut:], None)  # type: ignore[arg-type]
            t += 0.004  # under the 1 MiB held while no pty is attached
        return b, sent

    b, sent = asyncio.run(run())
    got = [body for body in bytes(b._outbuf).split(b"~") if body]
    bodies = [f.strip(b"~") for f in sent]
    others = [body for body in bodies[1::2]]
    assert [body for body in got if body in others] == others  # all, in order
    assert 0 < b.frames_dropped() == len(bodies) - len(got)
    assert all(body in bodies for body in got)  # every frame whole
    assert b.frames_dropped() == b._flowdelay.dropped_down  # type: ignore[union-attr]


def test_no_drops_while_the_ssh_connection_recovers_a_loss() -> None:
    """The same growing queue while the SSH socket keeps losing segments (a lossy WAN: the
    delay is head-of-line blocking in the outer TCP): nothing is dropped, the frames CoDel
    would have dropped are counted as held; with a steady counter the drops come back."""
    clock = {"t": 0.0}

    def lossy() -> int:
        """A loss every 150 ms."""
        return int(clock["t"] / 0.150)

    fd = FlowDelay(0.005, losses=lossy)
    real = fd.down

    def down(frame_: bytes, now: float) -> bool:
        clock["t"] = now
        return real(frame_, now)

    fd.down = down  # type: ignore[method-assign]
    assert _download(fd, lambda t: 0.020 if t < 1.5 else 0.070, 4.0) == 0
    assert fd.held > 0 and "kept while the SSH connection recovered a loss" in fd.summary()

    steady = FlowDelay(0.005, losses=lambda: 7)
    assert _download(steady, lambda t: 0.020 if t < 1.5 else 0.070, 4.0) >= 3
    assert steady.held == 0


def test_tcp_losses_reads_a_tcp_socket() -> None:
    """A fresh TCP connection has lost nothing; a UDP socket has no such counters."""
    import socket

    from pppssh.queues import tcp_losses

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert tcp_losses(client) == 0
        assert tcp_losses(udp) is None
    finally:
        for s in (server, client, accepted, udp):
            s.close()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.floats(0, 100))
def test_any_bytes_from_the_peer_never_raise(data: bytes, now: float) -> None:
    """Whatever the peer sends, parsing and both decisions answer without raising."""
    fd = FlowDelay(0.005, 0.005)
    for frame_ in (data, b"~\xff\x03\x00\x21" + data + b"~", b"~\x21" + data, b"~\x57" + data):
        parse_frame(frame_)
        fd.down(frame_, now)
        fd.up(frame_, now)
