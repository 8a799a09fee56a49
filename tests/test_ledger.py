"""pppssh.ledger: entries as data, JSON round trip, "already gone" answers, diff."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pppssh.errors import CommandFailed, RemoteFailed
from pppssh.ledger import Entry, Ledger, already_gone, diff, filter_entry, route_entry
from pppssh.plan import Command, RouteChange, local_routes, remote_routes
from tests.fakes import site


def entries() -> list[Entry]:
    """A filter rule, a local route and a remote route, as a site's start records them."""
    cfg = site()
    rule = Command(("ip", "-4", "rule", "add", "iif", "ppp0", "priority", "5001", "prohibit"))
    undo = Command(("ip", "-4", "rule", "del", "iif", "ppp0", "priority", "5001", "prohibit"))
    return [
        filter_entry("drop the rest", rule, undo),
        route_entry("local", local_routes(cfg, "ppp0")[0]),
        route_entry("remote", remote_routes(cfg, "ppp5")[0]),
    ]


def test_route_entry_is_data_from_the_plan() -> None:
    """apply and undo are plan.py's argv; `what` is the route itself, for status."""
    local = entries()[1]
    assert local.side == "local" and local.kind == "route"
    assert local.apply == ("ip", "route", "add", "10.2.0.0/24", "via", "10.99.0.2", "dev", "ppp0")
    assert local.undo == ("ip", "route", "del", "10.2.0.0/24", "via", "10.99.0.2", "dev", "ppp0")
    assert local.what == "10.2.0.0/24 via 10.99.0.2 dev ppp0"
    assert local.gone == ("ESRCH", "ENODEV")
    remote = entries()[2]
    assert remote.apply == ("route", "add", "10.1.0.0/24", "via", "10.99.0.1")
    assert remote.what == "10.1.0.0/24 via 10.99.0.1" and remote.gone == ()


def test_json_round_trip() -> None:
    """Through JSON text and back: the same entries, in the same order."""
    ledger = Ledger(entries())
    back = Ledger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert back.entries == ledger.entries
    sysctl = filter_entry("strict rp_filter", Command(("sysctl", "-w", "x=1")), None)
    assert Entry.from_json(json.loads(json.dumps(sysctl.to_json()))) == sysctl
    assert sysctl.undo_command is None


@pytest.mark.parametrize(
    "bad",
    [{}, {"side": "moon", "kind": "route", "what": "x", "apply": ["ip"]},
     {"side": "local", "kind": "route", "what": "x", "apply": []},
     {"side": "local", "kind": "other", "what": "x", "apply": ["ip"]}, {"apply": 3}],
)  # fmt: skip
def test_not_an_entry_is_refused(bad: dict[str, object]) -> None:
    """A state file that does not hold ledger entries is refused, never half read."""
    with pytest.raises(ValueError, match="not a ledger entry"):
        Ledger.from_json([bad])


def test_every_change_is_reported() -> None:
    """on_change hears each add and remove with the whole list (the state file is rewritten)."""
    heard: list[list[str]] = []
    ledger = Ledger(on_change=lambda now: heard.append([e.kind for e in now]))
    one, two, three = entries()
    ledger.add(one)
    ledger.add(two)
    ledger.add(three)
    ledger.remove(three)
    assert heard == [["filter"], ["filter", "route"], ["filter", "route", "route"],
                     ["filter", "route"]]  # fmt: skip
    assert ledger.last() == two and len(ledger) == 2


@pytest.mark.parametrize(
    ("stderr", "route_gone", "rule_gone"),
    [("RTNETLINK answers: No such process", True, False),
     ("Cannot find device \"ppp0\"", True, True),
     ("RTNETLINK answers: No such file or directory", False, True),
     ("RTNETLINK answers: Operation not permitted", False, False)],
)  # fmt: skip
def test_already_gone_is_decided_in_one_place(
    stderr: str, route_gone: bool, rule_gone: bool
) -> None:
    """ESRCH/ENODEV for a route, ENOENT/ENODEV for a rule; anything else is a real failure."""
    rule, route, remote = entries()
    assert already_gone(route, CommandFailed(route.shown, 2, stderr)) is route_gone
    assert already_gone(rule, CommandFailed(rule.shown, 2, stderr)) is rule_gone
    assert already_gone(remote, RemoteFailed(remote.shown, 2, stderr)) is False


def route(net: str, dev: str = "ppp0") -> Entry:
    """A local route entry to net."""
    tail = (net, "via", "10.99.0.2", "dev", dev)
    change = RouteChange(
        ipaddress.ip_network(net),
        Command(("ip", "route", "add", *tail)),
        Command(("ip", "route", "del", *tail)),
    )
    return route_entry("local", change)


def test_diff_keeps_what_stays_and_orders_the_rest() -> None:
    """Removed: newest first; added: in the new order; unchanged: untouched."""
    a, b, c, d = (route(n) for n in ("10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24", "10.5.0.0/24"))
    remove, add = diff([a, b, c], [a, c, d])
    assert remove == [b] and add == [d]
    remove, add = diff([a, b, c], [])
    assert remove == [c, b, a] and add == []
    assert diff([], [a, b]) == ([], [a, b])
    assert diff([a, b], [a, b]) == ([], [])


def test_diff_sees_a_changed_interface_as_remove_and_add() -> None:
    """The same network on another interface is another change."""
    old, new = route("10.2.0.0/24", "ppp0"), route("10.2.0.0/24", "ppp1")
    assert diff([old], [new]) == ([old], [new])
    remote = entries()[2]
    assert diff([remote, old], [remote, new]) == ([old], [new])


def test_each_kind_says_its_own_already_gone_note() -> None:
    """The note stop prints when an undo finds the change gone, carried by the entry; a link
    filter rule has none (its error is shown whole)."""
    notes = {
        kind: Entry("local", kind, what, ("true",), ("true",)).gone_note
        for kind, what in [
            ("route", "10.2.0.0/24 dev ppp0"),
            ("server-route", "198.51.100.2 via 192.0.2.1"),
            ("dns", "DNS servers of ppp0: 10.2.0.53"),
            ("mss", "TCP MSS clamp on ppp0"),
            ("filter", "link filter of ppp0"),
        ]
    }
    assert notes == {
        "route": "route 10.2.0.0/24 already gone with its interface",
        "server-route": "route 198.51.100.2 already gone with its interface",
        "dns": "DNS servers of ppp0 already gone",
        "mss": "already gone: TCP MSS clamp on ppp0",
        "filter": None,
    }
