"""Site hooks in the lab: up runs with the link's facts once routes exist, down before they go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.netlab import NET_B, PPP_LOCAL, PPP_REMOTE, WS_B, Lab, wait_for
from tests.lab.test_tunnel import (  # noqa: F401
    REPO,
    no_leftovers,
    ppp_link,
    pppssh,
    show,
    stop_all,
)

pytestmark = pytest.mark.lab


def recorder(folder: Path, name: str) -> str:
    """A hook that writes its environment and this gateway's routes to folder/name.*."""
    return (f"/bin/sh -c 'env > {folder}/{name}.env; ip -4 route > {folder}/{name}.routes; "
            f"echo {name} hook ran'")  # fmt: skip


def env_of(path: Path) -> dict[str, str]:
    """A file of NAME=value lines as a dict."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_up_and_down_hooks(lab: Lab, stop_all: None, tmp_path: Path) -> None:  # noqa: F811
    conf = lab.write_site_conf(
        "site-b", hooks_up=recorder(tmp_path, "up"), hooks_down=recorder(tmp_path, "down")
    )
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert "  up hook ran\n" in started.stdout, show(started)
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    env = env_of(tmp_path / "up.env")
    assert {k: env.get(k) for k in ("SITE", "IFNAME", "LOCAL_IP", "REMOTE_IP", "REMOTE_IFNAME")} == {
        "SITE": "site-b", "IFNAME": if_a, "LOCAL_IP": PPP_LOCAL, "REMOTE_IP": PPP_REMOTE,
        "REMOTE_IFNAME": if_b,
    }  # fmt: skip
    route = f"{NET_B} via {PPP_REMOTE} dev {if_a}"
    assert route in (tmp_path / "up.routes").read_text(), "up runs once routes are in place"
    assert not (tmp_path / "down.env").exists()
    assert lab.ping("ws-a", WS_B)

    stopped = pppssh(lab, "stop", "site-b")
    assert stopped.returncode == 0, show(stopped)
    assert env_of(tmp_path / "down.env")["IFNAME"] == if_a
    assert route in (tmp_path / "down.routes").read_text(), "down runs before routes go"
    assert no_leftovers(lab) == []


def test_failing_up_hook_aborts_and_undoes(lab: Lab, tmp_path: Path) -> None:
    conf = lab.write_site_conf(
        "site-b", hooks_up="/bin/sh -c 'echo no firewall rule for $IFNAME; exit 3'",
        hooks_down=recorder(tmp_path, "down"),
    )  # fmt: skip
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 1, show(started)
    assert (
        "up command failed: " in started.stderr and "no firewall rule for ppp" in started.stderr
    ), show(started)
    assert (tmp_path / "down.env").exists(), "down runs once up has run, as pppd's ip-down"
    assert no_leftovers(lab) == []


def test_failing_up_hook_can_be_only_reported(lab: Lab, stop_all: None) -> None:  # noqa: F811
    conf = lab.write_site_conf(
        "site-b", hooks_up="/bin/false", hooks_up_failure="continue", hooks_timeout=5
    )
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert "note: up command failed: `/bin/false` failed: exit status 1" in started.stdout
    status = pppssh(lab, "status", "site-b")
    assert status.returncode == 0 and "up command failed" in status.stdout, show(status)
    assert lab.ping("ws-a", WS_B)
    assert pppssh(lab, "stop", "site-b").returncode == 0
    assert no_leftovers(lab) == []


def test_hung_up_hook_is_killed(lab: Lab, tmp_path: Path) -> None:
    conf = lab.write_site_conf("site-b", hooks_up="/bin/sleep 600", hooks_timeout=2)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 1, show(started)
    assert "still running after 2s; killed" in started.stderr, show(started)
    assert lab.pids("gw-a", "sleep") == []
    assert no_leftovers(lab) == []


def test_stop_while_up_hook_runs_ends_it_before_down(lab: Lab, tmp_path: Path) -> None:
    """`stop` while the up command still runs (well within its timeout): the up command and
    its children are ended first, then down runs, and nothing is left; the start says so."""
    up_pid, seen = tmp_path / "up.pid", tmp_path / "down.seen"
    conf = lab.write_site_conf(
        "site-b",
        hooks_up=f"/bin/sh -c '/bin/sleep 600 & echo $$ $! > {up_pid}; wait'",
        hooks_down=f"/bin/sh -c 'for p in $(cat {up_pid}); do kill -0 $p 2>/dev/null && "
        f"echo $p alive; done > {seen}; echo down ran >> {seen}'",
        hooks_timeout=300,
    )
    start = lab.spawn(
        "gw-a", [sys.executable, "-m", "pppssh", "start", str(conf)],
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_for(lambda: up_pid.exists() and up_pid.read_text().endswith("\n"), 120)
        pids = [int(p) for p in up_pid.read_text().split()]
        stopped = pppssh(lab, "stop", "site-b", timeout=60)
        assert stopped.returncode == 0, show(stopped)
        out = start.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if start.poll() is None:
            start.kill()
    assert start.returncode == 1 and "up command failed" not in out, out
    assert seen.read_text() == "down ran\n", "down ran after the up command had ended"
    assert [p for p in pids if p in lab.pids(None, None)] == []
    assert no_leftovers(lab) == []
