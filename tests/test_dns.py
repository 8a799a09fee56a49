"""DNS per link ([dns]): parsing, the exact commands of both methods, the detection, the feed
of resolvconf's stdin, and the lifecycle's DNS step against fake ports (up, down, crash
recovery, reload by diff). The lab proves the resolvconf path end to end
(tests/lab/test_dns.py); systemd-resolved's path is covered here by its exact argv."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pppssh import check, dns
from pppssh.config import ConfigError, SiteConfig, parse
from pppssh.dns import FEED, FEED_EXCLUSIVE, Resolver
from pppssh.ledger import Entry
from pppssh.lifecycle import recover
from pppssh.plan import local_pppd_argv, remote_pppd_options, shell_join
from pppssh.system import State
from tests.fakes import World, fake_ports, site, site_text
from tests.test_lifecycle import ROUTE_HERE, ROUTE_THERE, Recorder, harness, reload_when_up

CTL = "/usr/bin/resolvectl"
RC = "/usr/sbin/resolvconf"
RESOLVED = Resolver("resolved", CTL)
RESOLVCONF = Resolver("resolvconf", RC)


def dns_site(lines: str = "servers = 10.2.0.53\ndomains = corp.example ~lab.example\n",
             **sections: str) -> SiteConfig:  # fmt: skip
    """fakes.site() with a [dns] section."""
    return site(extra="[dns]\n" + lines, **sections)


# The line of the [dns] section's first key in fakes.site()'s file (after its other sections).
DNS_LINE = site_text("[dns]\n").splitlines().index("[dns]") + 2


def refusal(text: str) -> str:
    """The one-line error of a site file with this [dns] section."""
    with pytest.raises(ConfigError) as info:
        dns_site(text)
    return str(info.value)


# ---------------------------------------------------------------------------- parsing


def test_servers_and_domains_parse() -> None:
    cfg = dns_site("servers = 10.2.0.53, 10.99.0.2\ndomains = Corp.Example. ~lab.example ~.\n")
    assert [str(a) for a in cfg.dns_servers] == ["10.2.0.53", "10.99.0.2"]
    assert cfg.dns_domains == ("corp.example", "~lab.example", "~.")
    assert site().dns_servers == () and site().dns_domains == ()


@pytest.mark.parametrize(
    ("text", "after", "key", "says"),
    [
        ("servers = dns.example", 0, "servers", "'dns.example' is not an IP address"),
        ("servers = 10.2.0.53:53", 0, "servers", "is not an IP address"),
        ("servers = 127.0.0.53", 0, "servers", "cannot be a DNS server reached through"),
        ("servers = 0.0.0.0", 0, "servers", "cannot be a DNS server"),
        ("servers = 10.2.0.53 10.2.0.53", 0, "servers", "listed twice"),
        ("servers = 8.8.8.8", 0, "servers", "8.8.8.8 is not reached through the link"),
        ("servers = 2001:db8:b::53", 0, "servers", "is not reached through the link"),
        ("servers = 10.2.0.53\ndomains = a..b", 1, "domains", "'a..b' is not a DNS domain"),
        ("servers = 10.2.0.53\ndomains = -x.example", 1, "domains", "is not a DNS domain"),
        ("servers = 10.2.0.53\ndomains = ~", 1, "domains", "'~' is not a DNS domain"),
        ("servers = 10.2.0.53\ndomains = .", 1, "domains", "'.' is not a DNS domain"),
        ("servers = 10.2.0.53\ndomains = bücher.example", 1, "domains", "xn-- form"),
        ("servers = 10.2.0.53\ndomains = a.example A.example.", 1, "domains", "listed twice"),
        ("servers = 10.2.0.53\ndomains = $(reboot)", 1, "domains", "is not a DNS domain"),
        ("domains = corp.example", 0, "domains", "needs servers in [dns]"),
    ],
)
def test_bad_values_name_file_line_and_key(text: str, after: int, key: str, says: str) -> None:
    """The line is the [dns] section's first (after = 0) or second (after = 1) line."""
    message = refusal(text + "\n")
    line = DNS_LINE + after
    assert message.startswith(f"/etc/pppssh/site-b.conf:{line}: {key}: "), message
    assert says in message


def test_server_reached_through_the_link() -> None:
    """The peer's own address, any IPv4 address with full_tunnel; IPv6 inside an IPv6
    remote network (ipv6 = yes, no helper)."""
    assert dns_site("servers = 10.99.0.2\n").dns_servers
    full = "full_tunnel = yes\nlocal = 10.1.0.0/24\n"
    assert dns_site("servers = 9.9.9.9\ndomains = ~.\n", networks=full).dns_domains == ("~.",)
    text = (
        "[remote]\nhost = gw.example.net\nuser = vpn\nidentity = id\nknown_hosts = kh\n"
        "helper = no\n[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
        "ipv6 = yes\n[networks]\nremote = 10.2.0.0/24 2001:db8:b::/64\n"
        "[dns]\nservers = 2001:db8:b::53\n"
    )
    six = parse(text, Path("/etc/pppssh/site-b.conf"))
    assert str(six.dns_servers[0]) == "2001:db8:b::53"


def test_pppd_never_takes_dns_from_the_peer() -> None:
    """usepeerdns stays off on both ends, with [dns] or without: only the site file sets DNS."""
    cfg = dns_site()
    assert "usepeerdns" not in local_pppd_argv(cfg, 9)
    assert "usepeerdns" not in remote_pppd_options(cfg)


# ---------------------------------------------------------------------------- commands


def test_resolved_commands_exactly() -> None:
    cfg = dns_site("servers = 10.2.0.53 10.99.0.2\ndomains = corp.example ~lab.example\n")
    found = dns.entries(cfg, RESOLVED, "ppp3")
    assert [(e.apply, e.undo) for e in found] == [
        ((CTL, "domain", "ppp3", "corp.example", "~lab.example"), (CTL, "domain", "ppp3", "")),
        ((CTL, "default-route", "ppp3", "no"), None),
        ((CTL, "dns", "ppp3", "10.2.0.53", "10.99.0.2"), (CTL, "revert", "ppp3")),
    ]
    assert all(e.side == "local" and e.kind == "dns" and e.gone == ("NODEV",) for e in found)
    only = dns.entries(dns_site("servers = 10.2.0.53\n"), RESOLVED, "ppp0")
    assert [e.apply for e in only] == [
        (CTL, "default-route", "ppp0", "yes"),
        (CTL, "dns", "ppp0", "10.2.0.53"),
    ]
    every = dns.entries(dns_site("servers = 10.2.0.53\ndomains = ~. x.example\n"), RESOLVED, "p")
    assert every[1].apply == (CTL, "default-route", "p", "yes")
    assert dns.entries(site(), RESOLVED, "ppp0") == []
    assert dns.refusal(cfg, RESOLVED) is None


def test_resolvconf_record_exactly() -> None:
    cfg = dns_site("servers = 10.2.0.53 10.99.0.2\ndomains = corp.example b.example\n")
    (entry,) = dns.entries(cfg, RESOLVCONF, "ppp1")
    name = "ppp1.pppssh-site-b"
    assert entry.apply == (
        "/bin/sh", "-c", FEED, "pppssh-dns", RC, name,
        "nameserver 10.2.0.53", "nameserver 10.99.0.2", "search corp.example b.example",
    )  # fmt: skip
    assert entry.undo == (RC, "-d", name) and entry.gone == ("NORECORD",)
    (full,) = dns.entries(dns_site("servers = 10.2.0.53\ndomains = ~.\n"), RESOLVCONF, "ppp1")
    assert full.apply == ("/bin/sh", "-c", FEED_EXCLUSIVE, "pppssh-dns", RC, name,
                          "nameserver 10.2.0.53")  # fmt: skip


def test_resolvconf_refuses_routing_only_domains() -> None:
    cfg = dns_site()
    error = dns.refusal(cfg, RESOLVCONF)
    assert error is not None
    assert str(error).startswith(
        f"/etc/pppssh/site-b.conf:{DNS_LINE + 1}: domains: ~lab.example: a routing"
    )
    assert (
        dns.refusal(dns_site("servers = 10.2.0.53\ndomains = ~. x.example\n"), RESOLVCONF) is None
    )


def test_the_feed_gives_resolvconf_its_record_on_stdin(tmp_path: Path) -> None:
    """The fixed script pipes its arguments, one line each, to the program; shell syntax in
    an argument stays text (the values are validated anyway)."""
    fake = tmp_path / "resolvconf"
    fake.write_text('#!/bin/sh\nprintf "%s|" "$@" >"$0.args"\ncat >"$0.stdin"\n')
    fake.chmod(0o755)
    for script, flags in ((FEED, "-a|ppp0.x|"), (FEED_EXCLUSIVE, "-x|-a|ppp0.x|")):
        argv = ["/bin/sh", "-c", script, "pppssh-dns", str(fake), "ppp0.x",
                "nameserver 10.2.0.53", "search $(touch pwned) `id`"]  # fmt: skip
        assert subprocess.run(argv, check=False).returncode == 0
        assert (tmp_path / "resolvconf.args").read_text() == flags
        assert (tmp_path / "resolvconf.stdin").read_text() == (
            "nameserver 10.2.0.53\nsearch $(touch pwned) `id`\n"
        )
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_replace_applies_over_and_undoes_only_what_no_entry_sets() -> None:
    old = dns.entries(dns_site(), RESOLVED, "ppp0")
    servers = dns.entries(dns_site("servers = 10.2.0.54\ndomains = corp.example ~lab.example\n"),
                          RESOLVED, "ppp0")  # fmt: skip
    assert dns.replace(old, servers) == ([servers[2]], [old[2]], [])
    no_domains = dns.entries(dns_site("servers = 10.2.0.53\n"), RESOLVED, "ppp0")
    assert dns.replace(old, no_domains) == ([no_domains[0]], [old[1]], [old[0]])
    assert dns.replace(old, []) == ([], [], [old[2], old[1], old[0]])
    assert dns.replace(old, old) == ([], [], [])
    record = dns.entries(dns_site("servers = 10.2.0.53\n"), RESOLVCONF, "ppp0")
    exclusive = dns.entries(dns_site("servers = 10.2.0.53\ndomains = ~.\n"), RESOLVCONF, "ppp0")
    assert dns.replace(record, exclusive) == (exclusive, record, [])


# ---------------------------------------------------------------------------- detection


def program(path: Path) -> str:
    """A root-owned executable at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolved when its runtime directory is there and resolvectl is trusted; else a trusted
    resolvconf; else None with the reason. A resolvectl others may write is refused."""
    run = tmp_path / "run" / "systemd" / "resolve"
    ctl = program(tmp_path / "usr/bin/resolvectl")
    rc = program(tmp_path / "usr/sbin/resolvconf")
    monkeypatch.setattr(dns, "RESOLVECTL", (ctl,))
    monkeypatch.setattr(dns, "RESOLVCONF", (rc,))
    monkeypatch.setattr(dns, "SHELL", program(tmp_path / "bin/sh"))
    assert dns.detect(run)[0] == Resolver("resolvconf", rc, str(tmp_path / "bin/sh"))
    run.mkdir(parents=True)
    assert dns.detect(run) == (Resolver("resolved", ctl), "")
    Path(ctl).chmod(0o757)
    resolver, _ = dns.detect(run)
    assert resolver is not None and resolver.method == "resolvconf"
    Path(rc).unlink()
    resolver, why = dns.detect(run)
    assert resolver is None and "writable by" in why, why
    cfg = dns_site()
    assert str(dns.missing(cfg, why)).startswith(
        f"/etc/pppssh/site-b.conf:{DNS_LINE}: servers: no way to set DNS on this gateway: "
    )


def test_check_says_which_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "detect", lambda: (RESOLVED, ""))
    (line,) = check.dns_check(dns_site())
    assert line.ok and line.line().startswith("\u2713 DNS: systemd-resolved (")
    monkeypatch.setattr(dns, "detect", lambda: (RESOLVCONF, ""))
    (line,) = check.dns_check(dns_site())
    assert not line.ok and ": domains: ~lab.example: a routing-only domain" in line.line()
    monkeypatch.setattr(dns, "detect", lambda: (None, "nothing here"))
    (line,) = check.dns_check(dns_site())
    assert not line.ok and "servers: no way to set DNS on this gateway: nothing here" in line.line()
    assert check.dns_check(site()) == []


# ---------------------------------------------------------------------------- lifecycle


def use(monkeypatch: pytest.MonkeyPatch, resolver: Resolver | None) -> None:
    """Make dns.detect find resolver (None: nothing)."""
    monkeypatch.setattr(dns, "detect", lambda: (resolver, "" if resolver else "none here"))


SET_DNS = [
    ("local", f"{CTL} domain ppp0 corp.example '~lab.example'"),
    ("local", f"{CTL} default-route ppp0 no"),
    ("local", f"{CTL} dns ppp0 10.2.0.53"),
]
UNDO_DNS = [
    ("local", f"{CTL} revert ppp0"),
    ("local", f"{CTL} domain ppp0 ''"),
]


def test_up_sets_dns_after_routes_and_down_undoes_it_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(monkeypatch, RESOLVED)
    h = harness(dns_site(hooks="up = /bin/up\n"))
    assert h.run() == 0
    calls = h.world.calls
    at = calls.index(SET_DNS[0])
    assert calls[at - 2 : at + 4] == [
        ("local", ROUTE_HERE), ("remote", ROUTE_THERE), *SET_DNS, ("hook", "/bin/up"),
    ]  # fmt: skip
    down = calls.index(UNDO_DNS[0])
    assert calls[down : down + 3] == [*UNDO_DNS, ("remote", ROUTE_THERE.replace("add", "del"))]
    assert any(line.startswith("DNS through systemd-resolved") for line in h.lines())
    assert h.ledger() == []


def test_no_method_fails_the_start_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(monkeypatch, None)
    h = harness(dns_site())
    assert h.run() == 1
    assert h.world.calls == [] and h.world.connects == 0
    said = f"site-b.conf:{DNS_LINE}: servers: no way to set DNS"
    assert any(said in line for line in h.lines())


def test_a_refused_dns_command_undoes_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, RESOLVED)
    h = harness(dns_site())
    h.world.refuse_local["dns ppp0 10.2.0.53"] = "Failed to set DNS configuration: Access denied"
    assert h.run() == 1
    assert SET_DNS[1] in h.world.calls and UNDO_DNS[1] in h.world.calls
    assert UNDO_DNS[0] not in h.world.calls, "the servers were never set"
    assert any("DNS: " in line and "Access denied" in line for line in h.lines())


def test_dns_already_gone_with_the_interface_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, RESOLVED)
    h = harness(dns_site())
    h.world.refuse_local["revert ppp0"] = 'Failed to resolve interface "ppp0": No such device'
    assert h.run() == 0
    assert "DNS servers of ppp0 already gone" in h.lines()


def crashed_state(monkeypatch: pytest.MonkeyPatch, resolver: Resolver) -> State:
    """The state file a SIGKILLed pppssh leaves while up with [dns]."""
    use(monkeypatch, resolver)
    cfg = dns_site("servers = 10.2.0.53\ndomains = corp.example\n")
    h = harness(cfg)
    dead: dict[str, State] = {}

    def sigkill_then_stop() -> None:
        """Keep the state file as SIGKILL leaves it, then end this run."""
        state = h.store.read("site-b")
        assert state is not None
        dead["state"] = state
        h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = sigkill_then_stop
    assert h.run() == 0
    return dead["state"]


def recovered(stale: State, world: World) -> list[tuple[str, str]]:
    """What recovery runs for stale."""
    ports, store, _ = fake_ports(world, site())
    store.write(stale)
    assert asyncio.run(recover("site-b", ports.runner, ports.store, Recorder())) is True
    assert store.read("site-b") is None
    return world.calls


def test_recovery_removes_the_resolvconf_record(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = crashed_state(monkeypatch, RESOLVCONF)
    world = World()
    world.leftover_pids = [4242]
    calls = recovered(stale, world)
    assert calls[:3] == [
        ("local", "kill 4242"),
        ("local", f"{RC} -d ppp0.pppssh-site-b"),
        ("local", "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0"),
    ]


def test_recovery_leaves_resolved_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolved forgot the link's DNS when its pppN went with the pppd; the name may be
    another site's pppN by now, so no resolvectl command runs."""
    stale = crashed_state(monkeypatch, RESOLVED)
    assert any(e["kind"] == "dns" for e in stale.ledger)
    calls = recovered(stale, World())
    assert not any("resolvectl" in what for _, what in calls)
    assert ("local", "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0") in calls


def reload_dns(monkeypatch: pytest.MonkeyPatch, resolver: Resolver, old: str,
               new: str) -> dict[str, Any]:  # fmt: skip
    """Up with [dns] old, reload to new, stop; what was seen."""
    use(monkeypatch, resolver)
    h = harness(dns_site(old))
    seen = reload_when_up(h, lambda: dns_site(new))
    assert h.run() == 0
    assert seen["applied"] is True and h.ledger() == []
    seen["h"] = h
    return seen


def test_reload_sets_changed_servers_over_the_old_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = reload_dns(monkeypatch, RESOLVED, "servers = 10.2.0.53\ndomains = corp.example\n",
                      "servers = 10.2.0.54 10.99.0.2\ndomains = corp.example\n")  # fmt: skip
    assert seen["reload_calls"] == [("local", f"{CTL} dns ppp0 10.2.0.54 10.99.0.2")]
    dns_after = [e["apply"] for e in seen["after"] if e["kind"] == "dns"]
    assert dns_after == [[CTL, "domain", "ppp0", "corp.example"],
                         [CTL, "default-route", "ppp0", "no"],
                         [CTL, "dns", "ppp0", "10.2.0.54", "10.99.0.2"]]  # fmt: skip


def test_reload_removes_dns_by_its_undo(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = reload_dns(monkeypatch, RESOLVED, "servers = 10.2.0.53\ndomains = corp.example\n", "")
    assert seen["reload_calls"] == [
        ("local", f"{CTL} revert ppp0"),
        ("local", f"{CTL} domain ppp0 ''"),
    ]
    assert not any(e["kind"] == "dns" for e in seen["after"])


def test_reload_adds_dns_to_a_link_without(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = reload_dns(monkeypatch, RESOLVCONF, "", "servers = 10.2.0.53\ndomains = ~.\n")
    expected = shell_join(("/bin/sh", "-c", FEED_EXCLUSIVE, "pppssh-dns", RC,
                           "ppp0.pppssh-site-b", "nameserver 10.2.0.53"))  # fmt: skip
    assert seen["reload_calls"] == [("local", expected)]
    assert ("local", f"{RC} -d ppp0.pppssh-site-b") in seen["h"].world.calls


def test_reload_of_a_record_replaces_it_without_deleting(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolvconf -a over the same record name replaces it: the old entry's -d must not run
    (it would delete the new record)."""
    seen = reload_dns(monkeypatch, RESOLVCONF, "servers = 10.2.0.53\n",
                      "servers = 10.2.0.53\ndomains = ~.\n")  # fmt: skip
    assert len(seen["reload_calls"]) == 1 and "-x -a" in seen["reload_calls"][0][1]


def test_reload_refused_dns_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A routing-only domain when resolvconf is the method: refused before anything runs."""
    use(monkeypatch, RESOLVCONF)
    h = harness(dns_site("servers = 10.2.0.53\n"))
    seen = reload_when_up(h, lambda: dns_site("servers = 10.2.0.53\ndomains = ~x.example\n"))
    assert h.run() == 0
    assert seen["applied"] is False and seen["reload_calls"] == []
    assert seen["after"] == seen["before"]
    assert any("domains: ~x.example: a routing-only domain" in line for line in h.lines())


def test_reload_failing_dns_command_puts_the_old_back(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, RESOLVED)
    h = harness(dns_site("servers = 10.2.0.53\n"))
    new = dns_site("servers = 10.2.0.54\ndomains = x.example\n", networks=(
        "local = 10.1.0.0/24\nremote = 10.2.0.0/24 10.5.0.0/24\n"))  # fmt: skip
    h.world.refuse_local["dns ppp0 10.2.0.54"] = "Access denied"
    seen = reload_when_up(h, lambda: new)
    assert h.run() == 0
    assert seen["applied"] is False
    assert seen["reload_calls"] == [
        ("local", "ip route add 10.5.0.0/24 via 10.99.0.2 dev ppp0"),
        ("local", f"{CTL} domain ppp0 x.example"),
        ("local", f"{CTL} default-route ppp0 no"),
        ("local", f"{CTL} dns ppp0 10.2.0.54"),
        ("local", f"{CTL} default-route ppp0 yes"),
        ("local", f"{CTL} domain ppp0 ''"),
        ("local", "ip route del 10.5.0.0/24 via 10.99.0.2 dev ppp0"),
    ]
    assert sorted(map(str, seen["after"])) == sorted(map(str, seen["before"]))


def test_entry_round_trips_through_the_state_file() -> None:
    for entry in dns.entries(dns_site(), RESOLVED, "ppp0") + dns.entries(
        dns_site("servers = 10.2.0.53\n"), RESOLVCONF, "ppp0"
    ):
        assert Entry.from_json(entry.to_json()) == entry
