"""The pump's delay control on a shaped WAN: a router between the gateways with the benchmark's
4 Mbit/s profile (20 ms each way, a 20-packet queue). A download from ws-b fills the remote
pty, sshd and the WAN queue; with the default delay_target the pump measures that queue from
the flow's own TCP timestamps in real pppd frames (escaped, with the address and protocol
fields as pppd negotiated them, a Linux sender's clock) and drops frames of that flow, and the
transfer still completes. With delay_target = 0 (and the pump's queue and the window clamp
off) the control is off: no summary, no novj. gw-a's ppp interface has fq_codel when asked,
else the kernel's pfifo_fast. The window clamp (the default) narrows the windows of a
download's ACKs going up and an upload's coming down, and both kernels take them.
Counts, never times, are asserted.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.wan import PROFILES, load_modules, shape
from tests.lab.netlab import WS_B, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, pppssh, show
from tests.lab.test_tunnel import stop_all as stop_all  # the fixture, used by name

pytestmark = pytest.mark.lab

SITE = "site-b"
SUMMARY = re.compile(
    r"delay control: target 12 ms down, 0 ms up(?:; window target [^;]*?)?, "
    r"\d+ flows, \d+ frames above it kept while "
    r"the SSH connection recovered a loss; up: no samples, 0 dropped; "
    r"down: queue ([\d.]+) ms median, ([\d.]+) ms p90 \((\d+) samples\), (\d+) dropped"
)


@pytest.fixture
def shaped(lab: Lab) -> Iterator[str]:
    """The routed WAN, shaped to 4 Mbit/s each way, for the test."""
    load_modules(lab)
    with lab.routed_wan() as router:
        shape(lab, router, PROFILES["4mbit"])
        yield router


def iperf(lab: Lab, seconds: int, *options: str) -> subprocess.CompletedProcess[str]:
    """iperf3 from ws-a to its server on ws-b through the link for seconds, with options."""
    server = lab.spawn("ws-b", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: ":5201" in lab.run("ws-b", ["ss", "-Htln"]).stdout, timeout=10)
        return lab.run("ws-a", ["iperf3", "-c", WS_B, *options, "-t", str(seconds)],
                       check=False, timeout=seconds + 60)  # fmt: skip
    finally:
        server.kill()
        server.wait()


def download(lab: Lab, seconds: int) -> subprocess.CompletedProcess[str]:
    """iperf3 ws-b -> ws-a through the link for seconds."""
    return iperf(lab, seconds, "-R")


def upload(lab: Lab, seconds: int) -> subprocess.CompletedProcess[str]:
    """iperf3 ws-a -> ws-b through the link for seconds."""
    return iperf(lab, seconds)


def local_pppd_args(lab: Lab) -> str:
    """The command line of gw-a's pppd."""
    return lab.run("gw-a", ["pgrep", "-a", "pppd"]).stdout


def ppp_qdisc(lab: Lab) -> str:
    """The root qdisc of gw-a's (one) ppp interface."""
    shown = lab.run("gw-a", ["tc", "qdisc", "show"]).stdout
    kinds = [line.split()[1] for line in shown.splitlines() if " dev ppp" in line]
    assert len(kinds) == 1, shown
    return kinds[0]


def stop_reading_log(lab: Lab) -> str:
    """Stop the site; its daemon log, read through a descriptor opened before (a clean stop
    removes the file after its last lines)."""
    with Path(RUN_DIR / f"{SITE}.log").open(errors="replace") as log:
        stopped = pppssh(lab, "stop", SITE)
        said = log.read()
    assert stopped.returncode == 0, show(stopped)
    return said


def test_download_queue_is_measured_and_cut(lab: Lab, stop_all: None, shaped: str) -> None:
    """Default delay_target without the window clamp (plus qdisc = fq_codel): frames of the
    download are dropped, the transfer completes, novj is on, the ppp interface has
    fq_codel; delay_target = 0 without the pump's queue and the clamp, qdisc left to the
    kernel: none of it."""
    no_clamp = {"remote_window_target": 0, "remote_window_target_up": 0}
    conf = lab.write_site_conf(SITE, ppp_qdisc="fq_codel", **no_clamp)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert " novj " in f" {local_pppd_args(lab)} "
    assert ppp_qdisc(lab) == "fq_codel"
    got = download(lab, 6)
    assert got.returncode == 0 and "receiver" in got.stdout, show(got)
    said = stop_reading_log(lab)
    found = SUMMARY.search(said)
    assert found, said[-2000:]
    samples, dropped = int(found[3]), int(found[4])
    assert samples > 100 and dropped >= 1, found[0]
    assert float(found[2]) > 0, found[0]  # a queue was seen

    conf = lab.write_site_conf(SITE, setup=False, remote_delay_target=0,
                               remote_tcp_notsent_lowat=0, **no_clamp)  # fmt: skip
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert " novj " not in f" {local_pppd_args(lab)} "  # nothing in the pump drops or reorders
    assert ppp_qdisc(lab) == "pfifo_fast"  # qdisc = default: the kernel's, left alone
    got = download(lab, 2)
    assert got.returncode == 0, show(got)
    said = stop_reading_log(lab)
    assert "SSH socket:" in said and "delay control:" not in said, said[-2000:]
    assert no_leftovers(lab) == []


CLAMP = re.compile(
    r"window target 3 ms down, 5 ms up: (\d+) flows narrowed, (\d+) ACKs rewritten, "
    r"(\d+) drains, "
    r"down windows now (\d+) bytes median, up windows now (\d+) bytes median"
)


def checksum_errors(lab: Lab, ns: str) -> int:
    """TCP segments ns's kernel refused for a bad checksum, since boot (TcpInCsumErrors)."""
    shown = lab.run(ns, ["nstat", "-asz", "TcpInCsumErrors"]).stdout
    found = re.search(r"TcpInCsumErrors\s+(\d+)", shown)
    return int(found[1]) if found else 0


def test_windows_are_narrowed_both_ways(lab: Lab, stop_all: None, shaped: str) -> None:
    """window_target = 3, window_target_up = 5: a download's ACKs going up and an upload's
    coming down are rewritten with a narrower window by the pump; the kernels on both sides
    take every one of them (no checksum errors: a bad one would be dropped, and the
    transfer would stall), and both transfers complete."""
    before = {ns: checksum_errors(lab, ns) for ns in ("ws-a", "ws-b")}
    conf = lab.write_site_conf(SITE, remote_window_target=3, remote_window_target_up=5)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert " novj " in f" {local_pppd_args(lab)} "
    for transfer in (download, upload):
        got = transfer(lab, 8)
        assert got.returncode == 0 and "receiver" in got.stdout, show(got)
    said = stop_reading_log(lab)
    found = CLAMP.search(said)
    assert found, said[-2000:]
    narrowed, rewritten = int(found[1]), int(found[2])
    assert narrowed >= 2 and rewritten > 200, found[0]
    assert {ns: checksum_errors(lab, ns) for ns in ("ws-a", "ws-b")} == before
    assert no_leftovers(lab) == []
