"""`pppssh check` in the lab: every line ✓ on a sound set-up, and each ✗ where it should be."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_B_WAN, NET_B, Lab
from tests.lab.test_tunnel import no_leftovers, pppssh, show

pytestmark = pytest.mark.lab

OK, FAIL = "\u2713", "\u2717"


def failed(stdout: str) -> list[str]:
    """The names of the failed checks, in order."""
    return [line[2:].split(":")[0] for line in stdout.splitlines() if line.startswith(FAIL)]


def test_all_checks_pass_and_nothing_changes(lab: Lab) -> None:
    conf = lab.write_site_conf("site-b")
    before = {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")}
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 0, show(proc)
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith(OK + " ") for line in lines), show(proc)
    for what in ("site file valid", "local pppd: /usr/sbin/pppd: pppd version 2.4",
                 "kernel PPP support", "IP forwarding on this gateway",
                 "networks free on this gateway", "SSH reachable", "host key known",
                 "key accepted", "remote pppd", "remote sudo allows pppd",
                 "remote sudo allows the routes", "IP forwarding on the remote gateway",
                 "networks free on the remote gateway"):  # fmt: skip
        assert any(line.startswith(f"{OK} {what}") for line in lines), f"{what}: {show(proc)}"
    assert {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")} == before
    assert no_leftovers(lab) == []


@pytest.fixture
def forwarding_off(lab: Lab) -> Iterator[Callable[[str], None]]:
    """Switch IPv4 forwarding off in a gateway; on again afterwards."""
    touched: list[str] = []

    def off(ns: str) -> None:
        touched.append(ns)
        lab.run(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=0"])

    yield off
    for ns in touched:
        lab.run(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])


@pytest.mark.parametrize("ns, what", [
    ("gw-a", "IP forwarding on this gateway"),
    ("gw-b", "IP forwarding on the remote gateway"),
])  # fmt: skip
def test_forwarding_off(
    lab: Lab, forwarding_off: Callable[[str], None], ns: str, what: str
) -> None:
    forwarding_off(ns)
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b")))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == [what], show(proc)
    assert "fix: sysctl -w net.ipv4.ip_forward=1" in proc.stdout


@pytest.mark.parametrize("ns, route, what", [
    ("gw-a", ["10.2.0.128/25", "via", GW_B_WAN], "networks free on this gateway"),
    ("gw-b", ["10.1.0.0/24", "dev", "lan0"], "networks free on the remote gateway"),
])  # fmt: skip
def test_clashing_route(lab: Lab, ns: str, route: list[str], what: str) -> None:
    lab.run(ns, ["ip", "route", "add", *route])
    try:
        proc = pppssh(lab, "check", str(lab.write_site_conf("site-b")))
    finally:
        lab.run(ns, ["ip", "route", "del", *route])
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == [what], show(proc)
    assert f"a route exists already: {' '.join(route)}" in proc.stdout, show(proc)


def test_remote_lan_already_on_this_gateway(lab: Lab) -> None:
    conf = lab.write_site_conf("site-b", networks_remote="198.51.100.0/25, " + NET_B)
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["networks free on this gateway"], show(proc)
    assert "198.51.100.0/25 overlaps 198.51.100.0/24 on wan0" in proc.stdout


def test_unknown_host_key(lab: Lab, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")])
    other.write_text(f"{GW_B_WAN} " + (tmp_path / "k.pub").read_text())
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b", remote_known_hosts=other)))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["host key known"], show(proc)
    assert "HOST KEY CHANGED" in proc.stdout
    assert "key accepted" not in proc.stdout, "nothing is tried after a refused host key"


def test_key_refused(lab: Lab, tmp_path: Path) -> None:
    lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")])
    conf = lab.write_site_conf("site-b", remote_identity=tmp_path / "id")
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["key accepted"], show(proc)


def test_unreachable(lab: Lab) -> None:
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b", remote_port=2222)))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["SSH reachable"], show(proc)
    assert "Connection refused" in proc.stdout


def test_sudo_refuses_pppd(lab: Lab) -> None:
    lab.set_sudoers("vpn ALL=(root) NOPASSWD: /usr/sbin/ip route add *, /usr/sbin/ip route del *")
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b")))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["remote sudo allows pppd"], show(proc)
    assert lab.pids("gw-b", "pppd") == [], "check must not start pppd"


def test_sudo_refuses_routes(lab: Lab) -> None:
    lab.set_sudoers("vpn ALL=(root) NOPASSWD: /usr/sbin/pppd")
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b")))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["remote sudo allows the routes"], show(proc)


def test_pppd_missing_on_either_side(lab: Lab) -> None:
    conf = lab.write_site_conf(
        "site-b", remote_pppd="/usr/sbin/no-pppd", ppp_local_pppd="/usr/sbin/no-pppd"
    )
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["local pppd", "remote pppd", "remote sudo allows pppd"], show(
        proc
    )
    assert "apt-get install ppp" in proc.stdout


def test_bad_site_file(lab: Lab) -> None:
    conf = lab.write_site_conf("site-b", ppp_mtu="huge")
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 2, show(proc)
    assert proc.stdout.startswith(f"{FAIL} site file valid: {conf}:"), show(proc)
