"""Full tunnel in the lab: all of gw-a's IPv4 traffic through gw-b, the SSH path pinned."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.netlab import GW_B_WAN, PPP_LOCAL, PPP_REMOTE, WAN, Lab
from tests.lab.test_tunnel import ppp_link, pppssh, show, stop_all  # noqa: F401

pytestmark = pytest.mark.lab

BEYOND = "203.0.113.1"  # an address only gw-b has: "the internet" behind the remote gateway


@pytest.fixture
def wan_via_default_route(lab: Lab) -> Iterator[None]:
    """gw-a reaches gw-b (the SSH server) through a default route, as through an ISP's
    router, not a connected network; gw-b has an address beyond it. Undone afterwards."""
    lab.run("gw-b", ["ip", "addr", "add", f"{BEYOND}/32", "dev", "lo"])
    lab.run("gw-a", ["ip", "route", "del", WAN, "dev", "wan0"])
    lab.run("gw-a", ["ip", "route", "add", "default", "via", GW_B_WAN, "dev", "wan0", "onlink"])
    try:
        yield
    finally:
        lab.run("gw-a", ["ip", "route", "del", "default"], check=False)
        lab.run("gw-a", ["ip", "route", "add", WAN, "dev", "wan0", "proto", "kernel",
                         "scope", "link", "src", "198.51.100.1"], check=False)  # fmt: skip
        lab.run("gw-b", ["ip", "addr", "del", f"{BEYOND}/32", "dev", "lo"], check=False)


def test_full_tunnel(lab: Lab, stop_all: None, wan_via_default_route: None) -> None:  # noqa: F811
    before = lab.routes("gw-a")
    conf = lab.write_site_conf("site-b", networks_full_tunnel="yes", networks_remote=None)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    routes = lab.routes("gw-a")
    assert f"0.0.0.0/1 via {PPP_REMOTE} dev {if_a}" in routes, routes
    assert f"128.0.0.0/1 via {PPP_REMOTE} dev {if_a}" in routes, routes
    assert f"{GW_B_WAN} via {GW_B_WAN} dev wan0 onlink" in routes, routes
    assert f"[#] ip -4 route get {GW_B_WAN}\n" in started.stdout

    got = lab.run("gw-a", ["ip", "-4", "route", "get", BEYOND]).stdout
    assert f"dev {if_a}" in got, f"{BEYOND} must go through the link: {got}"
    got = lab.run("gw-a", ["ip", "-4", "route", "get", GW_B_WAN]).stdout
    assert "dev wan0" in got, f"the SSH server must stay off the link: {got}"
    assert lab.ping("gw-a", BEYOND, count=3), "gw-a reaches beyond gw-b through the link"
    assert lab.ping("ws-a", BEYOND, count=3), "so do the workstations behind gw-a"
    # the SSH connection still carries the link after traffic went through it
    status = pppssh(lab, "status", "site-b", "--json")
    assert status.returncode == 0 and '"reconnects": 0' in status.stdout, show(status)

    stopped = pppssh(lab, "stop", "site-b")
    assert stopped.returncode == 0, show(stopped)
    assert lab.routes("gw-a") == before, "the routing table is as it was"
    assert lab.pids("gw-a", "pppd") == [] and lab.pids("gw-b", "pppd") == []
    assert lab.ppp_links("gw-a") == [] and lab.ppp_links("gw-b") == []
