"""pppssh.plan: golden argv of both pppds and of every route change, with their undo."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from pppssh.config import ConfigError, SiteConfig, parse
from pppssh.plan import (
    Command,
    full_tunnel_routes,
    local_pppd_argv,
    local_routes,
    remote_pppd_argv,
    remote_pppd_options,
    remote_routes,
    server_route,
    shell_join,
)


def site(
    ppp: str = "", networks: str = "local = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
) -> SiteConfig:
    """A typical site file, with extra [ppp] lines and its own [networks]."""
    text = (
        "[site]\nname = site-b\n"
        "[remote]\nhost = gw.example.net\nuser = pppssh\n"
        "identity = id_ed25519\nknown_hosts = known_hosts\nhelper = no\n"
        "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
        f"{ppp}"
        f"[networks]\n{networks}"
    )
    return parse(text, Path("/etc/pppssh/site-b.conf"))


COMMON_HEAD = [
    "nodetach", "noauth", "local", "nocrtscts",
    "linkname", "pppssh-site-b", "ipparam", "pppssh-site-b",
]  # fmt: skip


# ---------------------------------------------------------------------------- pppd argv


def test_local_pppd_typical() -> None:
    assert local_pppd_argv(site(), logfd=7, pppd_version=(2, 5, 0)) == [
        "/usr/sbin/pppd",
        "nodetach", "noauth", "local", "nocrtscts",
        "linkname", "pppssh-site-b",
        "ipparam", "pppssh-site-b",
        "10.99.0.1:10.99.0.2",
        "mtu", "1400", "mru", "1400",
        "nodefaultroute", "noccp",
        "lcp-echo-interval", "10", "lcp-echo-failure", "3", "lcp-echo-adaptive",
        "noproxyarp",
        "noipv6",  # Debian's pppd would negotiate IPv6 otherwise
        "novj",  # the pump may drop frames (delay_target)
        "logfd", "7",
    ]  # fmt: skip


def test_remote_pppd_typical() -> None:
    assert remote_pppd_options(site(), echo_adaptive=True) == [
        "nodetach", "noauth", "local", "nocrtscts",
        "linkname", "pppssh-site-b-10.99.0.1",  # unique on the remote gateway
        "ipparam", "pppssh-site-b",
        "10.99.0.2:10.99.0.1",
        "mtu", "1400", "mru", "1400",
        "nodefaultroute", "noccp",
        "lcp-echo-interval", "10", "lcp-echo-failure", "3", "lcp-echo-adaptive",
        "noproxyarp", "noipv6",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "adaptive"),
    [((2, 4, 9), False), ((2, 4, 7), False), (None, False), ((2, 5, 0), True), ((2, 5, 2), True),
     ((3, 0, 0), True)],
)  # fmt: skip
def test_lcp_echo_adaptive_only_for_a_pppd_with_the_fix(
    version: tuple[int, int, int] | None, adaptive: bool
) -> None:
    # ppp-project #323: before 2.5.0 traffic never resets the count of unanswered echoes
    local = local_pppd_argv(site(), logfd=7, pppd_version=version)
    assert ("lcp-echo-adaptive" in local) is adaptive
    # the interval and failure count stay: a dead link is noticed as soon as before
    i = local.index("lcp-echo-interval")
    assert local[i : i + 4] == ["lcp-echo-interval", "10", "lcp-echo-failure", "3"]
    assert ("lcp-echo-adaptive" in remote_pppd_options(site(), adaptive)) is adaptive
    off = site(ppp="lcp_echo_interval = 0\n")
    assert "lcp-echo-adaptive" not in local_pppd_argv(off, logfd=7, pppd_version=version)
    assert local_pppd_argv(site(), logfd=7) == local_pppd_argv(site(), 7, (2, 4, 9))


def test_remote_pppd_command_string() -> None:
    # the options live in the peers file there: sudo can pin the whole argv
    assert shell_join(remote_pppd_argv(site())) == "sudo -n /usr/sbin/pppd call pppssh-site-b"
    dotted = parse(
        "[site]\nname = a.b_c\n[remote]\nhost = h\nuser = u\nidentity = i\nknown_hosts = k\n"
        "helper = no\n[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n",
        Path("/etc/pppssh/x.conf"),
    )
    assert remote_pppd_argv(dotted)[-1] == "pppssh-a_2eb_5fc"
    assert remote_pppd_argv(replace(site(), helper=True)) == ["pppd"]


def test_no_logfd_or_local_options_on_the_remote() -> None:
    cfg = site(ppp="local_options = debug\nremote_options = novj\n")
    remote = remote_pppd_options(cfg)
    assert "logfd" not in remote
    assert remote[-1] == "novj" and "debug" not in remote


def test_proxyarp_both_and_custom_sizes() -> None:
    # proxyarp=both needs each PPP address inside a LAN of the other side.
    cfg = parse(
        "[site]\nname = site-b\n"
        "[remote]\nhost = gw.example.net\nport = 2222\nuser = pppssh\n"
        "identity = id_ed25519\nknown_hosts = known_hosts\nhelper = no\n"
        "sudo = /usr/bin/sudo -n\npppd = /usr/local/sbin/pppd\n"
        "[ppp]\nlocal_address = 192.168.50.250\nremote_address = 10.1.2.250\n"
        "mtu = 1280\nmru = 1500\nproxyarp = both\n"
        "[networks]\nlocal = 10.1.2.0/24\nremote = 192.168.50.0/24\n",
        Path("/etc/pppssh/site-b.conf"),
    )
    assert local_pppd_argv(cfg, logfd=7) == [
        "/usr/sbin/pppd", *COMMON_HEAD,
        "192.168.50.250:10.1.2.250",
        "mtu", "1280", "mru", "1500",
        "nodefaultroute", "noccp",
        "lcp-echo-interval", "10", "lcp-echo-failure", "3",
        "proxyarp", "noipv6", "novj",
        "logfd", "7",
    ]  # fmt: skip
    assert remote_pppd_argv(cfg) == ["/usr/bin/sudo", "-n", "/usr/local/sbin/pppd", "call",
                                     "pppssh-site-b"]  # fmt: skip
    assert remote_pppd_options(cfg) == [
        "nodetach", "noauth", "local", "nocrtscts",
        "linkname", "pppssh-site-b-192.168.50.250", "ipparam", "pppssh-site-b",
        "10.1.2.250:192.168.50.250",
        "mtu", "1280", "mru", "1500",
        "nodefaultroute", "noccp",
        "lcp-echo-interval", "10", "lcp-echo-failure", "3",
        "proxyarp", "noipv6",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("proxyarp", "networks", "local_has", "remote_has"),
    [("no", "local = 10.1.0.0/24\nremote = 10.2.0.0/24\n", "noproxyarp", "noproxyarp"),
     ("local", "local = 10.99.0.2/32\nremote = 10.2.0.0/24\n", "proxyarp", "noproxyarp"),
     ("remote", "local = 10.1.0.0/24\nremote = 10.99.0.1/32\n", "noproxyarp", "proxyarp"),
     ("both", "local = 10.99.0.2/32\nremote = 10.99.0.1/32\n", "proxyarp", "proxyarp")],
)  # fmt: skip
def test_proxyarp_goes_to_the_right_pppd(
    proxyarp: str, networks: str, local_has: str, remote_has: str
) -> None:
    # with proxyarp on a side, the peer's PPP address sits inside that side's LAN
    cfg = site(ppp=f"proxyarp = {proxyarp}\n", networks=networks)
    local, remote = local_pppd_argv(cfg, 7), remote_pppd_options(cfg)
    assert [w for w in local if w.endswith("proxyarp")] == [local_has]
    assert [w for w in remote if w.endswith("proxyarp")] == [remote_has]


def test_lcp_echo_off() -> None:
    cfg = site(ppp="lcp_echo_interval = 0\nlcp_echo_failure = 9\n")
    local = local_pppd_argv(cfg, logfd=3)
    assert local[local.index("noccp") :] == [
        "noccp", "lcp-echo-interval", "0", "noproxyarp", "noipv6", "novj", "logfd", "3",
    ]  # fmt: skip
    assert "lcp-echo-failure" not in local
    remote = remote_pppd_options(cfg)
    assert remote[remote.index("noccp") :] == [
        "noccp", "lcp-echo-interval", "0", "noproxyarp", "noipv6",
    ]  # fmt: skip


def test_extra_options_come_last_in_order() -> None:
    cfg = site(ppp="local_options = debug kdebug 1\nremote_options = novj nopcomp receive-all\n")
    assert local_pppd_argv(cfg, logfd=9)[-5:] == ["logfd", "9", "debug", "kdebug", "1"]
    remote = remote_pppd_options(cfg)
    assert remote[-4:] == ["noipv6", "novj", "nopcomp", "receive-all"]
    assert shell_join(remote).endswith(" noipv6 novj nopcomp receive-all")


def test_pppd_options_appear_once() -> None:
    """Options pppssh manages are never duplicated (a second value would win in pppd)."""
    for argv in (local_pppd_argv(site(), 7), remote_pppd_options(site())):
        words = [w for w in argv if not w[0].isdigit() and "/" not in w and w != "pppssh-site-b"]
        assert len(words) == len(set(words)), argv


# ---------------------------------------------------------------------------- shell_join


def test_shell_join_quotes_only_what_needs_it() -> None:
    argv = ["sudo", "-n", "a b", "it's", "", "$(id)", "x;y", "10.0.0.1:10.0.0.2", "ms-dns=1"]
    joined = shell_join(argv)
    assert joined == ("sudo -n 'a b' 'it'\"'\"'s' '' '$(id)' 'x;y' 10.0.0.1:10.0.0.2 ms-dns=1")
    assert shlex.split(joined) == argv


def test_command_shown() -> None:
    assert Command(("ip", "route", "add", "10.2.0.0/24")).shown == "ip route add 10.2.0.0/24"
    assert Command(("echo", "a b")).shown == "echo 'a b'"


# ---------------------------------------------------------------------------- routes

SEVERAL = "local = 10.1.0.0/16, 10.1.5.0/24 172.16.0.0/12\nremote = 10.2.0.0/16,10.2.7.128/25\n"


def test_local_routes_several_networks() -> None:
    routes = local_routes(site(networks=SEVERAL), "ppp3")
    assert [r.add.shown for r in routes] == [
        "ip route add 10.2.7.128/25 via 10.99.0.2 dev ppp3",
        "ip route add 10.2.0.0/16 via 10.99.0.2 dev ppp3",
    ]
    assert [r.delete.shown for r in routes] == [
        "ip route del 10.2.7.128/25 via 10.99.0.2 dev ppp3",
        "ip route del 10.2.0.0/16 via 10.99.0.2 dev ppp3",
    ]
    assert [str(r.network) for r in routes] == ["10.2.7.128/25", "10.2.0.0/16"]
    assert routes[0].add.argv == (
        "ip", "route", "add", "10.2.7.128/25", "via", "10.99.0.2", "dev", "ppp3",
    )  # fmt: skip


def test_local_routes_with_ip_path() -> None:
    [route] = local_routes(site(), "ppp0", ip="/usr/sbin/ip")
    assert route.add.argv == (
        "/usr/sbin/ip", "route", "add", "10.2.0.0/24", "via", "10.99.0.2", "dev", "ppp0",
    )  # fmt: skip


def test_remote_routes_several_networks() -> None:
    routes = remote_routes(site(networks=SEVERAL), "ppp0")
    # exact argv a sudo rule can pin: no interface name, which is known only when up
    assert [r.add.shown for r in routes] == [
        "sudo -n /usr/sbin/ip route add 10.1.5.0/24 via 10.99.0.1",
        "sudo -n /usr/sbin/ip route add 10.1.0.0/16 via 10.99.0.1",
        "sudo -n /usr/sbin/ip route add 172.16.0.0/12 via 10.99.0.1",
    ]
    assert [r.delete.shown for r in routes] == [
        "sudo -n /usr/sbin/ip route del 10.1.5.0/24 via 10.99.0.1",
        "sudo -n /usr/sbin/ip route del 10.1.0.0/16 via 10.99.0.1",
        "sudo -n /usr/sbin/ip route del 172.16.0.0/12 via 10.99.0.1",
    ]
    helper = replace(site(networks=SEVERAL), helper=True)
    assert next(r.add.shown for r in remote_routes(helper, "ppp0")) == (
        "route add 10.1.5.0/24 via 10.99.0.1"
    )


def test_remote_routes_use_configured_sudo_and_ip() -> None:
    text_cfg = parse(
        "[site]\nname = site-b\n"
        "[remote]\nhost = gw.example.net\nuser = pppssh\n"
        "identity = id_ed25519\nknown_hosts = known_hosts\nhelper = no\n"
        "sudo = /usr/bin/doas\nip = /sbin/ip\n"
        "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
        "[networks]\nlocal = 10.1.0.0/24\n",
        Path("/etc/pppssh/site-b.conf"),
    )
    [route] = remote_routes(text_cfg, "ppp1")
    assert route.add.argv == (
        "/usr/bin/doas", "/sbin/ip", "route", "add", "10.1.0.0/24", "via", "10.99.0.1",
    )  # fmt: skip
    assert local_routes(text_cfg, "ppp0") == []


def test_no_networks_no_routes() -> None:
    cfg = site(networks="")
    assert local_routes(cfg, "ppp0") == [] and remote_routes(cfg, "ppp0") == []


@pytest.mark.parametrize("side", ["local", "remote"])
def test_each_delete_is_the_exact_inverse_of_its_add(side: str) -> None:
    cfg = site(networks=SEVERAL)
    routes = local_routes(cfg, "ppp0") if side == "local" else remote_routes(cfg, "ppp0")
    assert routes
    for route in routes:
        add, delete = list(route.add.argv), list(route.delete.argv)
        assert add.count("add") == 1 and delete.count("del") == 1
        at = add.index("add")
        assert delete.index("del") == at
        assert add[at - 1] == "route" == delete[at - 1]
        assert [*delete[:at], "add", *delete[at + 1 :]] == add
        assert add[at + 1] == str(route.network)
    # every network once, no two routes the same
    assert len({r.network for r in routes}) == len(routes)


@pytest.mark.parametrize("compression, expected", [
    ("none", ["noccp"]),
    ("deflate", ["deflate", "15", "nobsdcomp", "nopredictor1"]),
    ("BSDcomp", ["bsdcomp", "15", "nodeflate", "nopredictor1"]),
])  # fmt: skip
def test_compression_reaches_both_pppds(compression: str, expected: list[str]) -> None:
    cfg = site(ppp=f"compression = {compression}\n")
    for argv in (local_pppd_argv(cfg, logfd=3), remote_pppd_options(cfg)):
        at = argv.index("nodefaultroute") + 1
        assert argv[at : at + len(expected)] == expected
        others = {"noccp", "deflate", "bsdcomp"} - {expected[0]}
        assert not others & set(argv)


@pytest.mark.parametrize("option", ["noccp", "deflate", "nobsdcomp"])
def test_compression_options_are_managed_not_passed(option: str) -> None:
    with pytest.raises(
        ConfigError, match=f"local_options: pppd option '{option}' is not allowed here"
    ):
        site(ppp=f"local_options = {option}\n")


def test_full_tunnel_routes_both_halves_via_the_peer() -> None:
    assert full_tunnel_routes(site(), "ppp0") == []
    cfg = site(networks="local = 10.1.0.0/24\nremote = 10.2.0.0/24\nfull_tunnel = yes\n")
    assert [(r.add.shown, r.delete.shown) for r in full_tunnel_routes(cfg, "ppp3")] == [
        (
            "ip route add 0.0.0.0/1 via 10.99.0.2 dev ppp3",
            "ip route del 0.0.0.0/1 via 10.99.0.2 dev ppp3",
        ),
        (
            "ip route add 128.0.0.0/1 via 10.99.0.2 dev ppp3",
            "ip route del 128.0.0.0/1 via 10.99.0.2 dev ppp3",
        ),
    ]


@pytest.mark.parametrize("route_get, add", [
    ("203.0.113.9 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \n    cache \n",
     "ip route add 203.0.113.9/32 via 192.0.2.1 dev eth0 onlink"),
    ("198.51.100.2 dev wan0 src 198.51.100.1 uid 0 \n    cache \n",
     "ip route add 198.51.100.2/32 dev wan0"),
])  # fmt: skip
def test_server_route_keeps_the_path_it_had(route_get: str, add: str) -> None:
    server = add.split()[3].removesuffix("/32")
    route = server_route(server, route_get)
    assert route.add.shown == add
    assert route.delete.shown == add.replace(" add ", " del ")


@pytest.mark.parametrize("route_get", [
    "", "local 127.0.0.1 dev lo table local src 127.0.0.1 uid 0", "unreachable 10.9.9.9",
])  # fmt: skip
def test_server_route_refuses_what_it_cannot_pin(route_get: str) -> None:
    with pytest.raises(ValueError, match="cannot pin the route to the SSH server"):
        server_route("10.9.9.9", route_get)


def test_ipv6_options_and_routes_both_sides() -> None:
    cfg = site(
        ppp="ipv6 = yes\n",
        networks="local = 10.1.0.0/24, 2001:db8:a::/64\nremote = 2001:db8:b::/48, 10.2.0.0/24\n",
    )
    local, remote = local_pppd_argv(cfg, logfd=4), remote_pppd_options(cfg)
    assert local[local.index("+ipv6") :][:3] == ["+ipv6", "ipv6", "::1,::2"]
    assert remote[remote.index("+ipv6") :][:3] == ["+ipv6", "ipv6", "::2,::1"]
    assert [r.add.shown for r in local_routes(cfg, "ppp0")] == [
        "ip route add 10.2.0.0/24 via 10.99.0.2 dev ppp0",
        "ip route add 2001:db8:b::/48 dev ppp0",
    ]
    # the remote IPv6 routes come from the ipv6-up.d script remote-setup writes
    assert [r.delete.shown for r in remote_routes(cfg, "ppp5")] == [
        "sudo -n /usr/sbin/ip route del 10.1.0.0/24 via 10.99.0.1",
    ]
    plain = site()
    assert "+ipv6" not in local_pppd_argv(plain, logfd=4) + remote_pppd_options(plain)


def test_ipv6_not_with_the_helper() -> None:
    with pytest.raises(ConfigError, match="ipv6: not available with helper = yes"):
        parse(
            "[remote]\nhost = h\nuser = u\nidentity = i\nknown_hosts = k\nhelper = yes\n"
            "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\nipv6 = yes\n",
            Path("/etc/pppssh/x.conf"),
        )
