"""Anti-spoofing on a link's interface with the kernel's own means, as commands (pure).

What arrives from the link is accepted only from addresses the link leads back to, and is
forwarded only into the networks the far side may reach:

- strict reverse-path filtering on pppN (`net.ipv4.conf.pppN.rp_filter = 1`): a packet whose
  source the kernel would not route back out of pppN (the peer's PPP address, the far side's
  networks, with full_tunnel anything not routed elsewhere) is dropped, for this gateway
  itself and for forwarding alike. The kernel uses the larger of conf/all and conf/pppN, so
  `all.rp_filter = 2` (loose) weakens it: loose_warning() says so. IPv4 only; the setting
  goes with the interface.
- policy rules for what is forwarded: `ip rule add iif pppN to NET lookup main priority P`
  for each allowed network, then `ip rule add iif pppN priority P+1 prohibit`. Packets to
  this gateway's own addresses never get there: the local table's rule (priority 0) delivers
  them first. With IPv6 (no rp_filter there) the allow rules also name the sources:
  `ip -6 rule add iif pppN from SRC to NET lookup main priority P`.

Priorities: PRIORITY (5000) and PRIORITY + 1, shared by every pppssh link (the rules differ
in iif). They come before Tailscale's (5210-5270), wg-quick's (32764-32765) and the main and
default tables' (32766, 32767), and after a VRF's l3mdev rule (1000).

The same functions build the remote gateway's filter (its networks, its interface), so both
sides run the same commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import Network, Network6, SiteConfig
from .plan import Command

__all__ = [
    "PRIORITY",
    "FilterStep",
    "effective_rp_filter",
    "link_filter",
    "local_filter",
    "loose_warning",
    "remote_filter",
    "rp_filter_key",
    "teardown",
]

PRIORITY = 5000  # allow rules here; the prohibit rule one after
REMOTE_SYSCTL = "/usr/sbin/sysctl"  # procps on Debian 12 (/sbin is a link to it)
STRICT = 1
LOOSE = 2


@dataclass(frozen=True)
class FilterStep:
    """One filtering change: what it is for, the command that applies it, and its undo.

    undo is None for a setting that goes away with the interface (rp_filter).
    """

    why: str
    apply: Command
    undo: Command | None


def rp_filter_key(ifname: str) -> str:
    """The sysctl key of an interface's reverse-path filter."""
    return f"net.ipv4.conf.{ifname}.rp_filter"


def _rule(ip: str, family: str, ifname: str, selector: Sequence[str], priority: int,
          action: Sequence[str], why: str) -> FilterStep:  # fmt: skip
    """`ip -F rule add iif IF ... priority P ACTION` and the `del` with the same words."""
    tail = ("iif", ifname, *selector, "priority", str(priority), *action)
    return FilterStep(
        why=why,
        apply=Command((ip, family, "rule", "add", *tail)),
        undo=Command((ip, family, "rule", "del", *tail)),
    )


def link_filter(
    ifname: str,
    forward_to: Iterable[Network],
    *,
    ipv6: bool = False,
    sources6: Iterable[Network6] = (),
    forward_to6: Iterable[Network6] = (),
    priority: int = PRIORITY,
    ip: str = "ip",
    sysctl: str = "sysctl",
    forward_anywhere: bool = False,
) -> list[FilterStep]:
    """The filter of one link end, in the order to apply it (undo in reverse).

    forward_to: the networks behind this gateway that traffic from the link may be forwarded
    to; with ipv6, sources6 are the far side's IPv6 networks and forward_to6 this side's.
    forward_anywhere: no IPv4 forwarding rules at all (the far end's full tunnel: this
    gateway is its way to everywhere), only the reverse-path filter.
    """
    steps = [
        FilterStep(
            why="strict reverse-path filter: sources only from what is routed via the link",
            apply=Command((sysctl, "-q", "-w", f"{rp_filter_key(ifname)}={STRICT}")),
            undo=None,
        )
    ]
    if not forward_anywhere:
        for net in forward_to:
            steps.append(_rule(ip, "-4", ifname, ("to", str(net)), priority, ("lookup", "main"),
                               f"forward from the link to {net}"))  # fmt: skip
        steps.append(_rule(ip, "-4", ifname, (), priority + 1, ("prohibit",),
                           "forward nothing else from the link (IPv4)"))  # fmt: skip
    if ipv6:
        for dst in forward_to6:
            for src in sources6:
                steps.append(_rule(ip, "-6", ifname, ("from", str(src), "to", str(dst)),
                                   priority, ("lookup", "main"),
                                   f"forward from {src} on the link to {dst}"))  # fmt: skip
        steps.append(_rule(ip, "-6", ifname, (), priority + 1, ("prohibit",),
                           "forward nothing else from the link (IPv6)"))  # fmt: skip
    return steps


def local_filter(cfg: SiteConfig, ifname: str, priority: int = PRIORITY) -> list[FilterStep]:
    """This gateway's filter on its end of the site's link.

    Only the local networks are reached from the link, with or without full_tunnel: in a full
    tunnel replies come back from anywhere (rp_filter accepts them, as the halves of the
    address space are routed via the link) but they are for this gateway or its networks.
    """
    return link_filter(
        ifname,
        cfg.local_networks,
        ipv6=cfg.ipv6,
        sources6=cfg.remote_networks6,
        forward_to6=cfg.local_networks6,
        priority=priority,
    )


def remote_filter(cfg: SiteConfig, ifname: str, priority: int = PRIORITY) -> list[FilterStep]:
    """The remote gateway's filter on its end of the site's link (run there by pppd's ip-up).

    It forwards from the link only to the remote networks; with full_tunnel it is this
    gateway's way to everywhere, so only the reverse-path filter applies.
    """
    return link_filter(
        ifname,
        cfg.remote_networks,
        ipv6=cfg.ipv6,
        sources6=cfg.local_networks6,
        forward_to6=cfg.remote_networks6,
        priority=priority,
        ip=cfg.remote_ip,
        sysctl=REMOTE_SYSCTL,
        forward_anywhere=cfg.full_tunnel,
    )


def teardown(steps: Sequence[FilterStep]) -> list[Command]:
    """The undo commands of applied steps, last applied first."""
    return [step.undo for step in reversed(steps) if step.undo is not None]


def effective_rp_filter(all_value: int, if_value: int) -> int:
    """The mode the kernel applies on an interface: the larger of conf/all and conf/IF."""
    return max(all_value, if_value)


def loose_warning(all_value: int, ifname: str) -> str | None:
    """A warning when conf/all makes the strict filter on ifname loose, else None."""
    if effective_rp_filter(all_value, STRICT) == STRICT:
        return None
    return (
        f"warning: net.ipv4.conf.all.rp_filter = {all_value} (loose) overrides the strict "
        f"reverse-path filter on {ifname}: the peer can send from addresses this gateway "
        "routes elsewhere (its own LAN); set net.ipv4.conf.all.rp_filter to 0 or 1"
    )
