"""DNS per link: the commands that set a site's [dns] on its local pppN, and undo it (pure).

Two ways, chosen on the gateway at each start (detect(), the one function here that looks at
the system): systemd-resolved, through `resolvectl dns|domain pppN ...` (routing domains,
`~.` for every query; `resolvectl revert pppN` undoes), else resolvconf, through a record
`pppN.pppssh-SITE` fed on stdin (`resolvconf -a`, `-x` for `~.`; `resolvconf -d` undoes).
Every command is a ledger entry, so the teardown, crash recovery and reload undo or replace
it like a route. Only the site file's servers and domains are ever written: nothing the
remote gateway or its pppd says (pppd runs without usepeerdns).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import trust
from .errors import ConfigError, Untrusted
from .ledger import Entry

if TYPE_CHECKING:
    from .config import SiteConfig

__all__ = [
    "RESOLVCONF",
    "RESOLVECTL",
    "RESOLVED_DIR",
    "Resolver",
    "detect",
    "entries",
    "gone_with_interface",
    "missing",
    "record_name",
    "refusal",
    "replace",
    "target",
]

Method = Literal["resolved", "resolvconf"]

RESOLVED_DIR = Path("/run/systemd/resolve")  # systemd-resolved's runtime directory, while it runs
RESOLVECTL = ("/usr/bin/resolvectl", "/bin/resolvectl")
RESOLVCONF = ("/usr/sbin/resolvconf", "/sbin/resolvconf")
SHELL = "/bin/sh"
# resolvconf reads its record on stdin: a fixed script pipes its arguments, one line each,
# into the program named by its first argument. No value is ever part of the script's text.
FEED = 'p=$1 n=$2; shift 2; printf "%s\\n" "$@" | "$p" -a "$n"'
FEED_EXCLUSIVE = 'p=$1 n=$2; shift 2; printf "%s\\n" "$@" | "$p" -x -a "$n"'
RESOLVED_GONE = ("NODEV",)  # resolvectl on an interface that has gone: "No such device"
RESOLVCONF_GONE = ("NORECORD",)  # "No resolv.conf for interface ..."


@dataclass(frozen=True)
class Resolver:
    """How DNS is set on this gateway: the method and its program (checked by trust)."""

    method: Method
    program: str
    shell: str = SHELL

    def describe(self) -> str:
        """For `check` and the start's note."""
        if self.method == "resolved":
            return (f"systemd-resolved ({self.program} domain|default-route|dns pppN, revert on "
                    "the way down)")  # fmt: skip
        return f"resolvconf ({self.program} -a pppN.pppssh-SITE, -d on the way down)"


def _trusted(candidates: Sequence[str], what: str) -> tuple[str | None, str]:
    """The first candidate that exists and passes trust.check_program (its resolved path),
    and why the others did not."""
    why = ""
    for path in candidates:
        try:
            return str(trust.check_program(path, what).path), ""
        except Untrusted as exc:
            if os.path.lexists(path):
                why = str(exc)
    return None, why


def detect(resolved_dir: Path = RESOLVED_DIR) -> tuple[Resolver | None, str]:
    """The system edge: systemd-resolved when its runtime directory exists (it is removed
    when the service stops) and resolvectl is a trusted program, else a trusted resolvconf
    (whose `-a` is fed through /bin/sh). None and why when neither is usable."""
    notes: list[str] = []
    if resolved_dir.is_dir():
        program, why = _trusted(RESOLVECTL, "resolvectl")
        if program is not None:
            return Resolver("resolved", program), ""
        notes.append(why or "systemd-resolved runs but resolvectl is not found")
    program, why = _trusted(RESOLVCONF, "resolvconf")
    if program is not None:
        shell, why_shell = _trusted((SHELL,), "shell")
        if shell is not None:
            return Resolver("resolvconf", program, shell), ""
        why = why_shell
    notes.append(why or f"neither systemd-resolved ({resolved_dir}) nor resolvconf is there")
    return None, "; ".join(notes)


def missing(cfg: SiteConfig, why: str) -> ConfigError:
    """The one-line error when [dns] is set and no way to set it exists here."""
    return ConfigError(
        str(cfg.path), cfg.lines.get("dns_servers", 0), "servers",
        f"no way to set DNS on this gateway: {why}; install systemd-resolved or resolvconf "
        "(openresolv), or remove [dns]",
    )  # fmt: skip


def refusal(cfg: SiteConfig, resolver: Resolver) -> ConfigError | None:
    """What the chosen method cannot do with cfg's domains, as a file:line: key error."""
    if resolver.method == "resolved":
        return None
    routing = [d for d in cfg.dns_domains if d.startswith("~") and d != "~."]
    if not routing:
        return None
    return ConfigError(
        str(cfg.path), cfg.lines.get("dns_domains", 0), "domains",
        f"{routing[0]}: a routing-only domain needs systemd-resolved; resolvconf writes "
        "resolv.conf, where every name goes to every server (use `name` as a search domain, "
        "or `~.`)",
    )  # fmt: skip


def record_name(ifname: str, site: str) -> str:
    """resolvconf's record for the site's link: `pppN.pppssh-SITE` (openresolv orders
    `ppp*` records first; the site keeps two sites' records apart)."""
    return f"{ifname}.pppssh-{site}"


def entries(cfg: SiteConfig, resolver: Resolver, ifname: str) -> list[Entry]:
    """The ledger entries that set cfg's [dns] on ifname, in order (none without servers)."""
    if not cfg.dns_servers:
        return []
    servers = [str(addr) for addr in cfg.dns_servers]
    domains = list(cfg.dns_domains)
    prog = resolver.program
    if resolver.method == "resolved":
        # systemd's advice for VPNs: domains and default-route before the servers; listed
        # domains only (default-route off) unless `~.` or no domain asks for every query
        found: list[Entry] = []
        if domains:
            found.append(Entry("local", "dns", f"DNS domains of {ifname}: {' '.join(domains)}",
                               (prog, "domain", ifname, *domains), (prog, "domain", ifname, ""),
                               RESOLVED_GONE))  # fmt: skip
        every = "yes" if "~." in domains or not domains else "no"
        route = (prog, "default-route", ifname, every)
        found.append(Entry("local", "dns", f"DNS default route of {ifname}: {every}", route,
                           None, RESOLVED_GONE))  # fmt: skip
        found.append(Entry("local", "dns", f"DNS servers of {ifname}: {' '.join(servers)}",
                           (prog, "dns", ifname, *servers), (prog, "revert", ifname),
                           RESOLVED_GONE))  # fmt: skip
        return found
    name = record_name(ifname, cfg.name)
    lines = [f"nameserver {addr}" for addr in servers]
    search = [d for d in domains if not d.startswith("~")]
    if search:
        lines.append(f"search {' '.join(search)}")
    script = FEED_EXCLUSIVE if "~." in domains else FEED
    shown = "; ".join(lines) + (" (exclusive)" if "~." in domains else "")
    return [
        Entry("local", "dns", f"resolvconf record {name}: {shown}",
              (resolver.shell, "-c", script, "pppssh-dns", prog, name, *lines),
              (prog, "-d", name), RESOLVCONF_GONE),
    ]  # fmt: skip


def gone_with_interface(entry: Entry) -> bool:
    """True for systemd-resolved's settings: they leave with the interface, so after a crash
    (its pppd stopped, the pppN gone, the name maybe another link's by now) nothing is undone."""
    return entry.kind == "dns" and entry.gone == RESOLVED_GONE


def replace(
    old: Sequence[Entry], new: Sequence[Entry]
) -> tuple[list[Entry], list[Entry], list[Entry]]:
    """What a reload does to the DNS entries: (apply, forget, undo).

    Each DNS command sets a whole value (resolvectl's servers, domains or default route of
    the link, the resolvconf record), so a changed entry is applied over the old one, which
    is then only forgotten (its undo would take the new one away too); an old entry whose
    target no wanted entry sets any more is undone, newest first.
    """
    apply = [e for e in new if e not in old]
    targets = {target(e) for e in new}
    forget = [e for e in old if e not in new and target(e) in targets]
    undo = [e for e in reversed(old) if e not in new and target(e) not in targets]
    return apply, forget, undo


def target(entry: Entry) -> tuple[str, ...] | None:
    """What a DNS entry sets: resolvectl's verb on the link, or the resolvconf record."""
    return entry.apply[:3] if entry.gone == RESOLVED_GONE else entry.undo
