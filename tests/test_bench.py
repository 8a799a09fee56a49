"""The benchmarks' arithmetic: percentiles, ping and iperf3 parsing, medians and ratios; the
WAN benchmark's profiles, floor, table, socket probe parsing and PNG writer."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest

from bench import wan
from bench.lab import Sample, iperf_mbit, percentile, ping_rtts, summary, table

PING = """\
PING 10.2.0.10 (10.2.0.10) 56(84) bytes of data.
64 bytes from 10.2.0.10: icmp_seq=1 ttl=62 time=3.41 ms
64 bytes from 10.2.0.10: icmp_seq=2 ttl=62 time=12.0 ms
64 bytes from 10.2.0.10: icmp_seq=4 ttl=62 time=0.987 ms

--- 10.2.0.10 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 301ms
rtt min/avg/max/mdev = 0.987/5.465/12.000/4.800 ms
"""


def test_ping_rtts_reads_each_reply_only() -> None:
    assert ping_rtts(PING) == [3.41, 12.0, 0.987]
    assert ping_rtts("connect: Network is unreachable\n") == []


def test_percentile_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([5.0, 1.0], 99) == 5.0
    assert percentile([7.0], 1) == 7.0
    with pytest.raises(ValueError):
        percentile([], 99)


def test_iperf_mbit() -> None:
    report = {"end": {"sum_received": {"bits_per_second": 12_500_000.0, "bytes": 9_375_000}}}
    assert iperf_mbit(json.dumps(report)) == (12.5, 9_375_000)
    with pytest.raises(KeyError):
        iperf_mbit('{"error": "unable to connect"}')


def test_summary_medians_and_ratios_skip_failed_rounds() -> None:
    samples = [
        Sample("HOWTO", up_seconds=10.0, mbit_up=20.0, rss_mb=None),
        Sample("HOWTO", up_seconds=12.0, mbit_up=22.0),
        Sample("HOWTO", error="no link"),
        Sample("pppssh", up_seconds=6.0, mbit_up=24.0, rss_mb=30.0),
        Sample("pppssh", up_seconds=8.0, mbit_up=26.0, rss_mb=32.0),
    ]
    result = summary(samples)
    assert result["HOWTO"]["up_seconds"] == 11.0 and result["pppssh"]["up_seconds"] == 7.0
    assert result["ratio"]["up_seconds"] == pytest.approx(7 / 11)
    assert result["ratio"]["mbit_up"] == pytest.approx(25 / 21)
    assert result["ratio"]["rss_mb"] is None  # nothing to compare it with
    text = table(result, veth_mbit=300.0)
    assert "command to routes on both sides" in text and "0.64" in text
    assert "(bare WAN veth, same kernel: 300 Mbit/s)" in text


# --- the WAN benchmark (bench/wan.py) -------------------------------------------------------


def test_profile_queue_drain_time_and_floor() -> None:
    four = wan.PROFILES["4mbit"]
    assert four.queue_ms() == pytest.approx(20 * 1514 * 8 / 4e6 * 1000)  # 60.56 ms
    assert wan.PROFILES["20mbit"].queue_ms() == pytest.approx(four.queue_ms() / 5)
    assert wan.PROFILES["unshaped"].queue_ms() == 0.0
    assert wan.floor_ms(44.0, four) == pytest.approx(44.0 + 60.56)
    assert wan.floor_ms(3.0, wan.PROFILES["unshaped"]) == 3.0
    assert wan.floor_ms(None, four) is None


def test_shaping_commands() -> None:
    lossy = wan.shaping_commands(wan.PROFILES["8mbit-loss"], "to-b")
    assert lossy[0] == ["tc", "qdisc", "del", "dev", "to-b", "root"]
    netem, tbf = " ".join(lossy[1]), " ".join(lossy[2])
    assert "root handle 1: netem delay 20ms limit 10000 loss 1%" in netem
    assert "parent 1:1 handle 10: tbf rate 8mbit burst 10000 limit 30280" in tbf
    four = wan.shaping_commands(wan.PROFILES["4mbit"], "to-a")
    assert "loss" not in " ".join(four[1]) and "burst 5000 " in " ".join(four[2])
    assert wan.shaping_commands(wan.PROFILES["unshaped"], "to-a") == [
        ["tc", "qdisc", "del", "dev", "to-a", "root"]
    ]


def test_rtt_stats_and_ping_series() -> None:
    assert wan.rtt_stats([float(x) for x in range(1, 11)]) == {"p50": 5.0, "p90": 9.0, "max": 10.0}
    assert wan.rtt_stats([]) == {"p50": None, "p90": None, "max": None}
    assert wan.ping_series(PING) == [(1, 3.41), (2, 12.0), (4, 0.987)]


def _wan_sample(path: str, up: float, p50: float, idle: float = 40.0) -> wan.Sample:
    """One round on the 4mbit profile with the given throughput and loaded p50."""
    stats: dict[str, float | None] = {"p50": p50, "p90": p50 * 2, "max": p50 * 3}
    return wan.Sample("4mbit", path, mbit_up=up, mbit_down=up, idle={"p50": idle, "p90": idle},
                      load_up=stats, load_down=dict(stats))  # fmt: skip


def test_wan_summary_ratios_and_floor() -> None:
    samples = [
        _wan_sample("HOWTO", 3.0, 200.0),
        _wan_sample("HOWTO", 3.6, 100.0),
        _wan_sample("HOWTO", 3.3, 150.0),
        _wan_sample("pppssh", 3.5, 300.0, idle=42.0),
        wan.Sample("4mbit", "pppssh", error="no link"),
        _wan_sample("pppssh", 3.7, 400.0, idle=44.0),
        _wan_sample("unshaped-only", 9.0, 1.0),
    ]
    summary = wan.summary(samples, wan.PROFILES["4mbit"])
    result: dict[str, Any] = summary
    assert result["HOWTO"]["mbit_up"] == 3.3  # the median of three
    assert result["pppssh"]["load_up.p50"] == 350.0  # the failed round does not count
    assert result["ratio"]["load_up.p50"] == pytest.approx(350 / 150)
    assert result["ratio"]["load_down.max"] == pytest.approx(1050 / 450)
    floor = 43.0 + wan.PROFILES["4mbit"].queue_ms()
    assert result["pppssh_floor"] == pytest.approx(floor)
    assert result["pppssh_over_floor"]["load_up.p90"] == pytest.approx(700 / floor)
    text = wan.table(summary)
    assert "RTT under upload p50" in text and "2.33" in text
    assert f"pppssh {floor:.0f} ms" in text


def test_parse_probe_reads_socket_and_qdisc() -> None:
    out = (
        "@ 100.0\n"
        "0      524288 198.51.100.1:40000 198.51.100.2:22\n"
        "\t skmem:(r0,rb131072,t0,tb2626560) cubic rtt:61.2/3.1 cwnd:24 unacked:17"
        " notsent:491000 delivered:9\n"
        "qdisc pfifo_fast 0: root refcnt 2 bands 3 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1\n"
        " Sent 1000 bytes 10 pkt (dropped 0, overlimits 0 requeues 0)\n"
        " backlog 4200b 3p requeues 0\n"
        "@ 100.2\n"
    )
    ticks = wan.parse_probe(out)
    assert ticks[0] == {"t": 100.0, "recv_q": 0.0, "send_q": 524288.0, "rtt": 61.2, "cwnd": 24.0,
                        "unacked": 17.0, "notsent": 491000.0, "ppp_backlog": 4200.0,
                        "ppp_backlog_p": 3.0, "ppp_dropped": 0.0}  # fmt: skip
    assert ticks[1] == {"t": 100.2}
    more = out + " Sent 9000 bytes 70 pkt (dropped 5, overlimits 0 requeues 0)\n"
    assert wan.probe_summary(wan.parse_probe(more), 4)["ppp_dropped"] == {"during": 5.0, "n": 2.0}
    assert wan.parse_probe("@ 1.5\n0 0 a:1 b:22\n\t cubic rtt:40/2 cwnd:10\n")[0] == {
        "t": 1.5, "recv_q": 0.0, "send_q": 0.0, "rtt": 40.0, "cwnd": 10.0,
        "notsent": 0.0, "unacked": 0.0,
    }  # fmt: skip
    router = wan.parse_probe(
        "@ 2.0\n# to-a\nqdisc netem 1: root refcnt 2 limit 10000 delay 20ms\n"
        " backlog 9000b 6p requeues 0\nqdisc tbf 10: parent 1:1 rate 4Mbit\n"
        " backlog 28000b 19p requeues 0\n# to-b\nqdisc netem 1: root\n backlog 0b 0p\n"
        "qdisc tbf 10: parent 1:1\n backlog 1514b 1p requeues 0\n"
    )
    assert router == [{"t": 2.0, "wan_queue_down": 28000.0, "wan_queue_up": 1514.0}]
    got = wan.probe_summary(ticks, mbit=4)
    assert got["notsent"]["p50_ms"] == pytest.approx(491000 * 8 / 4e6 * 1000)
    assert got["cwnd"] == {"p50": 24.0, "max": 24.0, "n": 1.0}
    table = wan.probe_table(
        {
            "pppssh": {"upload": {"mbit": 3.5, "rtt": {"p50": 90, "p90": 99}, "gw-a": got}},
            "HOWTO": {"error": "x"},
        }
    )
    assert "gw-a SSH socket notsent" in table and "=   982 ms" in table
    assert "HOWTO: no probe" in table


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the raw scanlines of an 8-bit RGB PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body = data[pos + 4 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            body
        )
        chunks[body[:4]] = body[4:]
        pos += 12 + length
    width, height, depth, kind = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, kind) == (8, 2) and b"IEND" in chunks
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_png_writer_round_trips_pixels() -> None:
    canvas = wan.Canvas(5, 3)
    canvas.dot(4, 2, (1, 2, 3))
    canvas.dot(9, 9, (7, 7, 7))  # outside: ignored
    canvas.line(0, 0, 2, 0, (10, 20, 30))
    width, height, raw = _png_pixels(canvas.png())
    assert (width, height, len(raw)) == (5, 3, 3 * (1 + 15))
    assert raw[0] == 0 and raw[1:10] == bytes((10, 20, 30)) * 3 and raw[10:13] == bytes(wan.WHITE)
    assert raw[-3:] == bytes((1, 2, 3))


def test_plot_draws_both_paths() -> None:
    samples = [_wan_sample("HOWTO", 3.0, 100.0), _wan_sample("pppssh", 3.0, 300.0)]
    samples[0].series_up = [(1, 90.0), (2, 120.0), (4, 100.0)]
    samples[1].series_up = [(1, 250.0), (3, 400.0)]
    width, height, raw = _png_pixels(wan.plot(samples, wan.PROFILES["4mbit"], floor=100.0))
    assert (width, height) == (960, 640)
    for color in (wan.COLORS["HOWTO"], wan.COLORS["pppssh"], wan.COLORS["floor"]):
        assert bytes(color) in raw
    assert wan.nice_step(600) == 200 and wan.nice_step(14) == 5 and wan.nice_step(0.5) == 0.1
