"""Reload and reconnect on a running link: `pppssh reload` applies a changed site file by
diff on both gateways without dropping the link, refuses (and rolls back) what the remote
gateway was not set up for, and `pppssh reconnect` drops the link and dials again at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab.netlab import NET_A, PPP_LOCAL, PPP_REMOTE, WS_A, WS_B, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, ppp_link, pppssh, show
from tests.lab.test_tunnel import stop_all as stop_all  # the fixture, used by name

pytestmark = pytest.mark.lab

SITE = "site-b"
SET_UP = "10.77.0.0/24"  # a network of gw-a's side added and set up with remote-setup
NOT_SET_UP = "10.78.0.0/24"  # one added to the site file only


def state() -> dict[str, Any]:
    """The running site's state file."""
    data: dict[str, Any] = json.loads((RUN_DIR / f"{SITE}.json").read_text())
    return data


def test_reload_by_diff_refusal_rolled_back_and_reconnect(lab: Lab, stop_all: None) -> None:
    """One link: a reload adds a set-up network's route on gw-b and its filter rule on gw-a,
    the link and its pppds untouched; a reload with a network gw-b's helper does not allow
    is refused and rolled back; a key that needs a new link is refused; SIGHUP does not stop
    the site; a reconnect brings a new link up at once with the reloaded networks."""
    conf = lab.write_site_conf(SITE)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    first = state()
    pppds = (lab.pids("gw-a", "pppd"), lab.pids("gw-b", "pppd"))

    # A network added and set up on gw-b (remote-setup --apply's policy): applied by diff.
    lab.write_site_conf(SITE, networks_local=f"{NET_A} {SET_UP}")
    reloaded = pppssh(lab, "reload", SITE)
    assert reloaded.returncode == 0, show(reloaded)
    assert "reload 1: done: added local filter forward from the link to 10.77.0.0/24" in (
        reloaded.stdout
    ), show(reloaded)
    assert f"{SET_UP} via {PPP_LOCAL} dev {if_b}" in lab.routes("gw-b")
    rules = lab.run("gw-a", ["ip", "-4", "rule", "show"]).stdout
    assert any(f"iif {if_a}" in r and f"to {SET_UP}" in r for r in rules.splitlines()), rules
    now = state()
    assert (now["pid"], now["local_pppd_pid"], now["interface"]) == (
        first["pid"], first["local_pppd_pid"], first["interface"]
    )  # fmt: skip
    assert (lab.pids("gw-a", "pppd"), lab.pids("gw-b", "pppd")) == pppds, "the link was kept"
    assert any(e["side"] == "remote" and SET_UP in e["what"] for e in now["ledger"])
    assert lab.ping("ws-a", WS_B, count=2) and lab.ping("ws-b", WS_A, count=2)

    # A network gw-b was not set up for: refused by its helper, rolled back, link kept.
    lab.write_site_conf(SITE, networks_local=f"{NET_A} {SET_UP} {NOT_SET_UP}", setup=False)
    refused = pppssh(lab, "reload", SITE)
    assert refused.returncode == 1, show(refused)
    assert "reload 2: refused: refused on the remote gateway" in refused.stderr, show(refused)
    assert "remote-setup" in refused.stderr and "rolled back" in refused.stderr
    assert NOT_SET_UP not in " ".join(lab.routes("gw-b"))
    assert NOT_SET_UP not in lab.run("gw-a", ["ip", "-4", "rule", "show"]).stdout
    assert state()["ledger"] == now["ledger"]
    assert (lab.pids("gw-a", "pppd"), lab.pids("gw-b", "pppd")) == pppds

    # A key that needs a new link: said so, nothing changed.
    lab.write_site_conf(SITE, networks_local=f"{NET_A} {SET_UP}", ppp_mtu="1300", setup=False)
    mtu = pppssh(lab, "reload", SITE)
    assert mtu.returncode == 1 and "[ppp] mtu changed: that needs a new link" in mtu.stderr, show(
        mtu
    )
    assert state()["ledger"] == now["ledger"] and state()["pid"] == first["pid"]

    # Reconnect now: a new link at once (no backoff), with the reloaded networks.
    again = pppssh(lab, "reconnect", SITE)
    assert again.returncode == 0, show(again)
    assert wait_for(
        lambda: state().get("reconnects") == 1 and state().get("state") == "up", timeout=40
    ), state()
    after = state()
    assert after["pid"] == first["pid"] and after["local_pppd_pid"] != first["local_pppd_pid"]
    if_b2 = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    assert f"{SET_UP} via {PPP_LOCAL} dev {if_b2}" in lab.routes("gw-b")
    assert lab.ping("ws-a", WS_B, count=2)
    log = (RUN_DIR / f"{SITE}.log").read_text()
    assert "reconnect requested (SIGUSR1); trying again in 0.0s" in log, log

    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []
