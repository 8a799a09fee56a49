"""The command model: every operation pppssh asks of the remote gateway, as data (pure).

Each operation is one `RemoteOp`: the words of its pppssh-helper request and the argv that
runs for it there (as root when it is privileged). Everything else is derived from it:

- `RemoteOp.sent`: what pppssh sends, the helper request or, without the helper,
  `sudo -n ARGV` (plan.py builds the lifecycle's commands from it);
- `root_ops` / `sudoers_rules`: the exact sudoers lines (remote-setup writes them, `check`
  asks `sudo -l` for each and names the missing ones);
- `helper_requests` / `policy_text`: the helper's allow-list for the site (`pppd`,
  `cleanup`, `interface`, `check`, `congestion` when the policy names one, and
  `route add|del NETWORK via PEER` for exactly the networks and the peer its policy lists);
- `helper_constants`: the paths the helper script runs and reads (remote-setup renders them);
- `routes_there` / `routes_here`: the network-via-address facts of the routes on the remote
  gateway and on this one, which plan.py turns into argv and workstations.py into the
  routes workstations need.

`lan_gateway` (defined in config.py, which checks site files with it) is the one answer to
"which address does a gateway have on its LAN".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Address, Network, SiteConfig, lan_gateway

__all__ = [
    "CONGESTION_PATH",
    "ECHO_ADAPTIVE_FIXED_IN",
    "HELPER_PATH",
    "OLD_POLICY_DIR",
    "PKILL",
    "POLICY_DIR",
    "RUN_DIR",
    "STOP_SIGNALS",
    "SUDO",
    "RemoteOp",
    "RouteFact",
    "check",
    "congestion",
    "echo_adaptive_safe",
    "echo_adaptive_shell",
    "helper_constants",
    "helper_requests",
    "interface",
    "lan_gateway",
    "peers_name",
    "pidfile",
    "policy_text",
    "pppd_version",
    "remote_pidfile",
    "root_ops",
    "route",
    "routes_here",
    "routes_there",
    "start_pppd",
    "stop_pppd",
    "sudoers_rules",
    "sudoers_word",
]

HELPER_PATH = "/usr/local/libexec/pppssh-helper"
# Sets the congestion control of the session's own sshd socket (the way down), run as root.
CONGESTION_PATH = "/usr/local/libexec/pppssh-congestion"
# The helper runs as the link account and must read its policy; /etc/pppssh may well be 0700
# (pppssh's own site files on a gateway that also runs pppssh), so the policies live apart.
POLICY_DIR = "/etc/pppssh-helper"
OLD_POLICY_DIR = "/etc/pppssh/helper"  # where policies were kept before; remote-setup moves them
SUDO = "/usr/bin/sudo"
PKILL = "/usr/bin/pkill"
RUN_DIR = "/run"  # pppd writes /run/ppp-LINKNAME.pid
STOP_SIGNALS = ("TERM", "KILL")  # a leftover pppd is asked first, then killed
# With `lcp-echo-adaptive`, pppd 2.4.x counts an unanswered echo until a reply comes, whatever
# traffic arrives meanwhile (LcpSendEchoRequest returns before resetting lcp_echos_pending:
# ppp-project/ppp issue #323), so misses spread over hours add up and a busy link is declared
# dead. Fixed by PR #376 (commit 844b69d: traffic resets the count), first released in 2.5.0;
# Debian 12 ships 2.4.9. Before that version pppssh sends echoes without it.
ECHO_ADAPTIVE_FIXED_IN = (2, 5, 0)
_PPPD_VERSION = re.compile(r"^pppd version (\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


@dataclass(frozen=True)
class RemoteOp:
    """One operation on the remote gateway: the helper request and what runs for it there."""

    request: tuple[str, ...]  # the words pppssh-helper accepts for it
    argv: tuple[str, ...]  # what runs on the remote gateway (through sudo when privileged)
    privileged: bool = True

    def sent(self, cfg: SiteConfig) -> tuple[str, ...]:
        """What pppssh sends for it: the helper request, or the argv (with cfg.sudo before it
        when it needs root)."""
        if cfg.helper:
            return self.request
        return (*cfg.sudo, *self.argv) if self.privileged else self.argv


@dataclass(frozen=True)
class RouteFact:
    """A route as a fact both sides and the workstations share: NETWORK via ADDRESS."""

    network: Network
    via: Address


def peers_name(cfg: SiteConfig) -> str:
    """`pppssh-<file stem>`: the name of the remote pppd's options file /etc/ppp/peers/NAME and
    of every other file `pppssh remote-setup` writes for the site (no '.', one-to-one)."""
    return f"pppssh-{cfg.file_stem}"


def pidfile(linkname: str) -> str:
    """Where pppd with this linkname writes its pid."""
    return f"{RUN_DIR}/ppp-{linkname}.pid"


def remote_pidfile(cfg: SiteConfig) -> str:
    """Where the remote pppd (linkname pppssh-SITE-ADDRESS) writes its pid; the helper builds
    the same path from the site name and the policy's peer."""
    return pidfile(cfg.remote_linkname)


def pppd_version(output: str) -> tuple[int, int, int] | None:
    """The version in what `pppd --version` prints (`pppd version 2.4.9`), or None."""
    m = _PPPD_VERSION.search(output)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def echo_adaptive_safe(version: tuple[int, int, int] | None) -> bool:
    """Whether `lcp-echo-adaptive` may be given to this pppd: only one that has the fix of
    ppp-project #323 (2.5.0 on); an unknown version is taken to lack it."""
    return version is not None and version >= ECHO_ADAPTIVE_FIXED_IN


def echo_adaptive_shell(pppd: str) -> str:
    """POSIX sh lines, for root on the remote gateway, that set pppd_version (what `PPPD
    --version` says, empty if nothing) and echo_adaptive (yes or no: echo_adaptive_safe's
    answer for that version)."""
    major, minor, _ = ECHO_ADAPTIVE_FIXED_IN
    if (major, minor) != (2, 5):
        raise ValueError("echo_adaptive_shell: the case patterns below are written for 2.5.0")
    return (
        f"pppd_version=$('{pppd}' --version 2>/dev/null |\n"
        "\tsed -n 's/^pppd version \\([0-9][0-9.]*\\).*/\\1/p' | head -n 1) ||\n"
        "\tpppd_version=\n"
        "case $pppd_version in\n"
        "[3-9].* | [1-9][0-9]*.* | 2.[5-9] | 2.[5-9].* | 2.[1-9][0-9]*) echo_adaptive=yes ;;\n"
        "*) echo_adaptive=no ;;\n"
        "esac\n"
    )


def start_pppd(cfg: SiteConfig) -> RemoteOp:
    """Start the remote pppd on the raw pty, its options fixed in its peers file there."""
    return RemoteOp(("pppd",), (cfg.remote_pppd, "call", peers_name(cfg)))


def stop_pppd(cfg: SiteConfig, signal: str = "TERM") -> RemoteOp:
    """Stop a pppd of this site an earlier session left (pid file and name must both match);
    the helper's `cleanup` sends TERM, then KILL itself."""
    if signal not in STOP_SIGNALS:
        raise ValueError(f"stop_pppd: signal {signal!r} is not one of {STOP_SIGNALS}")
    return RemoteOp(("cleanup",), (PKILL, f"-{signal}", "-x", "-F", remote_pidfile(cfg), "pppd"))


def route(cfg: SiteConfig, verb: str, fact: RouteFact) -> RemoteOp:
    """Add or delete one route on the remote gateway: `route add|del NETWORK via PEER` (the
    kernel finds the interface from the peer, so no interface is named)."""
    if verb not in ("add", "del"):
        raise ValueError(f"route: verb {verb!r} is not add or del")
    tail = (verb, str(fact.network), "via", str(fact.via))
    return RemoteOp(("route", *tail), (cfg.remote_ip, "route", *tail))


def interface(cfg: SiteConfig) -> RemoteOp:
    """Ask which interface carries the link: the helper answers with its name, without it
    pppssh reads the addresses itself (unprivileged)."""
    return RemoteOp(("interface",), (cfg.remote_ip, "-o", "-4", "addr", "show"), privileged=False)


def check(cfg: SiteConfig) -> RemoteOp:
    """The helper's read-only preflight for `pppssh check` (without the helper, check.py reads
    the same facts with unprivileged commands and `sudo -l` for each of root_ops)."""
    del cfg  # one request for every site: the helper reads the site's policy
    return RemoteOp(("check",), (), privileged=False)


def congestion(cfg: SiteConfig) -> RemoteOp | None:
    """Set the congestion control of the remote sshd's socket of this connection (the way
    down) to tcp_congestion_down; None when that is left as it is. The helper takes the
    name from its policy, never from the request."""
    if not cfg.tcp_congestion_down:
        return None
    return RemoteOp(("congestion",), (CONGESTION_PATH, cfg.tcp_congestion_down))


def helper_requests(cfg: SiteConfig) -> list[tuple[str, ...]]:
    """Every request pppssh sends to the helper for this site: the helper's allow-list is
    exactly these (its routes checked against the policy's networks and peer)."""
    ops = [start_pppd(cfg), stop_pppd(cfg), interface(cfg), check(cfg)]
    if (op := congestion(cfg)) is not None:
        ops.append(op)
    for fact in routes_there(cfg):
        ops += [route(cfg, "add", fact), route(cfg, "del", fact)]
    return [op.request for op in ops]


def routes_there(cfg: SiteConfig) -> list[RouteFact]:
    """The routes on the remote gateway: every local IPv4 network via our PPP address."""
    return [RouteFact(net, cfg.local_address) for net in cfg.local_networks]


def routes_here(cfg: SiteConfig) -> list[RouteFact]:
    """The routes on this gateway: every remote IPv4 network via the remote PPP address."""
    return [RouteFact(net, cfg.remote_address) for net in cfg.remote_networks]


def root_ops(cfg: SiteConfig) -> list[RemoteOp]:
    """Every operation that runs as root on the remote gateway, in a fixed order: start pppd,
    stop it (each signal), add and delete each route there, then (when set) the way down's
    congestion control."""
    ops = [start_pppd(cfg), *(stop_pppd(cfg, sig) for sig in STOP_SIGNALS)]
    for fact in routes_there(cfg):
        ops += [route(cfg, "add", fact), route(cfg, "del", fact)]
    if (op := congestion(cfg)) is not None:
        ops.append(op)
    return ops


# characters sudoers gives a meaning inside a command's arguments, escaped with a backslash
_SUDOERS_SPECIAL = set(",:=\\")
# characters that would make an argument a pattern (or several arguments) in sudoers
_SUDOERS_PATTERN = set("*?[]!# \t\n\"'")


def sudoers_word(word: str) -> str:
    """One argument as sudoers reads it literally: specials escaped, patterns refused."""
    if not word or set(word) & _SUDOERS_PATTERN:
        raise ValueError(f"{word!r} cannot be an exact argument in sudoers")
    return "".join("\\" + c if c in _SUDOERS_SPECIAL else c for c in word)


def sudoers_rule(user: str, argv: Iterable[str]) -> str:
    """The sudoers line that lets user run exactly argv as root."""
    return f"{user} ALL=(root) NOPASSWD: {' '.join(sudoers_word(w) for w in argv)}"


def sudoers_rules(cfg: SiteConfig) -> list[str]:
    """One sudoers line per operation of root_ops: its argv, nothing more."""
    return [sudoers_rule(cfg.user, op.argv) for op in root_ops(cfg)]


def policy_text(cfg: SiteConfig) -> str:
    """The helper's policy for this site: programs, link addresses, allowed networks (the
    networks and peer of routes_there, so the helper allows exactly those route requests)."""
    facts = routes_there(cfg)
    lines = [
        f"# pppssh-helper policy of site {cfg.name}, written by `pppssh remote-setup`.",
        "# Routes may be added or removed only for these networks, only via the peer.",
        f"pppd {cfg.remote_pppd}",
        f"ip {cfg.remote_ip}",
        f"local {cfg.remote_address}",
        f"peer {cfg.local_address}",
        *(f"network {fact.network}" for fact in facts),
        *([f"congestion {cfg.tcp_congestion_down}"] if cfg.tcp_congestion_down else []),
    ]
    return "\n".join(lines) + "\n"


def helper_constants() -> dict[str, str]:
    """The helper script's own settings, as `NAME=value` lines it starts with."""
    return {
        "POLICY_DIR": POLICY_DIR,
        "SUDO": SUDO,
        "PKILL": PKILL,
        "RUN": RUN_DIR,
        "CONGESTION": CONGESTION_PATH,
    }
