"""`pppssh check`: a preflight that changes nothing and says, one line each, what would fail.

Local facts come from the system edge (files under /proc and /sys, `pppd --version`,
`ip route`/`ip addr`); remote facts from unprivileged reads over the same SSH login `start`
uses (host key checked), or from pppssh-helper's `check` request. Nothing starts pppd or
changes a route on either side. The judging of those facts is pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import commands, dns, mss, trust
from .asyncssh_compat import asyncssh
from .commands import root_ops, sudoers_rules
from .config import Network, SiteConfig, server_address_error, server_text
from .errors import PppsshError
from .plan import Command
from .queues import congestion_note
from .remote_setup import SUDOERS_DIR, file_name, sudoers_name
from .sanitize import printable, valid_ifname
from .ssh import (
    HostKeyRefused,
    KeyRefused,
    RemoteFailed,
    TunnelError,
    Unreachable,
    close_connection,
    connect,
    first_hop,
    pin_address,
    run_remote,
    token_offers,
)
from .system import plain_env, probe, read_state

__all__ = [
    "Check",
    "addresses_of",
    "clashes",
    "kernel_ppp",
    "parse_helper_check",
    "render",
    "routes_of",
    "rp_filter",
    "run_checks",
]

OK, FAIL = "\u2713", "\u2717"  # ✓ ✗


@dataclass(frozen=True)
class Check:
    """One line of the preflight: what was checked, whether it holds, and the fix if not."""

    what: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        """`✓ what: detail` or `✗ what: detail; fix: ...`."""
        text = f"{OK if self.ok else FAIL} {self.what}"
        if self.detail:
            text += f": {self.detail}"
        if not self.ok and self.fix:
            text += f"; fix: {self.fix}"
        return text


def render(checks: Iterable[Check]) -> str:
    """All lines, one per check."""
    return "".join(c.line() + "\n" for c in checks)


# --------------------------------------------------------------------------- pure judging

_ROUTE_DST = re.compile(r"^(?:(?:unicast|local|broadcast|blackhole|unreachable|prohibit)\s+)?(\S+)")
_ADDR = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\S+)")


def routes_of(ip_route_output: str) -> list[tuple[Network, str]]:
    """`ip -4 route show` lines as (destination, the whole line); `default` is left out."""
    found: list[tuple[Network, str]] = []
    for line in ip_route_output.splitlines():
        m = _ROUTE_DST.match(line.strip())
        if not m or m.group(1) == "default":
            continue
        try:
            net = ipaddress.ip_network(m.group(1), strict=False)
        except ValueError:
            continue
        if isinstance(net, Network):
            found.append((net, " ".join(line.split())))
    return found


def addresses_of(ip_addr_output: str) -> list[tuple[str, Network]]:
    """`ip -o -4 addr show` lines as (interface, the network of its address)."""
    found: list[tuple[str, Network]] = []
    for line in ip_addr_output.splitlines():
        m = _ADDR.match(line.strip())
        if not m:
            continue
        try:
            iface = ipaddress.ip_interface(m.group(2))
        except ValueError:
            continue
        if isinstance(iface, ipaddress.IPv4Interface):
            found.append((m.group(1).split("@")[0], iface.network))
    return found


def clashes(
    networks: Iterable[Network],
    routes: list[tuple[Network, str]],
    addresses: list[tuple[str, Network]],
    own_interface: str | None = None,
) -> list[str]:
    """What already claims the networks the link would route: interfaces and routes.

    A network that overlaps an interface's own network clashes; so does a route to the same
    network or a part of it. A broader route (10.0.0.0/8 via a router) does not: the link's
    more specific route wins there, as intended. Routes and addresses on own_interface (the
    site's running link) are the site's own.
    """
    found: list[str] = []
    for net in networks:
        for ifname, ifnet in addresses:
            if ifname != own_interface and ifnet.overlaps(net) and ifnet.prefixlen < 32:
                found.append(f"{net} overlaps {ifnet} on {ifname}")
        for dst, line in routes:
            own = own_interface is not None and f" dev {own_interface}" in f" {line} "
            if not own and dst.subnet_of(net):
                found.append(f"{net}: a route exists already: {line}")
    return found


def kernel_ppp(dev: Path = Path("/dev/ppp"), sys_module: Path = Path("/sys/module"),
               modules: Path | None = None) -> Check:  # fmt: skip
    """PPP in this kernel: /dev/ppp, a loaded ppp_generic, or the module on disk."""
    what = "kernel PPP support"
    if dev.exists():
        return Check(what, True, f"{dev} is there")
    if (sys_module / "ppp_generic").exists():
        return Check(what, True, "ppp_generic is loaded")
    base = modules if modules is not None else Path("/lib/modules") / os.uname().release
    if base.is_dir() and any(base.rglob("ppp_generic.ko*")):
        return Check(what, True, "the ppp_generic module is available (loaded on first use)")
    return Check(
        what, False, f"no {dev} and no ppp_generic module in this kernel",
        "load or install PPP: modprobe ppp_generic ppp_async (a kernel with CONFIG_PPP)",
    )  # fmt: skip


FORWARD4 = ("IP forwarding", "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")
FORWARD6 = ("IPv6 forwarding", "net.ipv6.conf.all.forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding")  # fmt: skip


def forwarding(where: str, value: str, kind: tuple[str, str, str] = FORWARD4) -> Check:
    """net.ipv4.ip_forward (or IPv6's forwarding) must be 1 on a gateway."""
    name, key, _ = kind
    what = f"{name} {where}"
    if value.strip() == "1":
        return Check(what, True, f"{key} = 1")
    shown = value.strip() or "unknown"
    return Check(
        what, False, f"{key} = {shown}",
        f"sysctl -w {key}=1 {where}, and set it in /etc/sysctl.d/ to keep it",
    )  # fmt: skip


def parse_helper_check(output: str) -> dict[str, list[str]]:
    """pppssh-helper's `check` answer: lines `KEY VALUE...`, gathered per key."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        if key:
            found.setdefault(key, []).append(value.strip())
    return found


# --------------------------------------------------------------------------- local checks


def _local_checks(cfg: SiteConfig) -> list[Check]:
    """pppd, kernel PPP, forwarding and clashes on this gateway."""
    checks: list[Check] = []
    status, out = probe([cfg.local_pppd, "--version"])
    version = next((line for line in out.splitlines() if "version" in line), out)
    if status == 0:
        checks.append(Check("local pppd", True, f"{cfg.local_pppd}: {version}"))
    else:
        checks.append(Check(
            "local pppd", False, f"{cfg.local_pppd}: {out or f'exit status {status}'}",
            "apt-get install ppp (or set local_pppd in [ppp])",
        ))  # fmt: skip
    checks.append(kernel_ppp())
    checks.append(Check("MSS clamping", *mss.judge(cfg, {t: _trusted_tool(t) for t in mss.TOOLS})))
    checks.append(Check("SSH congestion control", True, congestion_note(cfg.tcp_congestion)))
    for kind in (FORWARD4, FORWARD6) if cfg.ipv6 else (FORWARD4,):
        try:
            value = Path(kind[2]).read_text()
        except OSError as exc:
            value = f"unreadable ({exc.strerror})"
        checks.append(forwarding("on this gateway", value, kind))
    state = read_state(cfg.name)
    own = state.interface if state is not None and state.state == "up" else None
    _, routes = probe(["ip", "-4", "route", "show"])
    _, addrs = probe(["ip", "-o", "-4", "addr", "show"])
    found = clashes(cfg.remote_networks, routes_of(routes), addresses_of(addrs), own)
    checks.append(_clash_check("networks free on this gateway", cfg.remote_networks, found))
    checks += dns_check(cfg)
    return checks


def dns_check(cfg: SiteConfig) -> list[Check]:
    """The DNS method start will use for [dns] (none without servers)."""
    if not cfg.dns_servers:
        return []
    resolver, why = dns.detect()
    error = dns.missing(cfg, why) if resolver is None else dns.refusal(cfg, resolver)
    if error is not None or resolver is None:
        return [Check("DNS", False, str(error))]
    return [Check("DNS", True, resolver.describe())]


def _trusted_tool(name: str) -> str | None:
    """Where a program pppssh runs by name is found on root's fixed PATH, if there and trusted."""
    path = shutil.which(name, path=plain_env()["PATH"])
    try:
        return str(trust.check_program(path, name).path) if path else None
    except PppsshError:
        return None


def _clash_check(what: str, networks: tuple[Network, ...], found: list[str]) -> Check:
    """One line for the clash check of one side."""
    if not networks:
        return Check(what, True, "no networks to route there")
    if not found:
        return Check(what, True, ", ".join(map(str, networks)))
    return Check(
        what, False, "; ".join(found),
        "remove the clashing route or address, or change the networks in the site file",
    )  # fmt: skip


# --------------------------------------------------------------------------- remote checks


async def _ssh_banner(host: str, port: int, timeout: float) -> str:
    """Open a TCP connection to an SSH port and read the server's version line."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return line.decode("ascii", errors="replace").strip()


def _path(cfg: SiteConfig) -> str:
    """How the gateway is reached, for the `SSH path` line: proxy, jump hosts."""
    parts = []
    if cfg.proxy is not None:
        parts.append(f"proxy {cfg.proxy}")
    if cfg.proxy_command:
        parts.append(f"proxy_command {printable(' '.join(cfg.proxy_command), 100)}")
    parts += [f"jump host {hop}" for hop in cfg.jump]
    return ", then ".join([*parts, f"{cfg.destination}"])


async def _first_hop_check(cfg: SiteConfig) -> Check | None:
    """The first TCP hop answers: the proxy, or an SSH server (jump host or gateway)."""
    if cfg.proxy_command:
        return None
    host, port = first_hop(cfg)
    where = f"{host}:{port}"
    what = "proxy reachable" if cfg.proxy is not None else "SSH reachable"
    try:
        if cfg.proxy is not None:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), cfg.connect_timeout
            )
            writer.close()
            return Check(what, True, where)
        banner = await _ssh_banner(host, port, cfg.connect_timeout)
    except (OSError, TimeoutError) as exc:
        reason = (os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno
                  else f"no answer within {cfg.connect_timeout:g}s")  # fmt: skip
        return Check(
            what, False, f"{where}: {reason}",
            "check host and port (or jump, proxy) in [remote], the route to it and firewalls "
            "on the way",
        )  # fmt: skip
    if not banner.startswith("SSH-"):
        return Check(what, False, f"{where} answers, but not as SSH: {printable(banner, 60)}",
                     "check port (or jump) in [remote]")  # fmt: skip
    return Check(what, True, f"{where} ({printable(banner, 60)})")


async def token_check(cfg: SiteConfig) -> Check:
    """The PKCS#11 token: its library trusted and loaded, the PIN taken, its keys listed
    (type and fingerprint, as they will be offered)."""
    try:
        offers = await token_offers(cfg)
    except TunnelError as exc:
        return Check(
            "PKCS#11 token", False, printable(str(exc)),
            "check pkcs11_provider and pkcs11_pin_file in [remote], and that the token is "
            "plugged in and initialised",
        )  # fmt: skip
    return Check("PKCS#11 token", True, "; ".join(label for label, _pair in offers))


async def _remote_checks(cfg: SiteConfig) -> list[Check]:
    """SSH reachable, host key, key, then what the remote account may do (nothing started)."""
    checks: list[Check] = []
    if cfg.pkcs11_provider:
        token = await token_check(cfg)
        checks.append(token)
        if not token.ok:
            return checks
    if cfg.jump or cfg.proxy is not None or cfg.proxy_command:
        checks.append(Check("SSH path", True, _path(cfg)))
    first = await _first_hop_check(cfg)
    if first is not None:
        checks.append(first)
        if not first.ok:
            return checks
    try:
        conn, client = await connect(cfg)
    except HostKeyRefused as exc:
        checks.append(Check("host key known", False, printable(str(exc))))
        return checks
    except KeyRefused as exc:
        checks.append(Check("host key known", True, f"in {cfg.known_hosts}"))
        fix = f"pppssh remote-setup {cfg.path} writes its line"
        if cfg.certificate is not None:
            fix = "sign the key with a CA the remote sshd trusts (TrustedUserCAKeys)"
        checks.append(Check(
            "key accepted", False, printable(str(exc)),
            f"put the public key in ~{cfg.user}/.ssh/authorized_keys there: {fix}",
        ))  # fmt: skip
        return checks
    except (Unreachable, TunnelError) as exc:
        checks.append(Check("SSH login", False, printable(str(exc))))
        return checks
    hops = f" (and of {len(cfg.jump)} jump host(s))" if cfg.jump else ""
    checks.append(Check("host key known", True, f"in {cfg.known_hosts}{hops}"))
    if len(client.offered) > 1:
        checks.append(Check("keys offered", True, "; ".join(client.offered)))
    accepted = client.accepted or str(cfg.identity)
    checks.append(Check("key accepted", True, f"{cfg.user}@{cfg.host} with {accepted}"))
    peer = pin_address(client)  # None when a proxy command carries the connection
    clash = server_address_error(cfg, peer) if peer is not None else None
    if clash is not None:  # a host name hid it from the parser; start refuses it
        checks.append(Check(
            "PPP addresses not the SSH server's", False, str(clash),
            "choose local_address and remote_address the SSH server does not have (its SSH "
            "connection must stay outside the link)",
        ))  # fmt: skip
    try:
        if cfg.helper:
            checks += await _remote_helper(cfg, conn)
        else:
            checks += await _remote_plain(cfg, conn)
    finally:
        await close_connection(conn)
    return checks


async def _answer(conn: asyncssh.SSHClientConnection, argv: tuple[str, ...]) -> tuple[bool, str]:
    """Run one read-only command there: (succeeded, its stdout or its error, made printable
    line by line)."""
    try:
        said = await run_remote(conn, Command(argv), timeout=30)
        return True, "\n".join(printable(line) for line in said.splitlines())
    except RemoteFailed as exc:
        return False, printable(exc.stderr or f"exit status {exc.status}")


def _remote_clash(cfg: SiteConfig, routes: str, addrs: str) -> Check:
    """The local networks against the remote gateway's routes and interfaces."""
    state = read_state(cfg.name)
    own = state.remote_interface if state is not None and state.state == "up" else None
    if own is not None and not valid_ifname(own):
        own = None
    found = clashes(cfg.local_networks, routes_of(routes), addresses_of(addrs), own)
    return _clash_check("networks free on the remote gateway", cfg.local_networks, found)


def rp_filter(value: str) -> Check:
    """net.ipv4.conf.all.rp_filter on the remote gateway: 2 (loose) would override the strict
    filter the link gets there (the kernel takes the larger of all and the interface's)."""
    what = "reverse-path filter on the remote gateway"
    shown = value.strip() or "unknown"
    if shown in ("0", "1"):
        return Check(what, True, f"net.ipv4.conf.all.rp_filter = {shown}; the link's pppN gets 1")
    return Check(
        what, False, f"net.ipv4.conf.all.rp_filter = {shown}: the link's strict filter is void",
        "sysctl -w net.ipv4.conf.all.rp_filter=0 on the remote gateway (pppN gets 1 from the "
        "link filter), and set it in /etc/sysctl.d/ to keep it",
    )  # fmt: skip


def _sudo_checks(cfg: SiteConfig, verdicts: list[bool]) -> list[Check]:
    """Whether sudo there allows each operation of commands.root_ops (in its order): one line
    for pppd (start and stop), one for the routes, one for the way down's congestion control
    (when set); the fix names the exact missing rules."""
    ops, rules = root_ops(cfg), sudoers_rules(cfg)
    where = f"{SUDOERS_DIR}/{sudoers_name(cfg)}"
    fix_all = f"pppssh remote-setup {cfg.path} writes the exact rules to {where}"
    groups = (
        ("pppd", [i for i, op in enumerate(ops) if op.request[0] not in ("route", "congestion")]),
        ("the routes", [i for i, op in enumerate(ops) if op.request[0] == "route"]),
        ("the way down's congestion control",
         [i for i, op in enumerate(ops) if op.request[0] == "congestion"]),
    )  # fmt: skip
    lines = []
    for what, picked in groups:
        if not picked:
            continue
        missing = [i for i in picked if i >= len(verdicts) or not verdicts[i]]
        if not missing:
            detail = "; ".join(" ".join(ops[i].argv) for i in picked)
            if what == "the routes":
                detail = f"{cfg.remote_ip} route add|del for {len(cfg.local_networks)} network(s)"
            lines.append(Check(f"remote sudo allows {what}", True, detail))
            continue
        refused = "; ".join(" ".join(ops[i].argv) for i in missing)
        lines.append(Check(
            f"remote sudo allows {what}", False, f"{refused} refused",
            f"{fix_all} (" + "; ".join(rules[i] for i in missing) + ")",
        ))  # fmt: skip
    return lines


async def _remote_plain(cfg: SiteConfig, conn: asyncssh.SSHClientConnection) -> list[Check]:
    """Without the helper: unprivileged reads, and `sudo -n -l` for exactly what start runs."""
    checks: list[Check] = []
    present, _ = await _answer(conn, ("test", "-f", cfg.remote_pppd))
    checks.append(Check(
        "remote pppd", present, cfg.remote_pppd + ("" if present else " is missing"),
        "apt-get install ppp on the remote gateway (or set pppd in [remote])",
    ))  # fmt: skip
    verdicts = []
    for op in root_ops(cfg):
        ok, _ = await _answer(conn, (*cfg.sudo, "-l", *op.argv))
        verdicts.append(ok)
    checks += _sudo_checks(cfg, verdicts)
    hook = f"/etc/ppp/ip-up.d/{file_name(cfg)}"
    ok, _ = await _answer(conn, ("test", "-x", hook))
    checks.append(_filter_check(cfg, ok))
    for kind in (FORWARD4, FORWARD6) if cfg.ipv6 else (FORWARD4,):
        _, value = await _answer(conn, ("cat", kind[2]))
        checks.append(forwarding("on the remote gateway", value, kind))
    _, value = await _answer(conn, ("cat", "/proc/sys/net/ipv4/conf/all/rp_filter"))
    checks.append(rp_filter(value))
    _, routes = await _answer(conn, (cfg.remote_ip, "-4", "route", "show"))
    _, addrs = await _answer(conn, (cfg.remote_ip, "-o", "-4", "addr", "show"))
    checks.append(_remote_clash(cfg, routes, addrs))
    return checks


def _filter_check(cfg: SiteConfig, present: bool) -> Check:
    """The link filter remote-setup installs in /etc/ppp/ip-up.d there."""
    hook = f"/etc/ppp/ip-up.d/{file_name(cfg)}"
    return Check(
        "remote link filter", present, hook + ("" if present else " is missing"),
        f"pppssh remote-setup {cfg.path} installs it",
    )  # fmt: skip


async def _remote_helper(cfg: SiteConfig, conn: asyncssh.SSHClientConnection) -> list[Check]:
    """With the helper: its `check` request answers for the policy it keeps there."""
    ok, said = await _answer(conn, commands.check(cfg).request)
    if not ok:
        return [Check(
            "remote helper answers check", False, said,
            f"install the current helper there: pppssh remote-setup --apply {cfg.path}",
        )]  # fmt: skip
    facts = parse_helper_check(said)
    checks = [Check("remote helper answers check", True, "pppssh-helper")]
    pppd = (facts.get("pppd") or ["missing ?"])[0].split() or ["missing"]
    checks.append(Check(
        "remote pppd", pppd[0] == "present", " ".join(pppd[1:]) + ("" if pppd[0] == "present"
                                                                  else " is missing"),
        "apt-get install ppp on the remote gateway",
    ))  # fmt: skip
    said_sudo = {s.partition(" ")[2]: s.startswith("allowed ") for s in facts.get("sudo", [])}
    verdicts = [said_sudo.get(" ".join(op.argv), False) for op in root_ops(cfg)]
    checks += _sudo_checks(cfg, verdicts)
    checks.append(_filter_check(cfg, (facts.get("filter") or [""])[0] == "present"))
    checks.append(forwarding("on the remote gateway", (facts.get("ip_forward") or [""])[0]))
    checks.append(rp_filter((facts.get("rp_filter_all") or [""])[0]))
    taken = [
        f"{net} is taken there (a route inside it, or an interface's network around it)"
        for net in cfg.local_networks
        if f"{net} free" not in facts.get("network", [])
    ]
    checks.append(_clash_check("networks free on the remote gateway", cfg.local_networks, taken))
    return checks


async def run_checks(cfg: SiteConfig) -> list[Check]:
    """Every check for a site whose file parsed, local first."""
    checks = _local_checks(cfg)
    if len(cfg.servers) == 1:
        return checks + await _remote_checks(cfg)
    for index, server in enumerate(cfg.servers):  # each gateway of host, named on its lines
        checks += [
            Check(f"{server_text(server)}: {c.what}", c.ok, c.detail, c.fix)
            for c in await _remote_checks(cfg.at_server(index))
        ]
    return checks
