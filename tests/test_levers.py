"""The queue levers' pure logic: frame splitting and classing, CoDel, the pump's frame queue,
window sizing, and the socket options on a real local TCP socket (no timing is asserted)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pppssh import asyncssh_compat, queues
from pppssh.config import _notsent
from pppssh.queues import (
    BULK_FRAME,
    WINDOW_MAX,
    WINDOW_MIN,
    CoDel,
    FrameQueue,
    FrameSplitter,
    channel_window,
    is_bulk,
)


def frame(size: int, fill: bytes = b"x") -> bytes:
    """A frame of size bytes on the wire, ending with its flag."""
    return fill * (size - 1) + b"~"


# ---------------------------------------------------------------- the splitter


def test_splitter_whole_frames_and_the_rest_waits() -> None:
    s = FrameSplitter()
    assert s.feed(b"~abc~de") == [b"~", b"abc~"]
    assert s.pending() == 2
    assert s.feed(b"f~~g") == [b"def~", b"~"]
    assert s.take_pending() == b"g"
    assert s.pending() == 0


def test_splitter_without_flag_holds_everything() -> None:
    s = FrameSplitter()
    assert s.feed(b"no flag here") == []
    assert s.pending() == 12


def test_splitter_keeps_every_byte_in_order() -> None:
    stream = b"~" + b"".join(frame(n) for n in (40, 1500, 3, 700, 1))
    s = FrameSplitter()
    out: list[bytes] = []
    for i in range(0, len(stream), 97):
        out += s.feed(stream[i : i + 97])
    assert b"".join(out) == stream and s.pending() == 0


# ---------------------------------------------------------------- classing


def test_small_frames_are_not_bulk() -> None:
    assert not is_bulk(frame(60))  # a TCP ACK, escaped
    assert not is_bulk(frame(BULK_FRAME))
    assert is_bulk(frame(BULK_FRAME + 1))
    assert is_bulk(frame(1404))


# ---------------------------------------------------------------- CoDel


def test_codel_no_drop_below_target() -> None:
    c = CoDel(target=0.005, interval=0.1)
    assert not any(c.drop(0.004, t / 100, 10_000) for t in range(1000))
    assert c.drops == 0


def test_codel_drops_after_an_interval_above_target_then_faster() -> None:
    c = CoDel(target=0.005, interval=0.1)
    assert not c.drop(0.02, 1.0, 10_000)  # first time above: the interval starts
    assert not c.drop(0.02, 1.05, 10_000)
    assert c.drop(0.02, 1.1, 10_000)  # a whole interval above: the first drop
    assert c.dropping and c.count == 1
    assert not c.drop(0.02, 1.15, 10_000)  # next drop interval/sqrt(1) later
    assert c.drop(0.02, 1.21, 10_000)
    assert c.count == 2
    gap = c.drop_next - 1.2
    assert gap == pytest.approx(0.1 / 2**0.5)  # the control law: interval / sqrt(count)


def test_codel_leaves_dropping_when_delay_falls() -> None:
    c = CoDel(target=0.005, interval=0.1)
    c.drop(0.02, 1.0, 10_000)
    assert c.drop(0.02, 1.1, 10_000)
    assert not c.drop(0.001, 1.2, 10_000)
    assert not c.dropping and c.first_above == 0.0


def test_codel_never_drops_the_last_packet() -> None:
    c = CoDel(target=0.005, interval=0.1, mtu=1500)
    assert not any(c.drop(1.0, t / 10, 1000) for t in range(100))


# ---------------------------------------------------------------- the pump's queue


def test_queue_small_frames_go_first_bulk_in_order() -> None:
    q = FrameQueue(codel=None)
    bulk1, bulk2 = frame(1400, b"a"), frame(1400, b"b")
    ack, ping = frame(60, b"c"), frame(90, b"d")
    q.put([bulk1, ack, bulk2, ping], now=0.0)
    assert len(q) == 4 and q.size == 2950
    assert q.take(10_000, now=0.0) == ack + ping + bulk1 + bulk2
    assert len(q) == 0 and q.size == 0


def test_queue_take_stops_near_room_but_gives_one_frame() -> None:
    q = FrameQueue(codel=None)
    q.put([frame(1400), frame(1400), frame(1400)], now=0.0)
    assert len(q.take(1, now=0.0)) == 1400
    assert len(q.take(1500, now=0.0)) == 2800  # room left after the first: take the next
    assert q.size == 0


def test_queue_codel_drops_whole_bulk_frames_only() -> None:
    q = FrameQueue()
    assert q.codel is not None
    bulk = [frame(1400, bytes([65 + i])) for i in range(20)]
    q.put(bulk, now=0.0)
    q.put([frame(60, b"z")], now=0.0)
    sent = q.take(1400, now=0.5)  # waited 0.5 s: above target, the interval starts
    sent += q.take(1400, now=0.7)  # an interval later: a drop
    assert sent.startswith(frame(60, b"z"))
    assert q.dropped >= 1
    rest = q.take(1 << 20, now=0.7)
    out = FrameSplitter().feed(sent + rest)
    assert all(f in bulk or f == frame(60, b"z") for f in out)  # whole frames, none cut
    assert len(out) == 21 - q.dropped and q.size == 0


# ---------------------------------------------------------------- window sizing


def test_window_unknown_rate_or_rtt_is_openssh_default() -> None:
    assert channel_window(0, 0.04) == WINDOW_MAX
    assert channel_window(4, None) == WINDOW_MAX


def test_window_is_twice_the_bdp_within_bounds() -> None:
    assert channel_window(4, 0.044) == 44_000  # 4 Mbit/s x 44 ms = 22 kB, twice
    assert channel_window(1, 0.001) == WINDOW_MIN
    assert channel_window(10_000, 0.3) == WINDOW_MAX


# ---------------------------------------------------------------- the socket


def test_socket_levers_on_a_local_tcp_connection(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        before = queues.set_congestion(client, "")
        assert before  # the system's default, named
        assert queues.set_congestion(client, "no_such_cc") == before  # falls back silently
        if queues.available_congestion("reno"):
            assert queues.set_congestion(client, "reno") == "reno"
        assert queues.set_notsent_lowat(client, 16384)
        assert client.getsockopt(socket.IPPROTO_TCP, queues.TCP_NOTSENT_LOWAT) == 16384
        assert queues.notsent_bytes(client.fileno()) == 0
        assert queues.set_pacing(client, 4)
        rate = client.getsockopt(socket.SOL_SOCKET, queues.SO_MAX_PACING_RATE)
        assert rate == int(4e6 / 8 * queues.PACING_SHARE)
        rtt = queues.tcp_rtt(client)
        assert rtt is not None and 0 < rtt < 1
    finally:
        for s in (client, peer, server):
            s.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert queues.set_congestion(udp, "bbr") is None
        assert queues.tcp_rtt(udp) is None
    finally:
        udp.close()


def test_available_congestion_reads_the_list_and_modules(tmp_path: Path) -> None:
    proc = tmp_path / "available"
    proc.write_text("reno cubic\n")
    mods = tmp_path / "ipv4"
    mods.mkdir()
    (mods / "tcp_bbr.ko.xz").write_bytes(b"")
    assert queues.available_congestion("cubic", proc, mods)
    assert queues.available_congestion("bbr", proc, mods)
    assert not queues.available_congestion("vegas", proc, mods)


# ---------------------------------------------------------------- asyncssh's window adjust


class FakeChannel:
    """The attributes of asyncssh's SSHChannel that eager_window_adjust relies on."""

    def __init__(self, window: int) -> None:
        """A channel that granted window bytes."""
        self._init_recv_window = window
        self._recv_window = window
        self.sent: list[tuple[int, bytes]] = []
        self.delivered: list[bytes] = []

    def send_packet(self, pkttype: int, *args: bytes) -> None:
        """Record a packet."""
        self.sent.append((pkttype, b"".join(args)))

    def _deliver_data(self, data: bytes, datatype: object) -> None:
        """Record a delivery."""
        self.delivered.append(data)


def test_eager_window_adjust_gives_back_each_step() -> None:
    chan = FakeChannel(40_000)
    assert asyncssh_compat.eager_window_adjust(chan, 5000)
    for _ in range(3):  # as _accept_data does: the window first, then the delivery
        chan._recv_window -= 2000
        chan._deliver_data(b"x" * 2000, None)
    assert chan.sent == [(93, (6000).to_bytes(4, "big"))]
    assert chan._recv_window == 40_000 and len(chan.delivered) == 3


def test_eager_window_adjust_refuses_other_shapes() -> None:
    assert not asyncssh_compat.eager_window_adjust(object(), 100)


def test_eager_window_adjust_fits_installed_asyncssh() -> None:
    chan = asyncssh_compat.asyncssh.SSHClientChannel  # the class the bridge's channel is
    assert callable(getattr(chan, "_deliver_data", None))
    assert callable(getattr(chan, "send_packet", None))
    import inspect

    source = inspect.getsource(asyncssh_compat.asyncssh.channel.SSHChannel._accept_data)
    assert "self._recv_window -= len(data)" in source
    assert "_deliver_data" in source


def test_auto_notsent_limit_follows_the_rate() -> None:
    """tcp_notsent_lowat = auto: 4 ms of the delivery rate, within 8 KiB and 256 KiB."""
    assert queues.auto_notsent(None) == queues.AUTO_MIN
    assert queues.auto_notsent(500_000) == 8192  # 4 Mbit/s: 2 KB, the floor
    assert queues.auto_notsent(10_000_000) == 40_000  # 80 Mbit/s
    assert queues.auto_notsent(10**9) == 256 * 1024
    for text, value in (("auto", queues.NOTSENT_AUTO), ("AUTO", -1), ("0", 0), ("4096", 4096)):
        assert _notsent(text) == value
    for bad in ("-1", "lots", "16777217"):
        with pytest.raises(ValueError, match=r"\(or auto\)"):
            _notsent(bad)


def test_delivery_rate_of_a_real_socket() -> None:
    """TCP_INFO's delivery rate is there once data went through (loopback); None on a
    socket that is not TCP."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    with server, client, peer:
        client.sendall(b"x" * 200_000)
        got = 0
        while got < 200_000:
            got += len(peer.recv(65536))
        rate = queues.tcp_delivery_rate(client)
        assert rate is not None and rate > 0
    with socket.socket(socket.AF_UNIX) as unix:
        assert queues.tcp_delivery_rate(unix) is None
