"""Faults a PPP-over-SSH link meets, each ending with the leak check on both gateways.

While a site runs, the leak check demands exactly its current pppd and ppp interface on each
gateway, exactly the routes it recorded, and a state file that says so; after `stop`, nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from tests.lab.netlab import NET_A, NET_B, PPP_LOCAL, PPP_REMOTE, WS_A, WS_B, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, open_fds, pppssh, show, stop_all

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

SITE = "site-b"
LOG = RUN_DIR / f"{SITE}.log"
# Quick detection for the tests (the defaults notice a dead peer within 30 s).
QUICK = {
    "site_reconnect_delay": "1",
    "site_reconnect_delay_max": "2",
    "remote_keepalive_interval": "1",
    "remote_keepalive_count_max": "3",
    "remote_connect_timeout": "2",
}


def status(lab: Lab) -> dict[str, Any]:
    """The site's `status --json` entry (or {} when it is not running)."""
    proc = pppssh(lab, "status", "--json", SITE)
    sites = json.loads(proc.stdout or "{}").get("sites", [])
    return sites[0] if sites else {}


def log() -> str:
    """The daemon's log, for assertion messages."""
    return LOG.read_text() if LOG.exists() else "(no log)"


def leak_check(lab: Lab) -> list[str]:
    """What is on either gateway beyond the running site's one pppd, interface and routes."""
    state = json.loads((RUN_DIR / f"{SITE}.json").read_text())
    found = []
    if state["state"] != "up":
        found.append(f"state file says {state['state']}")
    ifaces = {"gw-a": state["interface"], "gw-b": state["remote_interface"]}
    pppd_a = lab.pids("gw-a", "pppd")
    if pppd_a != [state["local_pppd_pid"]]:
        found.append(f"gw-a pppd {pppd_a}, state file says {state['local_pppd_pid']}")
    pppd_b = lab.pids("gw-b", "pppd")
    if len(pppd_b) != 1:
        found.append(f"gw-b pppd {pppd_b}")
    expected = {
        "gw-a": [f"{NET_B} via {PPP_REMOTE} dev {ifaces['gw-a']}"],
        "gw-b": [f"{NET_A} via {PPP_LOCAL} dev {ifaces['gw-b']}"],
    }
    for ns, iface in ifaces.items():
        links = [link["name"] for link in lab.ppp_links(ns)]
        if links != [iface]:
            found.append(f"{ns} ppp interfaces {links}, state file says {iface}")
        kernel = f"dev {iface} proto kernel"  # the peer route every ppp interface gets
        added = [r for r in lab.added_routes(ns) if kernel not in r]
        if added != expected[ns]:
            found.append(f"{ns} routes added {added}, expected {expected[ns]}")
    if state["local_routes"] != [f"ip route add {expected['gw-a'][0]}"]:
        found.append(f"state file local routes {state['local_routes']}")
    if not state["remote_routes"] or f"{NET_A} via {PPP_LOCAL}" not in state["remote_routes"][0]:
        found.append(f"state file remote routes {state['remote_routes']}")
    return found


def sshd_sessions(lab: Lab) -> list[int]:
    """gw-b's per-connection sshd processes: those whose parent is an sshd too."""
    found = []
    for pid in lab.pids("gw-b", "sshd"):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = Path(f"/proc/{ppid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        if parent == "sshd":
            found.append(pid)
    return found


def nothing_runs(lab: Lab) -> bool:
    """No pppd, ppp interface or added route on either gateway (the WAN may be down)."""
    return not any(
        lab.pids(ns, "pppd") or lab.ppp_links(ns) or lab.added_routes(ns) for ns in ("gw-a", "gw-b")
    )


def start(lab: Lab, **overrides: str) -> dict[str, Any]:
    """Start the site (up, leak-free) and return its status."""
    conf = lab.write_site_conf(SITE, **overrides)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert leak_check(lab) == []
    return status(lab)


def up_again(lab: Lab, reconnects: int = 1, timeout: float = 90) -> dict[str, Any]:
    """Wait until the site is up after at least `reconnects` reconnects; leak check it."""

    def ready() -> bool:
        site = status(lab)
        return site.get("state") == "up" and site.get("reconnects", 0) >= reconnects

    assert wait_for(ready, timeout=timeout, interval=1), log()
    assert leak_check(lab) == [], log()
    assert lab.ping("ws-a", WS_B, count=3) and lab.ping("ws-b", WS_A, count=3), log()
    return status(lab)


def stop(lab: Lab) -> None:
    """Stop the site and demand that nothing is left anywhere."""
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []


# ---------------------------------------------------------------------------- 1. the WAN


def test_wan_down_20s_then_up(lab: Lab, stop_all: None) -> None:
    """The WAN is cut for 20 s: keepalives notice, the site undoes this side and retries, and
    comes back with the WAN, with one pppd and one interface on each side."""
    # without the helper, so that the pgrep/sudo pkill path is the one tried (the helper's
    # `cleanup` is the same pkill, run by the helper)
    first = start(lab, **QUICK, ppp_lcp_echo_interval="0", remote_helper="no")
    old_remote = lab.pids("gw-b", "pppd")
    lab.run("gw-b", ["ip", "link", "set", "wan0", "down"])
    try:
        assert wait_for(lambda: status(lab).get("state") == "reconnecting", timeout=30), log()
        assert not lab.ping("ws-a", WS_B)
        time.sleep(20 - 5)
        # no LCP echoes and no traffic: gw-b has not noticed a thing
        assert lab.pids("gw-b", "pppd") == old_remote
    finally:
        lab.run("gw-b", ["ip", "link", "set", "wan0", "up"])
    site = up_again(lab)
    assert lab.pids("gw-b", "pppd") != old_remote
    assert site["pid"] == first["pid"], "the same daemon carried the site through"
    stop(lab)


def test_remote_pppd_of_a_lost_session_is_stopped(lab: Lab, stop_all: None) -> None:
    """gw-b's sshd never learns that the old connection died (its session processes are
    frozen), so the old remote pppd lives on: the new session stops it before starting its
    own, and does not end up with two links side by side."""
    # without the helper, so that the pgrep/sudo pkill path is the one tried (the helper's
    # `cleanup` is the same pkill, run by the helper)
    first = start(lab, **QUICK, ppp_lcp_echo_interval="0", remote_helper="no")
    old_remote = lab.pids("gw-b", "pppd")
    sessions = sshd_sessions(lab)
    assert sessions
    try:
        for pid in sessions:
            os.kill(pid, signal.SIGSTOP)
        os.kill(first["pid"], signal.SIGKILL)
        time.sleep(2)
        assert lab.pids("gw-b", "pppd") == old_remote
        again = pppssh(lab, "start", str(lab.dir / f"{SITE}.conf"))
        assert again.returncode == 0, show(again)
        out = again.stdout
        assert (
            "sudo -n /usr/bin/pkill -TERM -x -F /run/ppp-pppssh-site-b-192.168.77.1.pid pppd" in out
        ), out
        assert "stopped the pppd an earlier session left on the remote gateway" in out, out
        assert out.index("stopped the pppd") < out.index("remote pppd started"), out
        assert not set(old_remote) & set(lab.pids("gw-b", "pppd"))
        assert leak_check(lab) == []
        assert lab.ping("ws-a", WS_B, count=3)
    finally:
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stop(lab)


# ---------------------------------------------------------------------------- 2. sshd


def test_sshd_restarted(lab: Lab, stop_all: None) -> None:
    """sshd restarted as a package upgrade does (sessions live on): the link never notices.
    Then every sshd process killed, down 3 s: the site comes back by itself."""
    start(lab, **QUICK)
    lab.restart_sshd()
    time.sleep(3)
    assert status(lab)["reconnects"] == 0 and lab.ping("ws-a", WS_B, count=3), log()
    assert leak_check(lab) == []
    lab.restart_sshd(sessions=True, down=3)
    up_again(lab)
    stop(lab)


# ---------------------------------------------------------------------------- 3, 4. a pppd dies


def test_remote_pppd_killed(lab: Lab, stop_all: None) -> None:
    """The remote pppd is killed: the site undoes, reconnects, carries traffic, leaks no fd."""
    start(lab, **QUICK)
    first = lab.pids("gw-b", "pppd")
    daemon = status(lab)["pid"]
    fds_before = open_fds(daemon)
    os.kill(first[0], signal.SIGKILL)
    site = up_again(lab)
    assert lab.pids("gw-b", "pppd") != first
    assert "remote pppd ended" in site["last_error"] and "SIGKILL" in site["last_error"]
    fds_after = open_fds(daemon)
    assert len(fds_after) == len(fds_before), f"fd leak: {fds_before} -> {fds_after}"
    stop(lab)


def test_local_pppd_killed(lab: Lab, stop_all: None) -> None:
    """The local pppd is killed: the same, from this side."""
    start(lab, **QUICK)
    first = lab.pids("gw-a", "pppd")
    os.kill(first[0], signal.SIGKILL)
    site = up_again(lab)
    assert lab.pids("gw-a", "pppd") != first
    assert "local pppd exited" in site["last_error"], site
    stop(lab)


# ---------------------------------------------------------------------------- 5. SIGKILL


def test_orchestrator_sigkilled_then_started_again(lab: Lab, stop_all: None) -> None:
    """pppssh itself is SIGKILLed: its state file stays; the next start undoes what it left
    and starts cleanly."""
    first = start(lab, **QUICK)
    os.kill(first["pid"], signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{first['pid']}"), timeout=10)
    assert (RUN_DIR / f"{SITE}.json").exists(), "SIGKILL leaves the state file"
    again = pppssh(lab, "start", str(lab.dir / f"{SITE}.conf"))
    assert again.returncode == 0, show(again)
    assert f"an earlier pppssh (pid {first['pid']}) ended without its teardown" in again.stdout
    assert leak_check(lab) == []
    assert lab.ping("ws-a", WS_B, count=3)
    stop(lab)


# ---------------------------------------------------------------------------- 6. stop


def test_stop_while_reconnecting(lab: Lab, stop_all: None) -> None:
    """`stop` while the site waits to reconnect: it stops at once and leaves nothing."""
    start(lab, **QUICK, ppp_lcp_echo_interval="1", ppp_lcp_echo_failure="3")
    lab.run("gw-b", ["ip", "link", "set", "wan0", "down"])
    try:
        assert wait_for(lambda: status(lab).get("state") == "reconnecting", timeout=30), log()
        stopped = pppssh(lab, "stop", SITE, timeout=60)
        assert stopped.returncode == 0, show(stopped)
        assert not (RUN_DIR / f"{SITE}.json").exists()
        assert lab.pids("gw-a", "pppd") == [] and lab.ppp_links("gw-a") == []
        assert lab.added_routes("gw-a") == []
        # gw-b's pppd gives up on LCP echoes by itself
        assert wait_for(lambda: not lab.pids("gw-b", "pppd"), timeout=30)
    finally:
        lab.run("gw-b", ["ip", "link", "set", "wan0", "up"])
    assert no_leftovers(lab) == []


# ---------------------------------------------------------------------------- 7. unreachable


def test_start_while_remote_unreachable(lab: Lab, stop_all: None) -> None:
    """Without retry_start a start fails at once and says why; with it, the site keeps trying
    and comes up with the WAN; with reconnect_tries it gives up."""
    conf = lab.write_site_conf(SITE, **QUICK)
    lab.run("gw-b", ["ip", "link", "set", "wan0", "down"])
    try:
        failed = pppssh(lab, "start", str(conf))
        assert failed.returncode == 1, show(failed)
        assert len(failed.stderr.strip().splitlines()) == 1, show(failed)
        assert failed.stderr.startswith(f"pppssh: {SITE}: ") and "198.51.100.2" in failed.stderr
        assert nothing_runs(lab) and status(lab) == {}

        conf = lab.write_site_conf(SITE, **QUICK, site_retry_start="yes", site_reconnect_tries="2")
        gave_up = pppssh(lab, "start", str(conf))
        assert gave_up.returncode == 0, show(gave_up)
        assert "is not up yet" in gave_up.stdout and "keeps trying" in gave_up.stdout
        assert wait_for(lambda: status(lab) == {}, timeout=60), log()
        assert "giving up after 2 failed attempts in a row" in log()
        assert nothing_runs(lab)

        conf = lab.write_site_conf(SITE, **QUICK, site_retry_start="yes")
        trying = pppssh(lab, "start", str(conf))
        assert trying.returncode == 0, show(trying)
        assert wait_for(lambda: status(lab).get("reconnects", 0) >= 2, timeout=30), log()
        assert status(lab)["state"] in ("reconnecting", "starting"), status(lab)
    finally:
        lab.run("gw-b", ["ip", "link", "set", "wan0", "up"])
    up_again(lab, reconnects=2)
    stop(lab)


# ---------------------------------------------------------------------------- 8. saturation


def test_saturated_link_is_not_declared_dead(lab: Lab, stop_all: None) -> None:
    """60 s of iperf3 at full speed plus 50 parallel flows the other way, with the default
    keepalives and LCP echoes: no reconnect, no crash, and the link still answers after."""
    first = start(lab)  # the defaults: keepalive 10 s x 3, LCP echo 10 s x 3, adaptive
    for port in (5201, 5202):
        lab.spawn("ws-b", ["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL)
    time.sleep(1)
    argv = ["iperf3", "-c", WS_B, "-t", "60", "-J"]
    one = lab.spawn("ws-a", [*argv, "-p", "5201"], stdout=PIPE, stderr=PIPE)
    many = lab.spawn("ws-a", [*argv, "-p", "5202", "-P", "50", "-R"], stdout=PIPE, stderr=PIPE)
    samples = []
    deadline = time.monotonic() + 75
    while (one.poll() is None or many.poll() is None) and time.monotonic() < deadline:
        samples.append(status(lab).get("reconnects"))
        time.sleep(5)
    out_one, _ = one.communicate(timeout=60)
    out_many, _ = many.communicate(timeout=60)
    assert one.returncode == 0 and many.returncode == 0, (out_one[-500:], out_many[-500:])
    sent = json.loads(out_one)["end"]["sum_received"]["bytes"]
    received = json.loads(out_many)["end"]["sum_received"]["bytes"]
    assert sent > 1_000_000 and received > 1_000_000, (sent, received)
    assert set(samples) == {0}, f"reconnects during the load: {samples}\n{log()}"
    site = status(lab)
    assert site["pid"] == first["pid"] and site["state"] == "up" and site["reconnects"] == 0
    assert leak_check(lab) == []
    assert lab.ping("ws-a", WS_B, count=3)
    stop(lab)


def test_status_says_reconnecting_as_soon_as_the_log_says_link_down(
    lab: Lab, stop_all: None
) -> None:
    """The state file is saved when the loss is known, before the undo (which waits on the
    dead connection): once the log says `link down`, `status` already says reconnecting."""
    start(lab, **QUICK, ppp_lcp_echo_interval="0")
    lab.run("gw-b", ["ip", "link", "set", "wan0", "down"])
    try:
        assert wait_for(lambda: "link down: " in log(), timeout=60, interval=0.2), log()
        seen = status(lab)
        assert seen.get("state") == "reconnecting", (seen, log())
        assert seen.get("uptime") is None, seen
        assert "link down: " in seen.get("last_error", ""), seen
    finally:
        lab.run("gw-b", ["ip", "link", "set", "wan0", "up"])
    up_again(lab)
    stop(lab)
