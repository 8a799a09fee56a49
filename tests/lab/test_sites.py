"""Several sites from one gateway: gw-a as a hub with two spokes, each link on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, Spoke
from tests.lab.test_tunnel import ppp_link, pppssh, show

pytestmark = pytest.mark.lab

RUN_DIR = Path("/run/pppssh")


@pytest.fixture
def spokes(lab: Lab) -> Iterator[list[Spoke]]:
    """Two spokes beside gw-b; every site stopped and the spokes gone afterwards."""
    made = [lab.add_spoke(1), lab.add_spoke(2)]
    try:
        yield made
    finally:
        pppssh(lab, "stop", "--all")
        lab.remove_spokes()


def spoke_state(lab: Lab, spoke: Spoke) -> dict[str, object]:
    """What must not change on one spoke's link while the other is stopped."""
    if_hub = ppp_link(lab, "gw-a", spoke.ppp_local, spoke.ppp_remote)
    hub_routes = [r for r in lab.routes("gw-a") if if_hub in r.split()]
    far = lab.run(spoke.gw, ["ip", "-4", "route", "show"]).stdout.splitlines()
    return {
        "hub interface": if_hub,
        "hub routes": hub_routes,
        "spoke routes": sorted(line.strip() for line in far if " via " in line),
        "hub pppd": sorted(p for p in lab.pids("gw-a", "pppd")
                           if spoke.site.encode() in Path(f"/proc/{p}/cmdline").read_bytes()),
        "state": json.loads((RUN_DIR / f"{spoke.site}.json").read_text())["pid"],
    }  # fmt: skip


def test_hub_with_two_spokes(lab: Lab, spokes: list[Spoke]) -> None:
    one, two = spokes
    confs = {sp.site: lab.spoke_site_conf(sp) for sp in spokes}
    for site, conf in confs.items():
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, f"{site}: {show(started)}"
    status = pppssh(lab, "status", "--json")
    assert status.returncode == 0, show(status)
    sites = {s["site"]: s for s in json.loads(status.stdout)["sites"]}
    assert set(sites) == {one.site, two.site} and {s["state"] for s in sites.values()} == {"up"}
    assert sites[one.site]["interface"] != sites[two.site]["interface"]
    for sp in spokes:
        assert sites[sp.site]["local_routes"] == [
            f"ip route add {sp.lan} via {sp.ppp_remote} dev {sites[sp.site]['interface']}"
        ], sites[sp.site]
    for sp in spokes:
        assert lab.ping("ws-a", sp.ws_addr, count=2), f"ws-a cannot reach {sp.ws}"
    refused = pppssh(lab, "stop")
    assert refused.returncode == 2 and "several sites are running" in refused.stderr, show(refused)

    kept = spoke_state(lab, two)
    stopped = pppssh(lab, "stop", one.site)
    assert stopped.returncode == 0, show(stopped)
    assert not (RUN_DIR / f"{one.site}.json").exists()
    assert lab.pids(one.gw, "pppd") == [], "the stopped site's remote pppd is gone"
    assert not [r for r in lab.routes("gw-a") if one.lan in r], lab.routes("gw-a")
    assert spoke_state(lab, two) == kept, "stopping one site touched the other"
    assert lab.ping("ws-a", two.ws_addr, count=2), "the other site's traffic stopped"
    status = pppssh(lab, "status")
    assert status.returncode == 0 and one.site not in status.stdout, show(status)
    assert two.site in status.stdout

    stopped = pppssh(lab, "stop", "--all")
    assert stopped.returncode == 0, show(stopped)
    assert lab.pids("gw-a", "pppd") == [] and lab.ppp_links("gw-a") == []
    assert list(RUN_DIR.glob("*.json")) == []
