"""IPv6 over the link: IPV6CP between the pppds, IPv6 routes both sides, ping6 across."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.lab.netlab import NET_A, NET_B, PPP_LOCAL, PPP_REMOTE, Lab
from tests.lab.test_tunnel import no_leftovers, ppp_link, pppssh, show, stop_all  # noqa: F401

pytestmark = pytest.mark.lab

NET6_A, NET6_B = "2001:db8:a::/64", "2001:db8:b::/64"
# (namespace, interface, address) and the workstations' default routes
ADDRESSES = (
    ("gw-a", "lan0", "2001:db8:a::1/64"), ("ws-a", "eth0", "2001:db8:a::10/64"),
    ("gw-b", "lan0", "2001:db8:b::1/64"), ("ws-b", "eth0", "2001:db8:b::10/64"),
)  # fmt: skip
WS6_B = "2001:db8:b::10"


@pytest.fixture
def ipv6_lans(lab: Lab) -> Iterator[None]:
    """IPv6 on both LANs, forwarding on both gateways; all taken away afterwards."""
    for ns, ifname, addr in ADDRESSES:
        lab.run(ns, ["ip", "-6", "addr", "add", addr, "dev", ifname, "nodad"])
    for ws, gw in (("ws-a", "2001:db8:a::1"), ("ws-b", "2001:db8:b::1")):
        lab.run(ws, ["ip", "-6", "route", "add", "default", "via", gw])
    for gw in ("gw-a", "gw-b"):
        lab.run(gw, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    try:
        yield
    finally:
        for gw in ("gw-a", "gw-b"):
            lab.run(gw, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"], check=False)
        for ws in ("ws-a", "ws-b"):
            lab.run(ws, ["ip", "-6", "route", "del", "default"], check=False)
        for ns, ifname, addr in ADDRESSES:
            lab.run(ns, ["ip", "-6", "addr", "del", addr, "dev", ifname], check=False)


def routes6(lab: Lab, ns: str) -> list[str]:
    """IPv6 routes of a namespace, as `ip -6 route` lines."""
    return [line.strip() for line in lab.run(ns, ["ip", "-6", "route"]).stdout.splitlines()]


def test_ipv6_across_the_link(lab: Lab, stop_all: None, ipv6_lans: None) -> None:  # noqa: F811
    before = {gw: routes6(lab, gw) for gw in ("gw-a", "gw-b")}
    conf = lab.write_site_conf(
        "site-b", ppp_ipv6="yes", remote_helper="no", networks_local=f"{NET_A}, {NET6_A}",
        networks_remote=f"{NET_B}, {NET6_B}",
    )  # fmt: skip
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert "IPv6 up: fe80::1 -> fe80::2\n" in started.stdout, show(started)
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    addrs = json.loads(lab.run("gw-a", ["ip", "-j", "-6", "addr", "show", if_a]).stdout)
    assert "fe80::1" in [a["local"] for a in addrs[0]["addr_info"]], addrs
    assert any(r.startswith(f"{NET6_B} dev {if_a}") for r in routes6(lab, "gw-a")), routes6(
        lab, "gw-a"
    )
    assert any(r.startswith(f"{NET6_A} dev {if_b}") for r in routes6(lab, "gw-b")), routes6(
        lab, "gw-b"
    )
    ping = ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "3", WS6_B]
    done = lab.run("ws-a", ping, check=False, timeout=30)
    assert done.returncode == 0, f"ws-a cannot reach {WS6_B}: {done.stdout}{done.stderr}"
    status = pppssh(lab, "status", "site-b")
    assert f"{NET6_B} dev {if_a}" in status.stdout, show(status)

    stopped = pppssh(lab, "stop", "site-b")
    assert stopped.returncode == 0, show(stopped)
    assert {gw: routes6(lab, gw) for gw in ("gw-a", "gw-b")} == before
    assert no_leftovers(lab) == []
