"""The benchmark's arithmetic: percentiles, ping and iperf3 parsing, medians and ratios."""

from __future__ import annotations

import json

import pytest

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
