"""systemd/pppssh@.service under a real systemd 252 as PID 1, the service inside gw-a.

These tests run in a UML boot of their own in uml.py's systemd mode (the `uml_systemd`
marker; tests/conftest.py). The unit file is the repository's, installed as shipped; one
drop-in for every instance puts the service in gw-a (NetworkNamespacePath=) and shortens
RestartSec= and TimeoutStartSec= so that the lab does not wait out the shipped values;
/usr/local/bin/pppssh runs the repository's pppssh. Site files live in /etc/pppssh, as the
unit expects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_B_WAN, NET_A, NET_B, Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.uml_systemd]

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = Path("/etc/systemd/system")
SITES = Path("/etc/pppssh")
WRAPPER = Path("/usr/local/bin/pppssh")
RESTART_SEC = 5
LAB_DROP_IN = f"""\
# pppssh lab: the service runs in the lab's gw-a; shorter waits than shipped
[Service]
NetworkNamespacePath=/run/netns/gw-a
RestartSec={RESTART_SEC}
TimeoutStartSec=30
"""


def systemctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run systemctl with args; capture its output."""
    argv = ["systemctl", "--no-pager", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def show(unit: str) -> dict[str, str]:
    """The unit's state, main pid, restarts, exit status and STATUS= text."""
    keys = "ActiveState,SubState,Result,MainPID,NRestarts,ExecMainStatus,StatusText"
    out = systemctl("show", unit, "-p", keys).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def journal(unit: str) -> str:
    """The unit's journal lines, message text only."""
    argv = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def routes_up(lab: Lab) -> bool:
    """Tell whether the tunnel's routes are in place on both gateways."""
    on_a = any(r.startswith(f"{NET_B} via ") and " dev ppp" in r for r in lab.added_routes("gw-a"))
    on_b = any(r.startswith(f"{NET_A} via ") and " dev ppp" in r for r in lab.added_routes("gw-b"))
    return on_a and on_b


def nothing_left(lab: Lab, site: str) -> list[str]:
    """What the site left behind: pppd, ppp links, routes, its state file (empty if none)."""
    found = lab.leftovers()
    state = Path(f"/run/pppssh/{site}.json")
    return found + ([f"state file {state}"] if state.exists() else [])


def install_site(lab: Lab, name: str, setup: bool = True, **overrides: object) -> Path:
    """Write the lab's site file for name to /etc/pppssh/NAME.conf (set up on gw-b unless
    setup is False)."""
    made = lab.write_site_conf(name, setup=setup, **overrides)
    path = SITES / f"{name}.conf"
    shutil.copyfile(made, path)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def unit(lab: Lab) -> str:
    """Install the shipped unit, the lab drop-in and the wrapper; give the site-b instance."""
    assert Path("/proc/1/comm").read_text().strip() == "systemd", "needs systemd as PID 1"
    SITES.mkdir(mode=0o755, exist_ok=True)
    WRAPPER.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m pppssh "$@"\n')
    WRAPPER.chmod(0o755)
    shutil.copyfile(REPO / "systemd" / "pppssh@.service", UNIT_DIR / "pppssh@.service")
    drop_ins = UNIT_DIR / "pppssh@.service.d"
    drop_ins.mkdir(exist_ok=True)
    (drop_ins / "lab.conf").write_text(LAB_DROP_IN)
    install_site(lab, "site-b")
    assert systemctl("daemon-reload").returncode == 0
    return "pppssh@site-b.service"


@pytest.fixture(autouse=True)
def _units_stopped() -> Iterator[None]:
    """After each test, every pppssh instance is stopped (a failed test's too: a running one
    would reconnect behind the lab's reset) and failed states are forgotten."""
    yield
    systemctl("stop", "pppssh@*.service")
    systemctl("reset-failed")


def test_pid_1_is_systemd_in_the_overlay() -> None:
    """The boot is the real thing: systemd as PID 1, its root the lab's overlay."""
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    mounts = [line.split() for line in Path("/proc/1/mountinfo").read_text().splitlines()]
    assert [m[m.index("-") + 1] for m in mounts if m[4] == "/"] == ["overlay"]
    assert systemctl("is-system-running").stdout.strip() in ("running", "degraded")


def test_start_stop_restart_with_journal(lab: Lab, unit: str) -> None:
    """start returns after READY with routes up on both gateways, the service in gw-a; the
    journal has pppssh's lines; restart brings a new process up; stop leaves nothing."""
    started = systemctl("start", unit)
    assert started.returncode == 0, started.stderr + journal(unit)
    assert routes_up(lab), (lab.added_routes("gw-a"), lab.added_routes("gw-b"))
    first = show(unit)
    assert (first["ActiveState"], first["SubState"]) == ("active", "running"), first
    assert first["StatusText"].startswith("up: ppp"), first
    assert "pppssh: site-b is up: ppp" in journal(unit)
    assert lab.pids("gw-a", "pppd"), "no local pppd in gw-a"
    main_net = os.stat(f"/proc/{first['MainPID']}/ns/net").st_ino
    assert main_net == os.stat("/run/netns/gw-a").st_ino, "the drop-in puts it in gw-a"

    restarted = systemctl("restart", unit)
    assert restarted.returncode == 0, restarted.stderr + journal(unit)
    again = show(unit)
    assert again["ActiveState"] == "active" and again["MainPID"] != first["MainPID"], again
    assert routes_up(lab), (lab.added_routes("gw-a"), lab.added_routes("gw-b"))

    stopped = systemctl("stop", unit)
    assert stopped.returncode == 0, stopped.stderr
    assert show(unit)["ActiveState"] == "inactive"
    wait_for(lambda: not nothing_left(lab, "site-b"), timeout=10)
    assert nothing_left(lab, "site-b") == []
    assert "site-b stopped" in journal(unit)


def test_sigkill_brings_it_back_and_the_status_says_so(lab: Lab, unit: str) -> None:
    """SIGKILL of the main process: Restart= starts it again and the routes come back; while
    it waits to restart, STATUS= says it was killed, not still "up"."""
    assert systemctl("start", unit).returncode == 0, journal(unit)
    before = show(unit)
    assert systemctl("kill", "--kill-who=main", "-s", "KILL", unit).returncode == 0
    seen: dict[str, str] = {}

    def waiting() -> bool:
        """Catch the unit while it waits RestartSec= to start again."""
        seen.update(show(unit))
        return seen["SubState"] == "auto-restart"

    assert wait_for(waiting, timeout=RESTART_SEC, interval=0.2), seen
    in_between = dict(seen)

    def back() -> bool:
        """The unit runs again, restarted once, with a new main process."""
        seen.update(show(unit))
        return seen["SubState"] == "running" and seen["NRestarts"] == "1"

    assert wait_for(back, timeout=90, interval=0.5), seen
    assert seen["MainPID"] != before["MainPID"], seen
    assert wait_for(lambda: routes_up(lab), timeout=10)
    assert seen["StatusText"].startswith("up: ppp"), seen
    assert systemctl("stop", unit).returncode == 0
    wait_for(lambda: not nothing_left(lab, "site-b"), timeout=10)
    assert nothing_left(lab, "site-b") == []
    # The main process is gone; what systemd shows meanwhile must not claim a link: the
    # unit's ExecStopPost= says what happened (NotifyAccess=exec lets it).
    assert in_between["StatusText"].startswith("stopped: signal (killed KILL)"), in_between


def test_bad_site_file_exits_2_and_is_not_restarted(lab: Lab, unit: str) -> None:
    """A site file pppssh refuses: exit status 2, the unit failed for good, the reason in the
    journal naming the file."""
    bad = SITES / "bad.conf"
    bad.write_text("[site]\nname = bad\nno_such_key = 1\n")
    bad.chmod(0o600)
    started = systemctl("start", "pppssh@bad.service")
    assert started.returncode != 0
    state = show("pppssh@bad.service")
    assert state["ExecMainStatus"] == "2", state
    assert (state["ActiveState"], state["SubState"], state["NRestarts"]) == (
        "failed", "failed", "0"
    ), state  # fmt: skip
    assert str(bad) in journal("pppssh@bad.service")
    assert nothing_left(lab, "bad") == []


def test_retry_start_is_ready_while_retrying(lab: Lab, unit: str) -> None:
    """retry_start = yes and the far side unreachable: `systemctl start` returns (READY=1)
    once the first attempt failed, and STATUS= says it is retrying and why; stop is clean."""
    install_site(lab, "site-r", site_retry_start="yes", remote_port="2", setup=False)
    name = "pppssh@site-r.service"
    started = systemctl("start", name)
    states = [show(name)]
    for _ in range(4):  # across the first wait and the next attempt, if the wait is short
        time.sleep(1)
        states.append(show(name))
    systemctl("stop", name)
    systemctl("reset-failed", name)
    assert nothing_left(lab, "site-r") == []
    assert started.returncode == 0, f"{started.stderr}\n{states[0]}\n{journal(name)}"
    for state in states:  # while it is not up, STATUS= says so and why, every time
        assert state["ActiveState"] == "active", states
        assert state["StatusText"].startswith(("retrying", "reconnecting")), states
        assert "refused" in state["StatusText"].lower(), states


def test_a_failed_start_leaves_a_status_that_says_so(lab: Lab, unit: str) -> None:
    """The link cannot come up and pppssh gives up (exit 1): STATUS= names the failure, not
    "connecting" or "up" as last said."""
    install_site(lab, "site-f", remote_port="2", setup=False)
    name = "pppssh@site-f.service"
    drop_ins = UNIT_DIR / f"{name}.d"
    drop_ins.mkdir(exist_ok=True)
    (drop_ins / "no-restart.conf").write_text("[Service]\nRestart=no\n")
    assert systemctl("daemon-reload").returncode == 0
    started = systemctl("start", name)
    state = show(name)
    systemctl("reset-failed", name)
    assert started.returncode != 0
    assert (state["ActiveState"], state["ExecMainStatus"]) == ("failed", "1"), state
    assert nothing_left(lab, "site-f") == []
    assert state["StatusText"].startswith("failed"), state
    assert f"{GW_B_WAN}" in state["StatusText"] or "refused" in state["StatusText"], state
