"""MSS clamping on this gateway: TCP through the link learns its MTU from the handshake (pure).

When the link's MTU is below the LANs' (1500), a workstation that sends full-size segments
relies on path MTU discovery: the gateway answers with ICMP "fragmentation needed", and where
a firewall drops that ICMP the connection hangs (a PMTU black hole). Clamping the maximum
segment size that TCP's SYN and SYN/ACK announce, as they pass through the link, makes both
ends send segments that fit from the start.

Both directions are clamped on this gateway alone, for packets it forwards out of the link
(oifname) and into it (iifname): a connection between the two sites has its SYN pass one way
and its SYN/ACK the other, so each end learns the small size whoever opened it. The remote
gateway needs no rule, and its account no new privilege. The size is explicit (the link's MTU
minus 40 for IPv4, 60 for IPv6), since `rt mtu` sees only the route out, which for a SYN/ACK
coming in from the link is the LAN's 1500.

The rules live in a table of pppssh's own, `inet pppssh-pppN`, created in one nft
transaction (a table the same name left by a crash is replaced) and deleted with it. A
kernel without nf_tables' inet family (some small or old kernels) can still clamp through
the legacy xtables TCPMSS target: `iptables-legacy`/`ip6tables-legacy`, one rule each way,
each deleted by its exact spec. Each step is a ledger entry (kind "mss"): stop, recovery
after SIGKILL and a reconnect undo it; a reload leaves it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import SiteConfig
from .ledger import Entry
from .plan import Command
from .sanitize import printable

__all__ = [
    "LAN_MTU",
    "TOOLS",
    "Step",
    "backends",
    "clamp_sizes",
    "entry",
    "failure",
    "judge",
    "legacy_steps",
    "link_mtu",
    "nft_steps",
    "reason",
    "table_name",
    "wanted",
]

LAN_MTU = 1500  # Ethernet's, the LANs' on both sides
OVERHEAD = {"ipv4": 40, "ipv6": 60}  # IP and TCP headers without options
NFT = "nft"  # run by name through the fixed root PATH, as `ip` is (system.plain_env)
LEGACY = {"ipv4": "iptables-legacy", "ipv6": "ip6tables-legacy"}
TOOLS = (NFT, *LEGACY.values())
# What the undo answers when the change is not there any more: nft deleting a missing table
# (ENOENT), xtables deleting a missing rule.
NFT_GONE = ("ENOENT",)
LEGACY_GONE = ("XT_NORULE",)


@dataclass(frozen=True)
class Step:
    """One change of a clamping backend: what it is, its apply and undo commands."""

    why: str
    apply: Command
    undo: Command | None
    gone: tuple[str, ...]


def link_mtu(cfg: SiteConfig) -> int:
    """The MTU the link's interfaces get: pppd takes the smaller of its mtu and the peer's
    MRU, and both pppds get the same mtu and mru."""
    return min(cfg.mtu, cfg.mru)


def wanted(cfg: SiteConfig) -> bool:
    """Whether to clamp: mss_clamp yes or no, or (auto) when the link's MTU is below 1500."""
    if cfg.mss_clamp is not None:
        return cfg.mss_clamp
    return link_mtu(cfg) < LAN_MTU


def clamp_sizes(cfg: SiteConfig) -> list[tuple[str, int]]:
    """(family, MSS) pairs: IPv4 always, IPv6 when the link carries it."""
    families = ("ipv4", "ipv6") if cfg.ipv6 else ("ipv4",)
    return [(family, link_mtu(cfg) - OVERHEAD[family]) for family in families]


def table_name(ifname: str) -> str:
    """pppssh's table (and the word that marks its rules) for the link on ifname."""
    return f"pppssh-{ifname}"


def nft_steps(cfg: SiteConfig, ifname: str) -> list[Step]:
    """One nft transaction: replace the table with one forward chain that clamps SYNs
    through ifname both ways; its undo deletes the table."""
    table = f"inet {table_name(ifname)}"
    rules = [
        f'{way} "{ifname}" meta nfproto {family} tcp flags & (syn | rst) == syn '
        f"tcp option maxseg size > {size} tcp option maxseg size set {size}"
        for family, size in clamp_sizes(cfg)
        for way in ("oifname", "iifname")
    ]
    chain = (
        "chain forward { type filter hook forward priority mangle; policy accept; "
        + "; ".join(rules)
        + "; }"
    )
    # nft wants a separator after a chain's block inside the table's, even on one line
    script = f"add table {table}; delete table {table}; add table {table} {{ {chain}; }}"
    undo = Command((NFT, "delete", "table", *table.split()))
    return [Step(f"clamp TCP MSS through {ifname}", Command((NFT, script)), undo, NFT_GONE)]


def legacy_steps(cfg: SiteConfig, ifname: str) -> list[Step]:
    """The same clamp with xtables' TCPMSS target: one rule each way, each family."""
    steps: list[Step] = []
    for family, size in clamp_sizes(cfg):
        for flag in ("-o", "-i"):
            spec = (
                "FORWARD", flag, ifname, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
                "-m", "tcpmss", "--mss", f"{size + 1}:65535",
                "-j", "TCPMSS", "--set-mss", str(size),
            )  # fmt: skip
            head = (LEGACY[family], "-w", "-t", "mangle")
            steps.append(Step(
                f"clamp TCP MSS through {ifname} ({family}, {'out' if flag == '-o' else 'in'})",
                Command((*head, "-A", *spec)), Command((*head, "-D", *spec)), LEGACY_GONE,
            ))  # fmt: skip
    return steps


def backends(cfg: SiteConfig, ifname: str) -> list[tuple[str, list[Step]]]:
    """The ways to clamp, in the order to try them: nftables, then legacy xtables."""
    return [("nft", nft_steps(cfg, ifname)), ("iptables-legacy", legacy_steps(cfg, ifname))]


def entry(step: Step) -> Entry:
    """The ledger entry for one applied step."""
    undo = step.undo.argv if step.undo is not None else None
    return Entry("local", "mss", step.why, step.apply.argv, undo, step.gone)


def reason(stderr: str) -> str:
    """The line of a tool's complaint that says why (nft's `Error: ...`, else the last)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("Error:")), lines[-1] if lines else "")
    return printable(said, 160)


def failure(cfg: SiteConfig, why: Sequence[tuple[str, str]]) -> str:
    """One line: clamping was asked for and no backend could do it, each one's reason."""
    tried = "; ".join(f"{tool}: {text}" for tool, text in why)
    return (
        f"MSS clamping for mtu {link_mtu(cfg)} failed ({tried}): install nftables (a kernel "
        "with nf_tables' inet family) or set mss_clamp = no in [ppp]"
    )


def judge(cfg: SiteConfig, found: dict[str, str | None]) -> tuple[bool, str, str]:
    """`pppssh check`'s line: ok, what it will do, the fix; found maps each tool (nft,
    iptables-legacy, ip6tables-legacy) to its trusted path on this gateway, or None."""
    if not wanted(cfg):
        why = "mss_clamp = no" if cfg.mss_clamp is False else f"mtu {link_mtu(cfg)} >= {LAN_MTU}"
        return True, f"off ({why})", ""
    sizes = ", ".join(f"{size} ({family})" for family, size in clamp_sizes(cfg))
    nft = found.get(NFT)
    if nft:
        return True, f"to {sizes} through the link, by {nft}", ""
    legacy = [found.get(LEGACY[family]) for family, _ in clamp_sizes(cfg)]
    if all(legacy):
        return True, f"to {sizes} through the link, by {', '.join(map(str, legacy))} (no nft)", ""
    then = "the start fails" if cfg.mss_clamp else "the link runs unclamped"
    return (
        False,
        f"needed for mtu {link_mtu(cfg)}, but no nft (nor iptables-legacy) here: {then}",
        "apt-get install nftables, or set mss_clamp = no in [ppp]",
    )
