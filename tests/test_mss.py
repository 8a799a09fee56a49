"""MSS clamping: the key, the exact nft and xtables commands, their ledger entries and the
lifecycle's step (fake ports: nft never runs here), recovery and `check`'s line."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pppssh import mss
from pppssh.config import ConfigError, parse
from pppssh.errors import CommandFailed
from pppssh.events import ErrorRecorded
from pppssh.ledger import Entry, Ledger, already_gone
from pppssh.lifecycle import recover
from pppssh.plan import shell_join
from pppssh.supervisor import needs_new_link
from pppssh.system import State
from tests.fakes import Recorder, World, fake_ports, site
from tests.test_lifecycle import NEW_NETWORKS, failed_start, harness, history, reload_when_up

TABLE = "inet pppssh-ppp0"
RULE = (
    '{way} "ppp0" meta nfproto {family} tcp flags & (syn | rst) == syn tcp option maxseg '
    "size > {size} tcp option maxseg size set {size}"
)
CHAIN = "chain forward { type filter hook forward priority mangle; policy accept; "
NFT_DELETE = "nft delete table inet pppssh-ppp0"
ROUTE_HERE = "ip route add 10.2.0.0/24 via 10.99.0.2 dev ppp0"
ROUTE_DEL = "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0"
REFUSED = (
    "Error: Could not process rule: Operation not supported\n"
    "add table inet pppssh-ppp0\n^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
)


def nft_script(*rules: tuple[str, int]) -> str:
    """The one nft transaction for (family, size) pairs, both ways each."""
    body = "; ".join(
        RULE.format(way=way, family=family, size=size)
        for family, size in rules
        for way in ("oifname", "iifname")
    )
    return f"add table {TABLE}; delete table {TABLE}; add table {TABLE} {{ {CHAIN}{body}; }}; }}"


def legacy(op: str, flag: str, size: int, tool: str = "iptables-legacy") -> str:
    """One xtables rule as shown."""
    return (
        f"{tool} -w -t mangle {op} FORWARD {flag} ppp0 -p tcp --tcp-flags SYN,RST SYN "
        f"-m tcpmss --mss {size + 1}:65535 -j TCPMSS --set-mss {size}"
    )


def cfg_with(**changes: Any) -> Any:
    """The fake site (mss_clamp = auto) with changes."""
    return dataclasses.replace(site(), **{"mss_clamp": None, **changes})


# ---------------------------------------------------------------------------- the key


def test_key_parses_auto_yes_no_and_refuses_others() -> None:
    """auto (the default) is None; yes/no are booleans; anything else names file, line, key."""
    body = "[remote]\nhost = h\nuser = u\nidentity = i\nknown_hosts = k\n[ppp]\n"
    body += "local_address = 10.0.0.1\nremote_address = 10.0.0.2\n"
    path = Path("/etc/pppssh/s.conf")
    assert parse(body, path).mss_clamp is None
    assert parse(body + "mss_clamp = Auto\n", path).mss_clamp is None
    assert parse(body + "mss_clamp = yes\n", path).mss_clamp is True
    assert parse(body + "mss_clamp = off\n", path).mss_clamp is False
    with pytest.raises(ConfigError) as err:
        parse(body + "mss_clamp = 1300\n", path)
    assert str(err.value) == "/etc/pppssh/s.conf:9: mss_clamp: '1300' is not one of: auto, yes, no"


@pytest.mark.parametrize(
    "mtu, mru, setting, wanted",
    [
        (1400, 1400, None, True),  # the default: auto, below the LANs' 1500
        (1500, 1500, None, False),
        (1500, 1400, None, True),  # the interface gets the smaller of mtu and the peer's mru
        (9000, 9000, None, False),
        (1500, 1500, True, True),
        (1280, 1280, False, False),
    ],
)
def test_wanted_follows_the_link_mtu(
    mtu: int, mru: int, setting: bool | None, wanted: bool
) -> None:
    """auto clamps when min(mtu, mru) < 1500; yes and no decide alone."""
    assert mss.wanted(cfg_with(mtu=mtu, mru=mru, mss_clamp=setting)) is wanted


def test_a_changed_mss_clamp_needs_a_new_link() -> None:
    """A reload does not touch the clamp (kind mss is not in its diff): the key says so."""
    old = cfg_with(mss_clamp=None)
    assert needs_new_link(old, dataclasses.replace(old, mss_clamp=False)) == ["[ppp] mss_clamp"]


# ---------------------------------------------------------------------------- the commands


def test_nft_one_transaction_both_ways_and_its_undo() -> None:
    """Replace-then-create in one transaction (a crash's table is replaced); the undo deletes
    the table; explicit sizes, since `rt mtu` would see the LAN's 1500 for a SYN/ACK coming in."""
    (step,) = mss.nft_steps(cfg_with(mtu=1280, mru=1280), "ppp0")
    assert step.apply.argv == ("nft", nft_script(("ipv4", 1240)))
    assert step.undo is not None and step.undo.shown == NFT_DELETE
    (v6,) = mss.nft_steps(cfg_with(mtu=1400, mru=1400, ipv6=True), "ppp0")
    assert v6.apply.argv[1] == nft_script(("ipv4", 1360), ("ipv6", 1340))


def test_legacy_rules_each_way_each_family_deleted_by_their_spec() -> None:
    """xtables: one rule out, one in, per family; only larger MSS values are lowered."""
    steps = mss.legacy_steps(cfg_with(mtu=1400, mru=1400, ipv6=True), "ppp0")
    assert [s.apply.shown for s in steps] == [
        legacy("-A", "-o", 1360),
        legacy("-A", "-i", 1360),
        legacy("-A", "-o", 1340, "ip6tables-legacy"),
        legacy("-A", "-i", 1340, "ip6tables-legacy"),
    ]
    assert [s.undo.shown for s in steps if s.undo] == [
        s.apply.shown.replace(" -A ", " -D ") for s in steps
    ]
    assert [name for name, _ in mss.backends(cfg_with(), "ppp0")] == ["nft", "iptables-legacy"]


def test_entries_survive_the_state_file_and_know_already_gone() -> None:
    """Kind mss in the ledger; nft's and xtables' "not there" answers mean already gone."""
    cfg = cfg_with()
    nft = mss.entry(mss.nft_steps(cfg, "ppp0")[0])
    xt = mss.entry(mss.legacy_steps(cfg, "ppp0")[0])
    assert Ledger.from_json(Ledger([nft, xt]).to_json()).entries == [nft, xt]
    assert (nft.side, nft.kind) == ("local", "mss")
    missing = "Error: Could not process rule: No such file or directory\ndelete table inet x"
    assert already_gone(nft, CommandFailed(NFT_DELETE, 1, missing))
    assert not already_gone(nft, CommandFailed(NFT_DELETE, 1, "Error: Permission denied"))
    bad = "iptables: Bad rule (does a matching rule exist in that chain?)."
    assert already_gone(xt, CommandFailed("iptables-legacy", 1, bad))
    assert not already_gone(xt, CommandFailed("iptables-legacy", 1, "iptables: Resource busy"))


def test_reason_is_nfts_error_line_made_safe() -> None:
    """nft's `Error:` line, not its caret line; remote-free but still escaped and bounded."""
    assert mss.reason(REFUSED) == "Error: Could not process rule: Operation not supported"
    assert mss.reason("nft: not found") == "nft: not found"
    assert mss.reason("a\x1b[31mb") == "a\\x1b[31mb"
    assert len(mss.reason("x" * 500)) == 160


def test_check_line() -> None:
    """What `pppssh check` says for each case."""
    tools = {"nft": "/usr/sbin/nft", "iptables-legacy": None, "ip6tables-legacy": None}
    none = dict.fromkeys(tools)
    assert mss.judge(cfg_with(mtu=1500, mru=1500), none) == (True, "off (mtu 1500 >= 1500)", "")
    assert mss.judge(cfg_with(mss_clamp=False), none) == (True, "off (mss_clamp = no)", "")
    assert mss.judge(cfg_with(), tools) == (
        True, "to 1360 (ipv4) through the link, by /usr/sbin/nft", "",
    )  # fmt: skip
    legacy_only = {**none, "iptables-legacy": "/usr/sbin/xtables-legacy-multi"}
    ok, detail, _ = mss.judge(cfg_with(), legacy_only)
    assert ok and detail.endswith("xtables-legacy-multi (no nft)")
    assert not mss.judge(cfg_with(ipv6=True), legacy_only)[0]  # no ip6tables-legacy
    ok, detail, fix = mss.judge(cfg_with(mss_clamp=True), none)
    assert not ok and detail.endswith("the start fails") and "mss_clamp = no" in fix
    assert mss.judge(cfg_with(), none)[1].endswith("the link runs unclamped")


# ---------------------------------------------------------------------------- the lifecycle


def local_calls(world: World) -> list[str]:
    """The local commands, in order."""
    return [shown for where, shown in world.calls if where == "local"]


def test_up_clamps_before_the_routes_and_down_undoes_it_before_the_pppd_stops() -> None:
    """nft after the link is up and before any route; on the way down its table goes after
    the routes, before the local pppd stops; the ledger ends empty."""
    h = harness(mss_clamp=None)
    assert h.run() == 0
    calls = [c for c in h.world.calls if c[0] in ("local", "pppd", "remote")]
    nft = ("local", shell_join(("nft", nft_script(("ipv4", 1360)))))
    at = calls.index(nft)
    assert calls[at - 1] == ("remote", "interface") and calls[at + 1] == ("local", ROUTE_HERE)
    down = calls.index(("local", NFT_DELETE))
    assert calls.index(("local", ROUTE_DEL)) < down < calls.index(("pppd", "stop"))
    assert "TCP MSS clamped to 1360 (ipv4) through ppp0 (nft)" in h.lines()
    added, removed = history(h)
    assert [e.kind for e in added if e.kind == "mss"] == ["mss"] and removed == added[::-1]
    assert h.ledger() == []


def test_a_kernel_without_nft_inet_falls_back_to_xtables() -> None:
    """nft refused by the kernel: said in one line, then xtables' rules, each undone."""
    h = harness(mss_clamp=None)
    h.world.refuse_local["nft 'add table"] = REFUSED
    assert h.run() == 0
    calls = local_calls(h.world)
    rules = [legacy("-A", "-o", 1360), legacy("-A", "-i", 1360)]
    at = calls.index(rules[0])
    assert calls[at - 1].startswith("nft 'add table") and calls[at + 1] == rules[1]
    assert NFT_DELETE not in calls  # nothing of nft was applied, nothing to undo
    deleted = [c for c in calls if " -D FORWARD " in c]
    assert deleted == [r.replace(" -A ", " -D ") for r in reversed(rules)]
    lines = h.lines()
    assert "note: nft: Error: Could not process rule: Operation not supported" in lines
    assert "TCP MSS clamped to 1360 (ipv4) through ppp0 (iptables-legacy)" in lines
    assert h.ledger() == []


def test_a_half_applied_backend_is_taken_back_before_the_next() -> None:
    """The second xtables rule refused: the first is deleted at once, the ledger keeps none."""
    h = harness(mss_clamp=None)
    h.world.refuse_local["nft 'add table"] = REFUSED
    h.world.refuse_local["-A FORWARD -i ppp0"] = "iptables: No chain/target/match by that name."
    assert h.run() == 0
    calls = local_calls(h.world)
    first = legacy("-A", "-o", 1360)
    assert calls[calls.index(first) + 2] == first.replace(" -A ", " -D ")
    assert not any(e.kind == "mss" for e in history(h)[0][-1:])
    warning = next(e.text for e in h.recorder.events if isinstance(e, ErrorRecorded))
    assert warning == (
        "MSS clamping for mtu 1400 failed (nft: Error: Could not process rule: Operation not "
        "supported; iptables-legacy: iptables: No chain/target/match by that name.): install "
        "nftables (a kernel with nf_tables' inet family) or set mss_clamp = no in [ppp]"
    )
    assert f"warning: {warning}" in h.lines()  # auto: the link stays up, unclamped
    assert h.ledger() == []


def test_yes_fails_the_start_in_one_line_and_leaves_nothing() -> None:
    """mss_clamp = yes and neither tool: the start fails with the one line, all undone."""
    h = harness(mss_clamp=True)
    h.world.refuse_local["nft "] = "nft: not found"
    h.world.refuse_local["iptables-legacy "] = "iptables-legacy: not found"
    assert failed_start(h) == (
        "pppssh: site-b: MSS clamping for mtu 1400 failed (nft: nft: not found; "
        "iptables-legacy: iptables-legacy: not found): install nftables (a kernel with "
        "nf_tables' inet family) or set mss_clamp = no in [ppp]"
    )
    assert not any(c[0] == "local" and c[1].startswith("ip route add") for c in h.world.calls)
    assert h.ledger() == []


def test_no_clamp_runs_no_tool() -> None:
    """mss_clamp = no (and auto at mtu 1500): neither nft nor xtables runs."""
    for changes in ({"mss_clamp": False}, {"mss_clamp": None, "mtu": 1500, "mru": 1500}):
        h = harness(**changes)
        assert h.run() == 0
        assert not any("nft" in c or "iptables" in c for c in local_calls(h.world))


def test_reload_keeps_the_clamp_and_the_teardown_still_undoes_it() -> None:
    """A reload by diff (networks) runs no clamp command and keeps its entry; a reload that
    changes mss_clamp is refused (a new link); the stop deletes the table once."""
    h = harness(mss_clamp=None)
    new = dataclasses.replace(site(networks=NEW_NETWORKS), mss_clamp=None)
    seen = reload_when_up(h, lambda: new)
    assert h.run() == 0
    assert seen["applied"] is True and seen["reload_calls"]
    assert not any("nft" in shown for _, shown in seen["reload_calls"])
    clamp = [e for e in seen["before"] if e["kind"] == "mss"]
    assert len(clamp) == 1 and [e for e in seen["after"] if e["kind"] == "mss"] == clamp
    assert local_calls(h.world).count(NFT_DELETE) == 1 and h.ledger() == []

    h = harness(mss_clamp=None)
    seen = reload_when_up(h, lambda: dataclasses.replace(h.cfg, mss_clamp=False))
    assert h.run() == 0
    assert seen["applied"] is False and seen["reload_calls"] == []
    assert any("[ppp] mss_clamp" in line for line in h.lines()), h.lines()


def test_recovery_after_sigkill_deletes_the_table() -> None:
    """The ledger a SIGKILLed pppssh left: its table is deleted with the rest, newest first;
    a table already gone is said so and is no error."""
    cfg = cfg_with()
    nft = mss.entry(mss.nft_steps(cfg, "ppp0")[0])
    route = Entry("local", "route", "10.2.0.0/24 via 10.99.0.2 dev ppp0",
                  tuple(ROUTE_HERE.split()), tuple(ROUTE_DEL.split()), ("ESRCH",))  # fmt: skip
    stale = State(site="site-b", config=str(cfg.path), pid=777, state="up")
    stale.set_ledger(Ledger([nft, route]).to_json())
    for gone in (False, True):
        world = World()
        if gone:
            world.refuse_local[NFT_DELETE] = (
                "Error: Could not process rule: No such file or directory"
            )
        ports, store, _ = fake_ports(world, cfg)
        store.write(stale)
        recorder = Recorder()
        assert asyncio.run(recover("site-b", ports.runner, ports.store, recorder)) is True
        assert world.calls == [("local", ROUTE_DEL), ("local", NFT_DELETE)]
        assert store.read("site-b") is None
        assert ("already gone with its interface" in recorder.lines()) is gone
