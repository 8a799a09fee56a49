"""Site hooks in the lab: up runs with the link's facts once routes exist, down before they go."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.netlab import NET_B, PPP_LOCAL, PPP_REMOTE, WS_B, Lab
from tests.lab.test_tunnel import no_leftovers, ppp_link, pppssh, show, stop_all  # noqa: F401

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
