"""The lab itself, before any tunnel: reachability, sshd with host key checking, sudo policy."""

from __future__ import annotations

import os

import pytest

from tests.lab.netlab import GW_A_LAN, GW_B_LAN, GW_B_WAN, WS_B, Lab

pytestmark = pytest.mark.lab


def ssh_argv(lab: Lab, known_hosts: str, command: str) -> list[str]:
    """Return the ssh command gw-a runs to reach the vpn account on gw-b."""
    return [
        "ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-i", str(lab.key),
        f"{lab.user}@{GW_B_WAN}", command,
    ]  # fmt: skip


def test_dev_ppp_exists() -> None:
    """The kernel has PPP."""
    assert os.path.exists("/dev/ppp")


def test_each_hop_answers_but_workstations_do_not_reach_each_other(lab: Lab) -> None:
    """LANs and WAN work; without a tunnel ws-a cannot reach ws-b."""
    assert lab.ping("ws-a", GW_A_LAN)
    assert lab.ping("gw-a", GW_B_WAN)
    assert lab.ping("ws-b", GW_B_LAN)
    assert not lab.ping("ws-a", WS_B, wait=1)


def test_sshd_accepts_the_vpn_key_with_host_key_checking(lab: Lab) -> None:
    """sshd in gw-b lets the vpn key in from gw-a when gw-b's host key is known, only then."""
    ok = lab.run("gw-a", ssh_argv(lab, str(lab.known_hosts), "id -un"), check=False)
    assert (ok.returncode, ok.stdout.strip()) == (0, lab.user), ok.stderr
    unknown = lab.run("gw-a", ssh_argv(lab, "/dev/null", "true"), check=False)
    assert unknown.returncode == 255
    assert "Host key verification failed" in unknown.stderr


def test_sudo_allows_pppd_and_routes_only(lab: Lab) -> None:
    """vpn may sudo the site's exact pppd and route commands without a password, no other."""
    assert all(lab.sudo_check().values()), lab.sudo_check()
    refused = lab.run("gw-b", ["sudo", "-n", "/usr/bin/id"], check=False, user=lab.user)
    assert refused.returncode != 0


def test_set_sudoers_can_refuse_pppd_and_is_restored(lab: Lab) -> None:
    """A test may narrow the policy; the lab puts the default back after the test."""
    lab.set_sudoers(f"{lab.user} ALL=(root) NOPASSWD: /usr/sbin/ip route add *\n")
    assert not lab.sudo_check()["sudo pppd allowed"]
    with pytest.raises(ValueError):
        lab.set_sudoers("this is not sudoers syntax\n")


def test_write_site_conf(lab: Lab) -> None:
    """The site config points at the lab's key and known_hosts; overrides apply."""
    path = lab.write_site_conf(ppp_proxyarp="remote", sections={"extra": {"x": "1"}})
    text = path.read_text()
    assert f"identity = {lab.site_key('site-b')}\n" in text  # each site its own key
    assert f"known_hosts = {lab.known_hosts}\n" in text
    assert "proxyarp = remote\n" in text
    assert "[extra]\nx = 1\n" in text
