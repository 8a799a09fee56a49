"""Issue: `pppssh status --format prometheus` on a real link: the kernel's counters of pppN
grow with a ping across, the link is up, the SSH keepalive's round trip is measured, and a
killed remote pppd counts as a reconnect; the file for node-exporter is replaced whole."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from tests.lab.netlab import WS_B, Lab, wait_for
from tests.lab.test_tunnel import pppssh, show, stop_all
from tests.test_metrics import parse

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

SITE = "site-b"
Families = dict[str, tuple[str, list[tuple[dict[str, str], float]]]]


def scrape(lab: Lab) -> Families:
    """The metrics as node-exporter would read them, strictly parsed."""
    proc = pppssh(lab, "status", "--format", "prometheus")
    assert proc.returncode == 0 and proc.stderr == "", show(proc)
    return parse(proc.stdout)


def one(families: Families, name: str) -> tuple[dict[str, str], float]:
    """The one sample of a family (one site runs)."""
    samples = families[name][1]
    assert len(samples) == 1, (name, samples)
    return samples[0]


def test_prometheus_metrics_of_a_running_link(lab: Lab, stop_all: None) -> None:
    """Up 1 with the link's pppN; bytes and packets both ways grow by at least what 20 pings
    of 1000 bytes carried; the keepalive RTT is a time; the .prom file is 0644 and whole;
    the remote pppd killed: reconnects 1, the last change later than before."""
    conf = lab.write_site_conf(
        SITE, site_reconnect_delay="1", site_reconnect_delay_max="2",
        remote_keepalive_interval="1",
    )  # fmt: skip
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)

    # the first keepalive is timed as soon as the link is up, then every second
    first: Families = {}

    def measured() -> bool:
        nonlocal first
        first = scrape(lab)
        return bool(first["pppssh_ssh_keepalive_rtt_seconds"][1])

    assert wait_for(measured, timeout=20, interval=0.5), first
    assert one(first, "pppssh_up") == ({"site": SITE}, 1)
    labels, rtt = one(first, "pppssh_ssh_keepalive_rtt_seconds")
    assert labels == {"site": SITE} and 0 < rtt < 5
    info, _ = one(first, "pppssh_link_info")
    ifname = info["interface"]
    assert ifname.startswith("ppp") and info["remote_address"] == "192.168.77.2", info
    assert one(first, "pppssh_reconnects_total") == ({"site": SITE}, 0)

    count, size = 20, 1000
    ping = ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-s", str(size), WS_B]
    assert lab.run("ws-a", ping, check=False).returncode == 0
    # as the textfile collector's timer writes it: a whole file, 0644, no temporary left
    prom = lab.dir / "pppssh.prom"
    wrote = pppssh(lab, "status", "--format", "prometheus", "--output", str(prom))
    assert wrote.returncode == 0 and wrote.stdout == wrote.stderr == "", show(wrote)
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [p.name for p in lab.dir.iterdir() if p.name.startswith(".pppssh.prom")] == []
    after = parse(prom.read_text())
    carried = count * (size + 28)
    for family, least in (("bytes", carried), ("packets", count)):
        for way in ("receive", "transmit"):
            name = f"pppssh_{way}_{family}_total"
            (was_labels, was), (now_labels, now) = one(first, name), one(after, name)
            assert was_labels == now_labels == {"site": SITE, "interface": ifname}
            assert now - was >= least, (name, was, now)
    assert one(after, "pppssh_up") == ({"site": SITE}, 1)

    _, changed = one(after, "pppssh_last_change_timestamp_seconds")
    assert changed <= time.time()
    remote_pppd = lab.pids("gw-b", "pppd")
    assert len(remote_pppd) == 1, remote_pppd
    os.kill(remote_pppd[0], signal.SIGKILL)
    lost: Families = {}

    def reconnected() -> bool:
        nonlocal lost
        lost = scrape(lab)
        return one(lost, "pppssh_reconnects_total")[1] == 1

    assert wait_for(reconnected, timeout=45, interval=0.5), lost
    assert one(lost, "pppssh_last_change_timestamp_seconds")[1] > changed
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
