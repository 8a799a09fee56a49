"""Issue: `pppssh status --format prometheus` on a real link: the kernel's counters of pppN
grow with a ping across, the link is up, the SSH keepalive's round trip is measured, and a
killed remote pppd counts as a reconnect; the file for node-exporter is replaced whole."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netlab import WS_B, Lab, wait_for
from tests.lab.test_tunnel import pppssh, show, stop_all
from tests.test_metrics import parse

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

REPO = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- the textfile-collector pair

UNIT_DIR = Path("/etc/systemd/system")
WRAPPER = Path("/usr/local/bin/pppssh")
COLLECTOR = Path("/var/lib/prometheus/node-exporter")
# The lab's links are in gw-a, and the lab's Python is under /root: the drop-in puts the
# service in gw-a, with a sysfs mounted from gw-a as its /sys (systemd 252 does not remount
# /sys for NetworkNamespacePath=, and sysfs shows the network devices of the namespace that
# mounted it), and lets it read /root (ProtectHome=yes hides it; installed system-wide,
# pppssh does not need that). On a gateway the service and the links share the host's
# namespace, and none of this is needed.
GW_A_SYS = Path("/run/pppssh-lab-sys-gw-a")
LAB_DROP_IN = f"""\
# pppssh lab: the service runs in the lab's gw-a, and may read the lab's Python under /root
[Service]
NetworkNamespacePath=/run/netns/gw-a
BindReadOnlyPaths={GW_A_SYS}:/sys
ProtectHome=no
"""


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemctl with args; capture its output."""
    argv = ["systemctl", "--no-pager", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.uml_systemd
def test_metrics_unit_writes_the_collector_file(lab: Lab, stop_all: None) -> None:
    """pppssh-metrics.service as shipped, hardening and all, under systemd 252: it writes
    pppssh.prom whole (0644, a new file each run, no temporary left) with the running site's
    counters of pppN; the timer is accepted and waits; with no site, pppssh_up has none."""
    assert Path("/proc/1/comm").read_text().strip() == "systemd", "needs systemd as PID 1"
    WRAPPER.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pppssh "$@"\n')
    WRAPPER.chmod(0o755)
    for name in ("pppssh-metrics.service", "pppssh-metrics.timer"):
        shutil.copyfile(REPO / "systemd" / name, UNIT_DIR / name)
    drop_ins = UNIT_DIR / "pppssh-metrics.service.d"
    drop_ins.mkdir(exist_ok=True)
    (drop_ins / "lab.conf").write_text(LAB_DROP_IN)
    COLLECTOR.mkdir(mode=0o755, parents=True, exist_ok=True)
    GW_A_SYS.mkdir(exist_ok=True)
    mount = ["nsenter", "--net=/run/netns/gw-a", "mount", "-t", "sysfs", "sysfs", str(GW_A_SYS)]
    subprocess.run(mount, check=True, capture_output=True)
    assert systemctl("daemon-reload").returncode == 0
    prom = COLLECTOR / "pppssh.prom"
    try:
        conf = lab.write_site_conf(SITE)
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        ran = systemctl("start", "pppssh-metrics.service")
        assert ran.returncode == 0, ran.stderr + journal()
        assert stat.S_IMODE(prom.stat().st_mode) == 0o644
        families = parse(prom.read_text())
        assert one(families, "pppssh_up") == ({"site": SITE}, 1), journal()
        labels, received = one(families, "pppssh_receive_packets_total")
        assert labels["interface"].startswith("ppp") and received > 0, families
        first = prom.stat().st_ino
        assert systemctl("start", "pppssh-metrics.service").returncode == 0
        assert prom.stat().st_ino != first
        assert sorted(p.name for p in COLLECTOR.iterdir()) == ["pppssh.prom"]
        timer = systemctl("start", "pppssh-metrics.timer")
        assert timer.returncode == 0, timer.stderr
        assert systemctl("is-active", "pppssh-metrics.timer").stdout.strip() == "active"
        stopped = pppssh(lab, "stop", SITE)
        assert stopped.returncode == 0, show(stopped)
        assert systemctl("start", "pppssh-metrics.service").returncode == 0
        assert parse(prom.read_text())["pppssh_up"][1] == []
    finally:
        systemctl("stop", "pppssh-metrics.timer")
        subprocess.run(["umount", str(GW_A_SYS)], check=False)


def journal() -> str:
    """The metrics service's journal, for assertion messages."""
    argv = ["journalctl", "--no-pager", "-o", "cat", "-u", "pppssh-metrics.service"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
