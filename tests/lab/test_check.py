"""`pppssh check` in the lab: every line ✓ on a sound set-up, and each ✗ where it should be."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pppssh.config import load
from pppssh.remote_setup import sudoers_rules
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
                 "remote sudo allows the routes", "remote link filter",
                 "IP forwarding on the remote gateway",
                 "reverse-path filter on the remote gateway",
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


@pytest.mark.parametrize("ns, route, what, said", [
    ("gw-a", ["10.2.0.128/25", "via", GW_B_WAN], "networks free on this gateway",
     "a route exists already: 10.2.0.128/25 via 198.51.100.2"),
    # the helper tells only that the network is taken, not the routing table
    ("gw-b", ["10.1.0.0/24", "dev", "lan0"], "networks free on the remote gateway",
     "10.1.0.0/24 is taken there"),
    ("gw-b", ["10.1.0.128/25", "dev", "lan0"], "networks free on the remote gateway",
     "10.1.0.0/24 is taken there"),
])  # fmt: skip
def test_clashing_route(lab: Lab, ns: str, route: list[str], what: str, said: str) -> None:
    conf = lab.write_site_conf("site-b")
    lab.run(ns, ["ip", "route", "add", *route])
    try:
        proc = pppssh(lab, "check", str(conf))
    finally:
        lab.run(ns, ["ip", "route", "del", *route])
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == [what], show(proc)
    assert said in proc.stdout, show(proc)
    assert "lan0" not in proc.stdout or ns == "gw-a", "the helper revealed the route"


def test_interface_network_around_a_network_is_taken(lab: Lab) -> None:
    """gw-b's LAN 10.2.0.0/24 holds 10.2.0.128/25: a site routing that there clashes."""
    conf = lab.write_site_conf("site-n", networks_local="10.2.0.128/25", networks_remote="10.7.0.0/24",
                               ppp_local_address="192.168.79.1", ppp_remote_address="192.168.79.2")  # fmt: skip
    proc = pppssh(lab, "check", str(conf))
    assert failed(proc.stdout) == ["networks free on the remote gateway"], show(proc)
    assert "10.2.0.128/25 is taken there" in proc.stdout


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
    conf = lab.write_site_conf("site-b", remote_identity=tmp_path / "id", setup=False)
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["key accepted"], show(proc)


def test_unreachable(lab: Lab) -> None:
    proc = pppssh(lab, "check", str(lab.write_site_conf("site-b", remote_port=2222)))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["SSH reachable"], show(proc)
    assert "Connection refused" in proc.stdout


@pytest.mark.parametrize("helper", ["yes", "no"])
def test_sudo_refuses_pppd(lab: Lab, helper: str) -> None:
    conf = lab.write_site_conf("site-b", remote_helper=helper)
    rules = sudoers_rules(load(conf))
    lab.set_sudoers("\n".join(rules[3:]))  # the routes only
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["remote sudo allows pppd"], show(proc)
    for rule in rules[:3]:  # the fix: the exact rules remote-setup writes, and no others
        assert rule in proc.stdout, show(proc)
    assert "*" not in proc.stdout
    assert lab.pids("gw-b", "pppd") == [], "check must not start pppd"


@pytest.mark.parametrize("helper", ["yes", "no"])
def test_sudo_refuses_routes(lab: Lab, helper: str) -> None:
    conf = lab.write_site_conf("site-b", remote_helper=helper)
    rules = sudoers_rules(load(conf))
    assert rules[-1].endswith("/usr/local/libexec/pppssh-congestion bbr")
    lab.set_sudoers("\n".join(rules[:3] + rules[-1:]))  # pppd and the way down's congestion
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["remote sudo allows the routes"], show(proc)
    assert rules[3] in proc.stdout and rules[4] in proc.stdout, show(proc)


@pytest.mark.parametrize("helper", ["yes", "no"])
def test_sudo_refuses_the_congestion_program(lab: Lab, helper: str) -> None:
    """A gateway whose sudo lacks the line (set up before tcp_congestion_down): check names
    it, with the exact rule as the fix, and nothing else."""
    conf = lab.write_site_conf("site-b", remote_helper=helper)
    rules = sudoers_rules(load(conf))
    lab.set_sudoers("\n".join(rules[:-1]))
    proc = pppssh(lab, "check", str(conf))
    assert proc.returncode == 1, show(proc)
    assert failed(proc.stdout) == ["remote sudo allows the way down's congestion control"], show(
        proc
    )
    assert rules[-1] in proc.stdout, show(proc)


def test_pppd_missing_on_either_side(lab: Lab) -> None:
    # without the helper pppssh asks for the site file's remote pppd itself (with the helper,
    # remote-setup refuses to set up a pppd that is not there)
    lab.write_site_conf("site-b", remote_helper="no")
    conf = lab.write_site_conf(
        "site-b", remote_pppd="/usr/sbin/no-pppd", ppp_local_pppd="/usr/sbin/no-pppd",
        remote_helper="no", setup=False,
    )  # fmt: skip
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
