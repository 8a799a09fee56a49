"""`pppssh routes --print`: the routes workstations on each LAN need (pure)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from .commands import lan_gateway, routes_here, routes_there
from .config import Address, Network, SiteConfig
from .plan import full_tunnel_routes, local_routes, remote_routes

__all__ = ["FORMATS", "Lan", "Route", "gateway_commands", "plan_lans", "render", "render_json"]


@dataclass(frozen=True)
class Route:
    """A destination a workstation sends to its own gateway."""

    destination: Network
    via: Address
    what: str  # e.g. "network behind the remote gateway"


@dataclass(frozen=True)
class Skipped:
    """A destination that needs no route on this LAN, and why."""

    destination: Network
    reason: str


@dataclass
class Lan:
    """The workstations on one network of one side."""

    side: str  # "local" or "remote"
    network: Network
    gateway: Address
    routes: list[Route] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def plan_lans(cfg: SiteConfig) -> list[Lan]:
    """For every LAN on both sides: what to route through its gateway, and what not."""
    # a LAN's workstations need what its own gateway routes into the link: the same networks
    # as that gateway's routes, and the far PPP address they go via
    sides = (
        ("local", cfg.local_networks, cfg.local_lan_gateways, routes_here(cfg),
         cfg.remote_address, cfg.proxyarp.local, "the remote gateway"),
        ("remote", cfg.remote_networks, cfg.remote_lan_gateways, routes_there(cfg),
         cfg.local_address, cfg.proxyarp.remote, "the local gateway"),
    )  # fmt: skip
    lans: list[Lan] = []
    for side, own, gateways, facts, far_ppp, proxyarp, far_name in sides:
        far = [fact.network for fact in facts]
        for network in own:
            lan = Lan(side, network, lan_gateway(network, gateways))
            for net in far:
                lan.routes.append(Route(net, lan.gateway, f"network behind {far_name}"))
            host = IPv4Network(f"{far_ppp}/32")
            covering = next((n for n in far if far_ppp in n), None)
            if covering is not None:
                lan.skipped.append(
                    Skipped(host, f"{far_name}'s PPP address is covered by the route to {covering}")
                )
            elif far_ppp in network and proxyarp:
                lan.skipped.append(
                    Skipped(
                        host,
                        f"{far_name}'s PPP address: no route needed, "
                        f"the gateway answers ARP for it (proxyarp={cfg.proxyarp.value})",
                    )
                )
            else:
                lan.routes.append(Route(host, lan.gateway, f"{far_name}'s PPP address"))
            lans.append(lan)
    return lans


# ---------------------------------------------------------------------------- dialects


def _ip(route: Route) -> str:
    """iproute2."""
    dest = route.destination
    target = str(dest.network_address) if dest.prefixlen == 32 else str(dest)
    return f"ip route add {target} via {route.via}"


def _route(route: Route) -> str:
    """net-tools route(8)."""
    dest = route.destination
    if dest.prefixlen == 32:
        return f"route add -host {dest.network_address} gw {route.via}"
    return f"route add -net {dest.network_address} netmask {dest.netmask} gw {route.via}"


def _windows(route: Route) -> str:
    """Windows route.exe, persistent."""
    dest = route.destination
    return f"route -p ADD {dest.network_address} MASK {dest.netmask} {route.via}"


def _bsd(route: Route) -> str:
    """macOS and the BSDs."""
    dest = route.destination
    if dest.prefixlen == 32:
        return f"route -n add -host {dest.network_address} {route.via}"
    return f"route -n add -net {dest} {route.via}"


FORMATS: dict[str, tuple[Callable[[Route], str], str]] = {
    "ip": (_ip, "#"),
    "route": (_route, "#"),
    "windows": (_windows, "REM"),
    "bsd": (_bsd, "#"),
}


def render(cfg: SiteConfig, fmt: str = "ip") -> str:
    """The commands for every LAN, grouped and commented, in one dialect."""
    line, rem = FORMATS[fmt]
    out = [f"{rem} pppssh site {cfg.name}: routes for workstations ({fmt})"]
    lans = plan_lans(cfg)
    if not lans:
        out.append(f"{rem} no networks are configured in [networks]: nothing to route")
    for lan in lans:
        out.append("")
        out.append(
            f"{rem} on workstations in {lan.network} ({lan.side} side), "
            f"via their gateway {lan.gateway}:"
        )
        if not lan.routes:
            out.append(f"{rem}   nothing to add")
        for route in lan.routes:
            out.append(line(route))
        for skip in lan.skipped:
            out.append(f"{rem} {skip.destination.network_address}: {skip.reason}")
    for side, own, far in (("local", cfg.local_networks6, cfg.remote_networks6),
                           ("remote", cfg.remote_networks6, cfg.local_networks6)):  # fmt: skip
        for net in own:
            out.append("")
            out.append(
                f"{rem} on workstations in {net} ({side} side): {', '.join(map(str, far))} "
                "via their gateway's IPv6 address on that LAN (or make it their default router)"
            )
    out.append("")
    out.append(f"{rem} Not needed on a workstation whose default gateway is already that gateway.")
    return "\n".join(out) + "\n"


def render_json(cfg: SiteConfig) -> str:
    """The same plan for machines."""
    lans = [
        {
            "side": lan.side,
            "network": str(lan.network),
            "gateway": str(lan.gateway),
            "routes": [
                {"destination": str(r.destination), "via": str(r.via), "what": r.what}
                for r in lan.routes
            ],
            "not_needed": [
                {"destination": str(s.destination), "reason": s.reason} for s in lan.skipped
            ],
        }
        for lan in plan_lans(cfg)
    ]
    return json.dumps({"site": cfg.name, "lans": lans}, indent=2) + "\n"


def gateway_commands(
    cfg: SiteConfig, local_if: str | None = None, remote_if: str | None = None
) -> str:
    """The route commands `start` runs on the two gateways (interfaces: pppN if not known)."""
    local = [r.add.shown for r in local_routes(cfg, local_if or "pppN")]
    if cfg.full_tunnel:
        server = cfg.first_hop[0]  # the proxy or first jump host, when there is one
        local += [
            f"ip route add {server}/32 ...  # the SSH server, on the path "
            f"`ip -4 route get {server}` shows before",
            *(r.add.shown for r in full_tunnel_routes(cfg, local_if or "pppN")),
        ]
    remote = [r.add.shown for r in remote_routes(cfg, remote_if or "pppN")]
    out = [f"# pppssh site {cfg.name}: routes `pppssh start` adds on the gateways"]
    if not (local_if and remote_if):
        out.append("# pppN: the interface pppd picks when the link comes up")
    out += ["", "# on this gateway:", *(local or ["#   none (no [networks] remote)"])]
    out += [
        "",
        f"# on the remote gateway {cfg.host}, as {cfg.user}"
        + (" (requests to pppssh-helper, which runs them with sudo):" if cfg.helper else ":"),
        *(remote or ["#   none (no [networks] local)"]),
    ]
    return "\n".join(out) + "\n"
