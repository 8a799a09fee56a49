"""The lab itself, before any tunnel: reachability, sshd with host key checking, sudo policy,
and the UML boot's wall between the lab and the host's files."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.lab.netlab import GW_A_LAN, GW_B_LAN, GW_B_WAN, WS_B, Lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
IN_UML = os.environ.get("PPPSSH_IN_UML") == "1"


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


def mountinfo(pid: str = "1") -> list[tuple[str, str, str]]:
    """The mounts PID 1's mount namespace shows, entered with nsenter -m: (point, options,
    file system type) each."""
    out = subprocess.run(["nsenter", "-m", "-t", pid, "--", "cat", "/proc/self/mountinfo"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    mounts = []
    for line in out.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        mounts.append((fields[4], fields[5], right.split()[0]))
    return mounts


def test_the_host_root_is_out_of_reach_from_pid_1s_mount_namespace(tmp_path: Path) -> None:
    """Entering PID 1's mount namespace (as nsenter -m does) lands in the overlay, not on the
    host's root: the host's files are mounted there only as the read-only repository and the
    results folder, a write to the repository is refused, and a canary written at a host path
    stays in the overlay (a fresh read-only view of the host's root does not show it)."""
    assert IN_UML, "this test checks the UML lab's own boot"
    results = os.environ["PPPSSH_LAB_RESULTS"]
    mounts = mountinfo()
    assert [kind for point, _, kind in mounts if point == "/"] == ["overlay"], mounts
    host = {point: options.split(",") for point, options, kind in mounts if kind == "hostfs"}
    assert set(host) <= {str(REPO), results}, host
    assert "ro" in host[str(REPO)], host
    assert all("ro" in opts for point, opts in host.items() if point != results), host

    def in_pid_1(script: str) -> subprocess.CompletedProcess[str]:
        """Run a shell script in PID 1's mount namespace."""
        argv = ["nsenter", "-m", "-t", "1", "--", "sh", "-c", script]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    canary = f"/var/tmp/pppssh-lab-canary-{uuid.uuid4().hex}"
    refused = in_pid_1(f"echo canary >{REPO}/{Path(canary).name}")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
    wrote = in_pid_1(f"echo canary >{canary} && cat {canary}")
    assert (wrote.returncode, wrote.stdout) == (0, "canary\n"), wrote
    view = tmp_path / "host"
    view.mkdir()
    look = subprocess.run(
        ["unshare", "-m", "--", "sh", "-c",
         f'mount -t hostfs -o ro none "$1" -o / && test -f "$1{REPO}/pyproject.toml" || exit 9;'
         f' test -e "$1{canary}" || test -e "$1{REPO}/{Path(canary).name}"; echo $?',
         "sh", str(view)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (look.returncode, look.stdout) == (0, "1\n"), look
