"""The tunnel end to end: real sshd, real sudo, real pppd at both ends, real kernel PPP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_B_WAN, PPP_LOCAL, PPP_REMOTE, WS_A, WS_B, Lab, wait_for

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path("/run/pppssh")
REMOTE = f"[vpn@{GW_B_WAN}]"


def pppssh(
    lab: Lab, *args: str, ns: str = "gw-a", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the pppssh command line on a gateway, as root, the way an admin would."""
    return lab.run(
        ns,
        [sys.executable, "-m", "pppssh", *args],
        check=False,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO)},
    )


def show(proc: subprocess.CompletedProcess[str]) -> str:
    """Both output streams, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture
def stop_all(lab: Lab) -> Iterator[None]:
    """Whatever a test leaves running is stopped through pppssh itself afterwards."""
    yield
    pppssh(lab, "stop", "--all")


def ppp_link(lab: Lab, ns: str, local: str, peer: str) -> str:
    """The name of the ppp interface in ns with these addresses; fails if there is none."""
    links = lab.ppp_links(ns)
    for link in links:
        if link["local"] == local and link["peer"] == peer:
            assert link["name"] and re.fullmatch(r"ppp\d+", link["name"]), links
            return link["name"]
    raise AssertionError(f"no ppp link {local} -> {peer} in {ns}: {links}")


def open_fds(pid: int) -> list[str]:
    """What a process holds open, by kind (file descriptor numbers may be reused in any order);
    not the state file's temporary, open only while the state file is replaced."""
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("/run/pppssh/") and target.endswith(".tmp"):
            continue
        kinds.append(re.sub(r"\[\d+\]|\d+$", "", target))
    return sorted(kinds)


def no_leftovers(lab: Lab) -> list[str]:
    """pppd processes, ppp interfaces, routes and state files that should be gone."""
    found = lab.leftovers()
    found += [f"state file {p}" for p in RUN_DIR.glob("*.json")]
    return found


def test_start_ping_status_stop(lab: Lab, stop_all: None) -> None:
    """The whole HOWTO, done by pppssh: link, routes both sides, traffic, clean teardown."""
    conf = lab.write_site_conf("site-b")
    assert not lab.ping("ws-a", WS_B), "the lab must not route between the LANs by itself"

    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    out = started.stdout
    assert "remote pppd started" in out
    assert re.search(r"link up: ppp\d+ 192\.168\.77\.1 -> 192\.168\.77\.2", out), out
    assert re.search(
        r"^\[#\] ip route add 10\.2\.0\.0/24 via 192\.168\.77\.2 dev ppp\d+$", out, re.M
    )
    remote_add = rf"^{re.escape(REMOTE)} route add 10\.1\.0\.0/24 via 192\.168\.77\.1$"  # helper
    assert re.search(remote_add, out, re.M), out

    # Returned means up: no waiting here.
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    assert f"10.2.0.0/24 via {PPP_REMOTE} dev {if_a}" in lab.routes("gw-a")
    assert f"10.1.0.0/24 via {PPP_LOCAL} dev {if_b}" in lab.routes("gw-b")
    assert lab.ping("ws-a", WS_B, count=3), "ws-a cannot reach ws-b through the tunnel"
    assert lab.ping("ws-b", WS_A, count=3), "ws-b cannot reach ws-a through the tunnel"
    assert len(lab.pids("gw-a", "pppd")) == 1
    assert len(lab.pids("gw-b", "pppd")) == 1

    state = json.loads((RUN_DIR / "site-b.json").read_text())
    assert state["state"] == "up"
    assert state["interface"] == if_a and state["remote_interface"] == if_b
    # The daemon's log begins with what start printed, every line stamped (short-iso).
    logged = (RUN_DIR / "site-b.log").read_text().splitlines()
    assert logged and all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ", line) for line in logged
    ), logged
    assert any(re.search(r"\+\d{4} link up: ppp\d+ 192\.168\.77\.1 -> ", ln) for ln in logged)

    again = pppssh(lab, "start", str(conf))
    assert again.returncode == 1, show(again)
    assert "site 'site-b' is already running" in again.stderr
    assert len(lab.pids("gw-a", "pppd")) == 1, "a refused start must not start anything"

    status = pppssh(lab, "status", "site-b")
    assert status.returncode == 0, show(status)
    assert re.search(rf"^site-b\s+up\s+\d+\s+{if_a} 192\.168\.77\.1 -> ", status.stdout, re.M), (
        status.stdout
    )

    stopped = pppssh(lab, "stop", str(conf))
    assert stopped.returncode == 0, show(stopped)
    assert re.search(rf"^{re.escape(REMOTE)} route del 10\.1\.0\.0/24", stopped.stdout, re.M)
    assert "[#] ip route del 10.2.0.0/24" in stopped.stdout
    # stop returned: the teardown is complete, nothing may be left, without waiting.
    assert no_leftovers(lab) == []
    assert not (RUN_DIR / "site-b.log").exists(), "a clean stop removes the log"
    assert not re.search(r"^\d{4}-\d\d-\d\dT", stopped.stdout, re.M), "stop shows no stamps"
    assert not lab.ping("ws-a", WS_B)

    again = pppssh(lab, "stop", "site-b")
    assert again.returncode == 0, show(again)
    assert "site 'site-b' is not running" in again.stdout
    status = pppssh(lab, "status", "site-b")
    assert status.returncode == 3, show(status)


def test_stop_without_name(lab: Lab, stop_all: None) -> None:
    """`stop` alone stops the only site; with two running it asks for a name or --all."""
    conf_b = lab.write_site_conf("site-b")
    conf_c = lab.write_site_conf(
        "site-c",
        ppp_local_address="192.168.78.1",
        ppp_remote_address="192.168.78.2",
        networks_local=None,
        networks_remote=None,
    )
    for conf in (conf_b, conf_c):
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
    assert len(lab.ppp_links("gw-a")) == 2 and len(lab.ppp_links("gw-b")) == 2

    ask = pppssh(lab, "stop")
    assert ask.returncode == 2, show(ask)
    assert "several sites are running (site-b, site-c)" in ask.stderr
    assert len(lab.ppp_links("gw-a")) == 2

    one = pppssh(lab, "stop", "site-c")
    assert one.returncode == 0, show(one)
    assert [link["local"] for link in lab.ppp_links("gw-a")] == [PPP_LOCAL]

    only = pppssh(lab, "stop")
    assert only.returncode == 0, show(only)
    assert no_leftovers(lab) == []

    none = pppssh(lab, "stop")
    assert none.returncode == 0 and "no site is running" in none.stdout, show(none)


def test_proxyarp_remote(lab: Lab, stop_all: None) -> None:
    """proxyarp=remote: ws-b reaches gw-a's PPP address with no route of its own."""
    proxied = "10.2.0.99"
    conf = lab.write_site_conf("site-b", ppp_local_address=proxied, ppp_proxyarp="remote")
    lab.run("ws-b", ["ip", "route", "del", "default"])
    try:
        assert lab.routes("ws-b") == ["10.2.0.0/24 dev eth0 proto kernel scope link src 10.2.0.10"]
        assert not lab.ping("ws-b", proxied), "nothing may answer for the address before start"
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        assert "proxyarp" in started.stdout
        ppp_link(lab, "gw-b", PPP_REMOTE, proxied)
        assert lab.ping("ws-b", proxied, count=3), "proxy ARP on gw-b did not answer for gw-a"
        stopped = pppssh(lab, "stop", "site-b")
        assert stopped.returncode == 0, show(stopped)
        assert wait_for(lambda: not lab.ping("ws-b", proxied, wait=1), timeout=5)
    finally:
        lab.run("ws-b", ["ip", "route", "replace", "default", "via", "10.2.0.1"])


def test_unknown_host_key_refused(lab: Lab) -> None:
    """An unknown host key: nothing started, fingerprint and how to accept it shown."""
    empty = lab.dir / "empty_known_hosts"
    empty.write_text("")
    conf = lab.write_site_conf("site-b", remote_known_hosts=str(empty))
    proc = pppssh(lab, "start", str(conf))
    assert proc.returncode == 1, show(proc)
    assert "unknown host key: 198.51.100.2:22 presents ssh-ed25519 SHA256:" in proc.stderr
    fingerprint = lab.run(None, ["ssh-keygen", "-lf", str(lab.known_hosts)]).stdout.split()[1]
    assert fingerprint in proc.stderr
    assert f">> {empty}" in proc.stderr
    assert "remote pppd" not in proc.stdout
    assert no_leftovers(lab) == []
    assert empty.read_text() == "", "pppssh must never add a key by itself"


def test_changed_host_key_refused(lab: Lab) -> None:
    """A known_hosts entry with another key for the host: refused as a changed key."""
    other = lab.dir / "other_key"
    lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    wrong = lab.dir / "wrong_known_hosts"
    wrong.write_text(f"{GW_B_WAN} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n")
    conf = lab.write_site_conf("site-b", remote_known_hosts=str(wrong))
    proc = pppssh(lab, "start", str(conf))
    assert proc.returncode == 1, show(proc)
    assert "HOST KEY CHANGED" in proc.stderr and "SHA256:" in proc.stderr
    assert no_leftovers(lab) == []


def test_sudo_refuses_pppd(lab: Lab) -> None:
    """The remote sudo refuses pppd: the remote error is shown and nothing is left."""
    lab.set_sudoers("vpn ALL=(root) NOPASSWD: /usr/sbin/ip route add *, /usr/sbin/ip route del *\n")
    conf = lab.write_site_conf("site-b")
    proc = pppssh(lab, "start", str(conf))
    assert proc.returncode == 1, show(proc)
    assert "starting the remote pppd failed: remote pppd ended, exit status 1" in proc.stderr
    assert "sudo:" in proc.stderr or "Sorry, user vpn" in proc.stderr, show(proc)
    assert "local pppd" not in proc.stdout
    assert no_leftovers(lab) == []


def test_remote_route_refused_rolls_back(lab: Lab) -> None:
    """A failure after routes were added (remote route refused): everything undone."""
    lab.set_sudoers("vpn ALL=(root) NOPASSWD: /usr/sbin/pppd\n")
    conf = lab.write_site_conf("site-b")
    proc = pppssh(lab, "start", str(conf))
    assert proc.returncode == 1, show(proc)
    out = proc.stdout
    assert re.search(r"^\[#\] ip route add 10\.2\.0\.0/24", out, re.M), show(proc)
    assert re.search(r"^\[#\] ip route del 10\.2\.0\.0/24", out, re.M), show(proc)
    assert out.index("ip route add 10.2.0.0/24") < out.index("ip route del 10.2.0.0/24")
    assert "route add 10.1.0.0/24" in proc.stderr and "sudo" in proc.stderr, show(proc)
    assert "local pppd stopped" in out and "disconnected" in out
    assert no_leftovers(lab) == []
    assert not os.path.exists(RUN_DIR / "site-b.json")
