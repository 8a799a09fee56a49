"""routes --print: golden output for every format, several networks per side, proxyarp cases."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from pppssh.cli import main
from pppssh.commands import lan_gateway
from pppssh.config import ConfigError, SiteConfig, parse
from pppssh.workstations import gateway_commands, plan_lans, render, render_json

GOLDEN = Path(__file__).parent / "golden"
BASE = """\
[remote]
host = 198.51.100.2
user = vpn
identity = id_ed25519
known_hosts = known_hosts
[ppp]
local_address = {local_address}
remote_address = {remote_address}
proxyarp = {proxyarp}
[networks]
local = {local}
remote = {remote}
{extra}
"""
CASES = {
    # name: (local_address, remote_address, proxyarp, local, remote, extra)
    "plain": ("192.168.77.1", "192.168.77.2", "no", "10.1.0.0/24", "10.2.0.0/24", ""),
    "several": (
        "192.168.77.1", "192.168.77.2", "no", "10.1.0.0/24, 10.3.0.0/16",
        "10.2.0.0/24, 172.20.0.0/22, 10.2.8.0/21",
        "local_lan_gateways = 10.3.255.254\nremote_lan_gateways = 172.20.0.9",
    ),
    "proxyarp-remote": ("10.2.0.99", "192.168.77.2", "remote", "10.1.0.0/24", "10.2.0.0/24", ""),
    "proxyarp-both": ("10.2.0.99", "10.1.0.98", "both", "10.1.0.0/24", "10.2.0.0/24", ""),
}  # fmt: skip


def site(case: str) -> SiteConfig:
    """The site file of one case."""
    local_address, remote_address, proxyarp, local, remote, extra = CASES[case]
    text = BASE.format(
        local_address=local_address, remote_address=remote_address, proxyarp=proxyarp,
        local=local, remote=remote, extra=extra,
    )  # fmt: skip
    return parse(text, Path("/etc/pppssh/site-b.conf"))


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; PPPSSH_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("PPPSSH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["ip", "route", "windows", "bsd"])
def test_formats_golden(case: str, fmt: str) -> None:
    """Exact text of every dialect for every case."""
    golden(f"routes-{case}.{fmt}", render(site(case), fmt))


@pytest.mark.parametrize("case", sorted(CASES))
def test_json_golden(case: str) -> None:
    """Exact JSON, which also parses."""
    text = render_json(site(case))
    golden(f"routes-{case}.json", text)
    assert json.loads(text)["site"] == "site-b"


@pytest.mark.parametrize("case", sorted(CASES))
def test_gateways_golden(case: str) -> None:
    """The gateway-side commands `start` would run."""
    golden(f"routes-{case}.gateways", gateway_commands(site(case)))


def test_gateways_with_known_interfaces() -> None:
    """With a running link, the real interface names are used."""
    text = gateway_commands(site("plain"), "ppp3", "ppp7")
    assert "ip route add 10.2.0.0/24 via 192.168.77.2 dev ppp3\n" in text
    assert "route add 10.1.0.0/24 via 192.168.77.1\n" in text  # a helper request
    assert "pppN" not in text


def test_every_far_network_and_peer_routed_via_own_gateway() -> None:
    """Each LAN gets every far network and the far PPP address, via its own gateway."""
    lans = plan_lans(site("several"))
    assert [(lan.side, str(lan.network), str(lan.gateway)) for lan in lans] == [
        ("local", "10.1.0.0/24", "10.1.0.1"),
        ("local", "10.3.0.0/16", "10.3.255.254"),
        ("remote", "10.2.0.0/24", "10.2.0.1"),
        ("remote", "172.20.0.0/22", "172.20.0.9"),
        ("remote", "10.2.8.0/21", "10.2.8.1"),
    ]  # most specific first, like the routes on the gateways
    for lan in lans:
        dests = {str(r.destination) for r in lan.routes}
        far = ["10.2.0.0/24", "10.2.8.0/21", "172.20.0.0/22", "192.168.77.2/32"]
        if lan.side == "remote":
            far = ["10.1.0.0/24", "10.3.0.0/16", "192.168.77.1/32"]
        assert dests == set(far)
        assert {str(r.via) for r in lan.routes} == {str(lan.gateway)}


def test_proxyarp_replaces_the_host_route() -> None:
    """proxyarp=remote: LAN B gets no host route to gw-a's PPP address, and is told why."""
    lans = {(lan.side, str(lan.network)): lan for lan in plan_lans(site("proxyarp-remote"))}
    lan_b = lans["remote", "10.2.0.0/24"]
    assert "10.2.0.99/32" not in {str(r.destination) for r in lan_b.routes}
    assert [str(s.destination) for s in lan_b.skipped] == ["10.2.0.99/32"]
    assert "proxyarp=remote" in lan_b.skipped[0].reason
    lan_a = lans["local", "10.1.0.0/24"]
    assert "192.168.77.2/32" in {str(r.destination) for r in lan_a.routes}


def test_cli_routes_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The verb reads the file and prints the same text; no root and no link needed."""
    conf = tmp_path / "site-b.conf"
    local_address, remote_address, proxyarp, local, remote, extra = CASES["plain"]
    conf.write_text(
        BASE.format(
            local_address=local_address, remote_address=remote_address, proxyarp=proxyarp,
            local=local, remote=remote, extra=extra,
        )
    )  # fmt: skip
    assert main(["routes", "--print", "--format", "bsd", str(conf)]) == 0
    assert capsys.readouterr().out == (GOLDEN / "routes-plain.bsd").read_text()


def test_cli_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad site file: one line naming file, line and key; exit status 2."""
    conf = tmp_path / "site-b.conf"
    conf.write_text("[remote]\nhots = gw\nuser = vpn\n")
    assert main(["routes", "--print", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err == f"pppssh: {conf}:2: hots: unknown key (did you mean 'host'?)\n"


def test_gateways_show_the_full_tunnel() -> None:
    """The halves via the link, after the host route that keeps the SSH server's path."""
    local_address, remote_address, proxyarp, local, remote, _ = CASES["plain"]
    text = BASE.format(
        local_address=local_address, remote_address=remote_address, proxyarp=proxyarp,
        local=local, remote=remote, extra="full_tunnel = yes",
    )  # fmt: skip
    cfg = parse(text, Path("/etc/pppssh/site-b.conf"))
    lines = gateway_commands(cfg, "ppp3", "ppp7").splitlines()
    at = lines.index("ip route add 10.2.0.0/24 via 192.168.77.2 dev ppp3")
    assert lines[at + 1].startswith(f"ip route add {cfg.host}/32 ...  # the SSH server")
    assert lines[at + 2 : at + 4] == [
        "ip route add 0.0.0.0/1 via 192.168.77.2 dev ppp3",
        "ip route add 128.0.0.0/1 via 192.168.77.2 dev ppp3",
    ]


@pytest.mark.parametrize(
    ("network", "configured", "expected"),
    [
        ("10.1.0.0/24", "", "10.1.0.1"),
        ("10.1.0.0/24", "10.1.0.254", "10.1.0.254"),
        ("10.0.0.0/31", "", "10.0.0.0"),  # RFC 3021: .0 and .1 are both usable, .0 first
        ("10.0.0.0/31", "10.0.0.1", "10.0.0.1"),
        ("10.0.0.5/32", "", "10.0.0.5"),  # its one address, never .6 outside it
        ("10.0.0.4/30", "", "10.0.0.5"),
    ],
)
def test_one_lan_gateway_for_config_and_workstations(
    network: str, configured: str, expected: str
) -> None:
    """The address the site file's check and the workstation lines both take as the
    gateway's own on a LAN: configured, else the first usable one, always inside."""
    net = ipaddress.IPv4Network(network)
    gateways = (ipaddress.IPv4Address(configured),) if configured else ()
    assert str(lan_gateway(net, gateways)) == expected
    assert lan_gateway(net, gateways) in net
    extra = f"remote_lan_gateways = {configured}" if configured else ""
    text = BASE.format(
        local_address="192.168.77.1", remote_address="192.168.77.2", proxyarp="no",
        local="10.9.0.0/24", remote=network, extra=extra,
    )  # fmt: skip
    lans = plan_lans(parse(text, Path("/etc/pppssh/site-b.conf")))
    assert [str(lan.gateway) for lan in lans if lan.side == "remote"] == [expected]
    assert all(r.via in lan.network for lan in lans for r in lan.routes)


@pytest.mark.parametrize(
    ("network", "own"), [("10.0.0.0/31", "10.0.0.0"), ("10.0.0.5/32", "10.0.0.5")]
)
def test_ppp_address_may_be_the_gateways_own_on_a_tiny_lan(network: str, own: str) -> None:
    """A PPP address inside its own side's LAN must be that gateway's address there: the
    config check and the workstation lines agree on which one it is."""

    def parsed(addr: str) -> SiteConfig:
        """The site with remote_address addr and its remote LAN the network."""
        text = BASE.format(
            local_address="192.168.77.1", remote_address=addr, proxyarp="no",
            local="10.9.0.0/24", remote=network, extra="",
        )  # fmt: skip
        return parse(text, Path("/etc/pppssh/site-b.conf"))

    cfg = parsed(own)
    assert [str(lan.gateway) for lan in plan_lans(cfg) if lan.side == "remote"] == [own]
    if network.endswith("/31"):
        with pytest.raises(ConfigError, match=r"is not its address there \(10\.0\.0\.0\)"):
            parsed("10.0.0.1")
