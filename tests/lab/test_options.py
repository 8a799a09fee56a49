"""PPP options in the lab: MTU/MRU on both interfaces, CCP compression agreed by both pppds."""

from __future__ import annotations

import json

import pytest

from tests.lab.netlab import PPP_LOCAL, PPP_REMOTE, WS_B, Lab
from tests.lab.test_tunnel import no_leftovers, ppp_link, pppssh, show, stop_all  # noqa: F401

pytestmark = pytest.mark.lab


def mtu(lab: Lab, ns: str, ifname: str) -> int:
    """The MTU of an interface."""
    return int(json.loads(lab.run(ns, ["ip", "-j", "link", "show", ifname]).stdout)[0]["mtu"])


@pytest.mark.parametrize("method, name", [("deflate", "Deflate"), ("bsdcomp", "BSD-Compress")])
def test_mtu_and_compression(lab: Lab, stop_all: None, method: str, name: str) -> None:  # noqa: F811
    conf = lab.write_site_conf("site-b", ppp_mtu=1300, ppp_mru=1300, ppp_compression=method)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert f"compression: {name}" in started.stdout and "compression enabled" in started.stdout, (
        show(started)
    )
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    assert (mtu(lab, "gw-a", if_a), mtu(lab, "gw-b", if_b)) == (1300, 1300)
    # 1272 bytes of ICMP payload + 28 of headers fill the MTU exactly; one more does not fit
    fits = ["ping", "-n", "-c", "2", "-W", "3", "-M", "do", "-s", "1272", WS_B]
    assert lab.run("ws-a", fits, check=False, timeout=30).returncode == 0
    too_big = lab.run("gw-a", [*fits[:-2], "1273", PPP_REMOTE], check=False, timeout=30)
    assert too_big.returncode != 0 and "mtu=1300" in too_big.stdout + too_big.stderr, too_big
    # compressible traffic crosses intact
    assert lab.run("ws-a", ["ping", "-n", "-c", "3", "-p", "00", "-s", "1000", WS_B],
                   check=False, timeout=30).returncode == 0  # fmt: skip
    stopped = pppssh(lab, "stop", "site-b")
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []
