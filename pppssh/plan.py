"""The plan: every command pppssh runs, built from a SiteConfig, with its undo (pure)."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from . import commands
from .commands import RouteFact
from .config import Compression, Network, Network6, SiteConfig

__all__ = [
    "Command",
    "RouteChange",
    "full_tunnel_routes",
    "local_pppd_argv",
    "local_routes",
    "qdisc_argv",
    "remote_congestion_command",
    "remote_interface_command",
    "remote_leftover_check",
    "remote_leftover_kill",
    "remote_peers_name",
    "remote_pidfile",
    "remote_pppd_argv",
    "remote_pppd_options",
    "remote_routes",
    "server_route",
    "shell_join",
]


def shell_join(argv: Sequence[str]) -> str:
    """Quote argv for the remote login shell: every word goes through shlex.quote."""
    return " ".join(shlex.quote(word) for word in argv)


@dataclass(frozen=True)
class Command:
    """One program invocation; `shown` is what gets echoed (`[#] ip route add ...`)."""

    argv: tuple[str, ...]

    @property
    def shown(self) -> str:
        """The command as a user would type it."""
        return shell_join(self.argv)


@dataclass(frozen=True)
class RouteChange:
    """A route to add on one side, and the command that removes it again."""

    network: Network | Network6
    add: Command
    delete: Command


def _compression_options(cfg: SiteConfig) -> list[str]:
    """CCP: off (the default), or exactly one method with the largest window."""
    if cfg.compression is Compression.DEFLATE:
        return ["deflate", "15", "nobsdcomp", "nopredictor1"]
    if cfg.compression is Compression.BSDCOMP:
        return ["bsdcomp", "15", "nodeflate", "nopredictor1"]
    return ["noccp"]


def _common_pppd_options(
    cfg: SiteConfig, linkname: str, ours: str, peer: str, proxyarp: bool, echo_adaptive: bool
) -> list[str]:
    """Options both pppds get; the device is the pty on stdin. echo_adaptive: the pppd has the
    fix of ppp-project #323 (commands.echo_adaptive_safe)."""
    options = [
        "nodetach",
        "noauth",
        "local",  # a pty has no modem control lines
        "nocrtscts",
        "linkname", linkname,
        "ipparam", cfg.linkname,
        f"{ours}:{peer}",
        "mtu", str(cfg.mtu),
        "mru", str(cfg.mru),
        "nodefaultroute",
        *_compression_options(cfg),
    ]  # fmt: skip
    if cfg.lcp_echo_interval:
        options += [
            "lcp-echo-interval", str(cfg.lcp_echo_interval),
            "lcp-echo-failure", str(cfg.lcp_echo_failure),
        ]  # fmt: skip
        if echo_adaptive:  # no echoes while traffic flows, and traffic resets the misses
            options.append("lcp-echo-adaptive")
        # Without it (pppd before 2.5.0) an echo goes every interval, busy or not, and each
        # reply resets the count: a full link is not dead while its echoes come back within
        # lcp_echo_interval x lcp_echo_failure seconds, queues and all.
    else:
        options += ["lcp-echo-interval", "0"]
    options.append("proxyarp" if proxyarp else "noproxyarp")
    return options


LOCAL_IPV6_ID, REMOTE_IPV6_ID = "::1", "::2"  # link-local fe80::1 here, fe80::2 there


def _ipv6_options(cfg: SiteConfig, ours: str, peer: str) -> list[str]:
    """IPV6CP with fixed interface identifiers, so both link-local addresses are known; or
    none at all: Debian's pppd negotiates IPv6 by default, which would give the peer an
    unfiltered IPv6 path to this gateway on a link meant to carry IPv4 only."""
    return ["+ipv6", "ipv6", f"{ours},{peer}"] if cfg.ipv6 else ["noipv6"]


def _frame_options(cfg: SiteConfig) -> list[str]:
    """No VJ header compression (both ways: the local pppd refuses it) when the pump may drop
    or reorder frames (a compressed header is a delta from the frame before it) or rewrite
    ACKs' windows (it must read their headers)."""
    dropping = cfg.delay_target or cfg.delay_target_up or cfg.tcp_notsent_lowat
    return ["novj"] if dropping or cfg.window_target or cfg.window_target_up else []


def local_pppd_argv(
    cfg: SiteConfig, logfd: int, pppd_version: tuple[int, int, int] | None = None
) -> list[str]:
    """argv of the local pppd: it runs on our pty and logs to logfd; pppd_version is what
    `local_pppd --version` said (None: unknown, taken to be one with ppp-project #323)."""
    return [
        cfg.local_pppd,
        *_common_pppd_options(
            cfg,
            cfg.linkname,
            str(cfg.local_address),
            str(cfg.remote_address),
            cfg.proxyarp.local,
            commands.echo_adaptive_safe(pppd_version),
        ),
        *_ipv6_options(cfg, LOCAL_IPV6_ID, REMOTE_IPV6_ID),
        *_frame_options(cfg),
        "logfd", str(logfd),
        *cfg.local_options,
    ]  # fmt: skip


def remote_pppd_options(cfg: SiteConfig, echo_adaptive: bool = False) -> list[str]:
    """Options of the remote pppd, which remote-setup fixes in its peers file there;
    echo_adaptive when that pppd has the fix of ppp-project #323 (the set-up script asks it
    for its version on the remote gateway)."""
    return [
        *_common_pppd_options(
            cfg,
            cfg.remote_linkname,
            str(cfg.remote_address),
            str(cfg.local_address),
            cfg.proxyarp.remote,
            echo_adaptive,
        ),
        *_ipv6_options(cfg, REMOTE_IPV6_ID, LOCAL_IPV6_ID),
        *cfg.remote_options,
    ]


def remote_peers_name(cfg: SiteConfig) -> str:
    """`pppssh-<file stem>`: the name of the remote pppd's options file /etc/ppp/peers/NAME and
    of every other file `pppssh remote-setup` writes for the site (no '.', one-to-one)."""
    return commands.peers_name(cfg)


def remote_pppd_argv(cfg: SiteConfig) -> list[str]:
    """What the remote gateway runs on the raw pty: the helper's `pppd`, or `sudo pppd call
    pppssh-SITE` (its options fixed in the peers file there, so sudo can pin the argv)."""
    return list(commands.start_pppd(cfg).sent(cfg))


def remote_interface_command(cfg: SiteConfig) -> Command:
    """Ask the remote gateway for its addresses, or the helper for the link's interface."""
    return Command(commands.interface(cfg).sent(cfg))


def remote_congestion_command(cfg: SiteConfig) -> Command | None:
    """Set the way down's congestion control (the remote sshd's socket of this connection):
    the helper's `congestion` request, or sudo pppssh-congestion NAME; None: left alone."""
    op = commands.congestion(cfg)
    return None if op is None else Command(op.sent(cfg))


def remote_pidfile(cfg: SiteConfig) -> str:
    """Where the remote pppd (linkname pppssh-SITE-ADDRESS) writes its pid."""
    return commands.remote_pidfile(cfg)


def remote_leftover_check(cfg: SiteConfig) -> Command:
    """Unprivileged: exit 0 if a pppd of this site still runs on the remote gateway."""
    return Command(("pgrep", "-x", "-F", remote_pidfile(cfg), "pppd"))


def remote_leftover_kill(cfg: SiteConfig, signal: str = "TERM") -> Command:
    """Stop that pppd: the helper's `cleanup` request, or sudo pkill (pid file and name)."""
    return Command(commands.stop_pppd(cfg, signal).sent(cfg))


def _route(prefix: Sequence[str], fact: RouteFact, dev: str) -> RouteChange:
    """`ip route add NET via PEER dev IF` and its matching delete."""
    tail = (str(fact.network), "via", str(fact.via), "dev", dev)
    return RouteChange(
        network=fact.network,
        add=Command((*prefix, "route", "add", *tail)),
        delete=Command((*prefix, "route", "del", *tail)),
    )


def _route6(prefix: Sequence[str], network: Network6, dev: str) -> RouteChange:
    """`ip route add NET dev IF` on this gateway (ip knows the family from NET): the link is
    point-to-point, the device is the way."""
    tail = (str(network), "dev", dev)
    return RouteChange(
        network=network,
        add=Command((*prefix, "route", "add", *tail)),
        delete=Command((*prefix, "route", "del", *tail)),
    )


def qdisc_argv(ifname: str, qdisc: str) -> tuple[str, ...]:
    """tc's argv that gives ifname the root qdisc (one of config.QDISCS, with its defaults)."""
    return ("tc", "qdisc", "replace", "dev", ifname, "root", qdisc)


def local_routes(cfg: SiteConfig, ifname: str, ip: str = "ip") -> list[RouteChange]:
    """Routes on this gateway: every remote network via the remote PPP address (IPv6 ones
    through the interface)."""
    routes = [_route((ip,), fact, ifname) for fact in commands.routes_here(cfg)]
    return routes + [_route6((ip,), net, ifname) for net in cfg.remote_networks6]


def remote_routes(cfg: SiteConfig, ifname: str) -> list[RouteChange]:
    """Routes on the remote gateway: every local IPv4 network via our PPP address.

    Through the helper they are its requests `route add|del NETWORK via PEER`; otherwise
    `sudo ip route add|del NETWORK via PEER`, the exact argv of a sudo rule (the kernel finds
    the interface from the peer's address, so ifname is not part of it). IPv6 networks are
    routed there by the ipv6-up.d script `pppssh remote-setup` installs: their interface is
    known only once the link is up, so no exact sudo rule could name it.
    """
    del ifname  # kept for the callers: the remote routes no longer name the interface
    return [
        RouteChange(
            network=fact.network,
            add=Command(commands.route(cfg, "add", fact).sent(cfg)),
            delete=Command(commands.route(cfg, "del", fact).sent(cfg)),
        )
        for fact in commands.routes_there(cfg)
    ]


HALVES = (ipaddress.IPv4Network("0.0.0.0/1"), ipaddress.IPv4Network("128.0.0.0/1"))


def full_tunnel_routes(cfg: SiteConfig, ifname: str, ip: str = "ip") -> list[RouteChange]:
    """With full_tunnel: both halves of the IPv4 space via the link (they beat a default
    route without replacing it, as wg-quick and OpenVPN do)."""
    if not cfg.full_tunnel:
        return []
    return [_route((ip,), RouteFact(net, cfg.remote_address), ifname) for net in HALVES]


_ROUTE_GET = re.compile(r"^(?:\S+)\s+(?:via\s+(\S+)\s+)?dev\s+(\S+)")


def server_route(server: str, route_get: str, ip: str = "ip") -> RouteChange:
    """The host route that keeps the SSH server on the path `ip -4 route get SERVER` showed
    before the full tunnel took the rest: `SERVER/32 via GW dev IF onlink` or `dev IF`."""
    first = route_get.strip().splitlines()[0] if route_get.strip() else ""
    m = _ROUTE_GET.match(first)
    if not m or first.startswith(("local ", "unreachable ", "blackhole ", "prohibit ")):
        raise ValueError(f"cannot pin the route to the SSH server {server}: {first!r}")
    via, dev = m.groups()
    # onlink: the gateway is known to be reachable on dev, as the route it came from says
    tail = ("via", via, "dev", dev, "onlink") if via else ("dev", dev)
    host = f"{server}/32"
    return RouteChange(
        network=ipaddress.IPv4Network(host),
        add=Command((ip, "route", "add", host, *tail)),
        delete=Command((ip, "route", "del", host, *tail)),
    )
