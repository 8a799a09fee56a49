"""Faults a PPP-over-SSH link meets, each ending with the leak check on both gateways.

While a site runs, the leak check demands exactly its current pppd and ppp interface on each
gateway, exactly the routes it recorded, and a state file that says so; after `stop`, nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.netlab import NET_A, NET_B, PPP_LOCAL, PPP_REMOTE, WS_A, WS_B, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, open_fds, pppssh, show

pytestmark = pytest.mark.lab

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


@pytest.fixture
def stop_all(lab: Lab) -> Iterator[None]:
    """Whatever a test leaves running is stopped through pppssh itself afterwards (a test
    that ended with its own clean `stop` left no state file: nothing to ask then)."""
    yield
    if any(RUN_DIR.glob("*.json")) or lab.pids("gw-a", "pppd"):
        pppssh(lab, "stop", "--all")


def status(lab: Lab) -> dict[str, Any]:
    """The site's `status --json` entry (or {} when it is not running)."""
    proc = pppssh(lab, "status", "--json", SITE)
    sites = json.loads(proc.stdout or "{}").get("sites", [])
    return sites[0] if sites else {}


def site_state() -> dict[str, Any]:
    """The site's state file as it is now ({} when there is none): cheap enough to poll, where
    `status` starts an interpreter each time; the tests still assert on `status` itself."""
    try:
        data = json.loads((RUN_DIR / f"{SITE}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    """Start the site (up, leak-free) and return its state file (pid, reconnects, ...)."""
    conf = lab.write_site_conf(SITE, **overrides)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert leak_check(lab) == []
    return site_state()


def up_again(lab: Lab, reconnects: int = 1, timeout: float = 90) -> dict[str, Any]:
    """Wait until the site is up after at least `reconnects` reconnects; leak check it."""

    def ready() -> bool:
        site = site_state()
        return site.get("state") == "up" and site.get("reconnects", 0) >= reconnects

    assert wait_for(ready, timeout=timeout, interval=0.2), log()
    site = status(lab)
    assert site.get("state") == "up" and site.get("reconnects", 0) >= reconnects, (site, log())
    assert leak_check(lab) == [], log()
    assert lab.ping("ws-a", WS_B, count=3) and lab.ping("ws-b", WS_A, count=3), log()
    return site


def stop(lab: Lab) -> None:
    """Stop the site and demand that nothing is left anywhere."""
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []


# ---------------------------------------------------------------------------- 1. the WAN


def test_wan_down_then_up(lab: Lab, stop_all: None) -> None:
    """The WAN is cut until keepalives have noticed and a re-dial has failed too: the site
    undoes this side and retries, and comes back with the WAN, with one pppd and one interface
    on each side. The state file is saved when the loss is known, before the undo (which
    waits on the dead connection): once the log says `link down`, `status` already says
    reconnecting."""
    # without the helper, so that the pgrep/sudo pkill path is the one tried (the helper's
    # `cleanup` is the same pkill, run by the helper)
    first = start(lab, **QUICK, ppp_lcp_echo_interval="0", remote_helper="no")
    old_remote = lab.pids("gw-b", "pppd")
    lab.run("gw-b", ["ip", "link", "set", "wan0", "down"])
    try:
        assert wait_for(lambda: "link down: " in log(), timeout=60, interval=0.2), log()
        seen = status(lab)
        assert seen.get("state") == "reconnecting", (seen, log())
        assert seen.get("uptime") is None, seen
        assert "link down: " in seen.get("last_error", ""), seen
        assert not lab.ping("ws-a", WS_B, wait=1)
        # the first re-dial fails too (Reconnecting counts each wait before a dial)
        assert wait_for(lambda: site_state().get("reconnects", 0) >= 2, timeout=30), log()
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
        assert wait_for(lambda: not os.path.exists(f"/proc/{first['pid']}"), timeout=10)
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


# ---------------------------------------------------------------------------- 2-4. sshd, a pppd


def test_sshd_restarted_then_each_pppd_killed(lab: Lab, stop_all: None) -> None:
    """One daemon through each of these. sshd restarted as a package upgrade does (sessions
    live on): the link never notices. Then every sshd process killed, down 3 s: the site comes
    back by itself. Then the remote pppd is killed: the site undoes, reconnects, carries
    traffic, leaks no fd. Then the local pppd is killed: the same, from this side."""
    start(lab, **QUICK)
    lab.restart_sshd()
    time.sleep(3)
    assert status(lab)["reconnects"] == 0 and lab.ping("ws-a", WS_B, count=3), log()
    assert leak_check(lab) == []
    lab.restart_sshd(sessions=True, down=3)
    site = up_again(lab)

    first = lab.pids("gw-b", "pppd")
    daemon = status(lab)["pid"]
    fds_before = open_fds(daemon)
    os.kill(first[0], signal.SIGKILL)
    site = up_again(lab, reconnects=site["reconnects"] + 1)
    assert lab.pids("gw-b", "pppd") != first
    assert "remote pppd ended" in site["last_error"] and "SIGKILL" in site["last_error"]
    fds_after = open_fds(daemon)
    assert len(fds_after) == len(fds_before), f"fd leak: {fds_before} -> {fds_after}"

    first = lab.pids("gw-a", "pppd")
    os.kill(first[0], signal.SIGKILL)
    site = up_again(lab, reconnects=site["reconnects"] + 1)
    assert lab.pids("gw-a", "pppd") != first
    assert "local pppd exited" in site["last_error"], site
    assert site["pid"] == daemon
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
        assert wait_for(lambda: site_state().get("state") == "reconnecting", timeout=30), log()
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
        assert wait_for(lambda: site_state() == {}, timeout=60), log()
        assert status(lab) == {}
        assert "giving up after 2 failed attempts in a row" in log()
        assert nothing_runs(lab)

        conf = lab.write_site_conf(SITE, **QUICK, site_retry_start="yes")
        trying = pppssh(lab, "start", str(conf))
        assert trying.returncode == 0, show(trying)
        assert wait_for(lambda: site_state().get("reconnects", 0) >= 2, timeout=30), log()
        assert status(lab)["state"] in ("reconnecting", "starting"), status(lab)
    finally:
        lab.run("gw-b", ["ip", "link", "set", "wan0", "up"])
    up_again(lab, reconnects=2)
    stop(lab)


# ---------------------------------------------------------------------------- 8. saturation

LCPDROP = Path("/usr/local/lib/pppssh-lab/lcpdrop-pppd")  # the lab's local_pppd for test 8
LCPDROP_CONTROL = Path("/run/lcpdrop")  # what lcpdrop.py reads and logs
ECHO = {"ppp_lcp_echo_interval": "1", "ppp_lcp_echo_failure": "3"}  # dead after 3 misses


@pytest.fixture
def lcpdrop() -> Iterator[Path]:
    """tests/lab/lcpdrop.py installed as a program root trusts (root's, in root's directories),
    with an empty control directory."""
    LCPDROP.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("lcpdrop.py"), LCPDROP)
    LCPDROP.chmod(0o755)
    shutil.rmtree(LCPDROP_CONTROL, ignore_errors=True)
    LCPDROP_CONTROL.mkdir(mode=0o755)
    yield LCPDROP
    shutil.rmtree(LCPDROP_CONTROL, ignore_errors=True)
    shutil.rmtree(LCPDROP.parent, ignore_errors=True)


def echoes() -> list[tuple[str, float]]:
    """The local pppd's echo requests so far: ("drop" or "pass", monotonic time)."""
    path = LCPDROP_CONTROL / "echoes"
    lines = path.read_text().split("\n") if path.exists() else []
    return [(what, float(when)) for what, when in (line.split() for line in lines if line)]


def drops() -> list[float]:
    """When the echo requests that were dropped went."""
    return [when for what, when in echoes() if what == "drop"]


def drop_one_idle_echo(pinger: subprocess.Popen[bytes]) -> float:
    """Pause the traffic until the local pppd sends an echo request, lose that one, resume the
    traffic at once; when it was lost. The link is otherwise busy: the pinger's packets arrive
    at gw-a five times an echo interval."""
    before = len(drops())
    (LCPDROP_CONTROL / "drop").write_text("1\n")
    pinger.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: len(drops()) > before, timeout=15, interval=0.02), echoes()
    finally:
        pinger.send_signal(signal.SIGCONT)
    return drops()[-1]


def saturate(lab: Lab, seconds: int) -> tuple[int, int]:
    """iperf3 at full speed both ways at once, 8 flows, for `seconds`; bytes each way."""
    lab.spawn("ws-b", ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
    argv = ["iperf3", "-c", WS_B, "-p", "5201", "-t", str(seconds), "-P", "8", "--bidir", "-J"]
    assert wait_for(lambda: ":5201 " in lab.run("ws-b", ["ss", "-Hltn"]).stdout, timeout=10)
    done = lab.run("ws-a", argv, check=False, timeout=seconds + 60)
    assert done.returncode == 0, done.stdout[-800:] + done.stderr[-800:]
    end = json.loads(done.stdout)["end"]
    return int(end["sum_sent"]["bytes"]), int(end["sum_received"]["bytes"])


def test_lcp_echo_misses_spread_over_a_busy_link_do_not_add_up(
    lab: Lab, stop_all: None, lcpdrop: Path
) -> None:
    """ppp-project #323 on the lab's pppd 2.4.9: three echo requests lost one at a time, with
    traffic between them and a long saturating transfer before the last. With
    `lcp-echo-adaptive` (what pppssh gave every pppd before) the local pppd never forgets a
    miss while traffic arrives, so the third ends a working link; with the options pppssh
    gives a pppd before 2.5.0 (an echo every interval, each answer clears the misses) the link
    stays up through the same losses and through the load, and no keepalive fires."""
    assert "pppd version 2.4.9" in lab.run("gw-a", [str(lcpdrop), "--version"]).stdout
    (LCPDROP_CONTROL / "adaptive").touch()  # the local pppd gets lcp-echo-adaptive as before
    first = start(lab, **QUICK, **ECHO, ppp_local_pppd=str(lcpdrop))
    pppd = lab.pids("gw-a", "pppd")
    assert "lcp-echo-adaptive" in Path(f"/proc/{pppd[0]}/cmdline").read_text().split("\0")
    # remote-setup asked gw-b's pppd (2.4.9 too) for its version: echoes without adaptive there
    peers = Path("/etc/ppp/peers/pppssh-site-b").read_text().splitlines()
    assert "lcp-echo-interval 1" in peers and "lcp-echo-adaptive" not in peers, peers
    pinger = lab.spawn("ws-b", ["ping", "-n", "-q", "-i", "0.2", WS_A], stdout=subprocess.DEVNULL)

    def three_misses() -> float:
        """Lose one echo, traffic, lose one, a long saturating transfer, lose one more; when
        the last was lost."""
        drop_one_idle_echo(pinger)
        assert wait_for(lambda: lab.ping("ws-a", WS_B), timeout=10)  # a busy interval or two
        drop_one_idle_echo(pinger)
        sent, received = saturate(lab, 8)
        assert sent > 1_000_000 and received > 1_000_000, (sent, received)
        return drop_one_idle_echo(pinger)

    three_misses()
    (LCPDROP_CONTROL / "adaptive").unlink()  # the next local pppd has pppssh's options
    # the buggy count reaches lcp-echo-failure at the next echo interval: link down
    site = up_again(lab)
    assert site["pid"] == first["pid"] and site["reconnects"] == 1, site
    assert "local pppd exited" in site["last_error"], site
    assert "peer not responding to LCP echo" in log(), log()
    # only these three echoes went (adaptive: none while traffic arrived), so it never heard
    # an answer after the first miss; and busy intervals passed without an echo between them
    seen = echoes()
    first_miss = [what for what, _ in seen].index("drop")
    assert [what for what, _ in seen[first_miss : first_miss + 3]] == ["drop"] * 3, seen
    lost = [when for _, when in seen[first_miss : first_miss + 3]]
    assert lost[1] - lost[0] > 1.5 and lost[2] - lost[1] > 8, seen

    # the same daemon, a new local pppd: the options of a pppd before 2.5.0
    pppd = lab.pids("gw-a", "pppd")
    argv = Path(f"/proc/{pppd[0]}/cmdline").read_text().split("\0")
    assert "lcp-echo-adaptive" not in argv and "lcp-echo-interval" in argv, argv
    (LCPDROP_CONTROL / "echoes").unlink()
    third = three_misses()
    # four echo intervals after the third miss (the buggy pppd ended the link at the first)
    assert wait_for(lambda: sum(when > third for _, when in echoes()) >= 4, timeout=20), echoes()
    seen = echoes()
    assert [what for what, _ in seen].count("drop") == 3, seen
    assert all(what == "pass" for what, when in seen if when > third), seen
    # an echo every interval, busy or not: during the saturating transfer too (adaptive sent
    # none for its 8 s), each answered in time through the queues of the full link
    assert max(b - a for (_, a), (_, b) in itertools.pairwise(seen)) < 4, seen
    site = status(lab)
    assert site["pid"] == first["pid"] and site["state"] == "up" and site["reconnects"] == 1
    assert lab.pids("gw-a", "pppd") == pppd, log()
    assert leak_check(lab) == []
    pinger.terminate()
    stop(lab)
