"""Site configuration: parse and validate one INI file into a frozen SiteConfig."""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from . import trust
from .errors import ConfigError, Missing, TooLarge, Untrusted

__all__ = [
    "SCHEMA",
    "Compression",
    "ConfigError",
    "Hop",
    "Key",
    "Proxy",
    "Proxyarp",
    "SiteConfig",
    "check_files",
    "lan_gateway",
    "load",
    "parse",
    "safe_name",
]


NO_IDENTITY = Path("")  # no identity file: the keys come from the agent
MAX_MESSAGE = 400  # room for the list of allowed pppd options


def _printable(text: str) -> str:
    """Escape what a terminal would act on or hide (newlines, escapes, bidi controls)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _home(path: Path, attr: str, err: Callable[[str, str], ConfigError]) -> Path:
    """path with a leading ~ or ~user made that home; an unknown user is a ConfigError."""
    try:
        return path.expanduser()
    except RuntimeError:
        who = _printable(path.parts[0][1:])[:64]
        raise err(attr, f"~{who}: no home directory for that user on this machine") from None


class Compression(Enum):
    """Which PPP compression (CCP) both pppds ask for."""

    NONE = "none"
    DEFLATE = "deflate"
    BSDCOMP = "bsdcomp"


class Proxyarp(Enum):
    """Which gateway's pppd gets the `proxyarp` option."""

    NO = "no"
    LOCAL = "local"
    REMOTE = "remote"
    BOTH = "both"

    @property
    def local(self) -> bool:
        """True when the local pppd publishes its peer on the local LAN."""
        return self in (Proxyarp.LOCAL, Proxyarp.BOTH)

    @property
    def remote(self) -> bool:
        """True when the remote pppd publishes its peer on the remote LAN."""
        return self in (Proxyarp.REMOTE, Proxyarp.BOTH)


Network = ipaddress.IPv4Network
Network6 = ipaddress.IPv6Network
Address = ipaddress.IPv4Address


@dataclass(frozen=True)
class Hop:
    """One SSH jump host on the way to the remote gateway: user@host:port."""

    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        """user@host:port, for messages (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


@dataclass(frozen=True)
class Proxy:
    """A proxy the first SSH hop is reached through: http (CONNECT) or socks5."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        """scheme://host:port, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class SiteConfig:
    """One site: where the remote gateway is, how to reach it, what the link carries."""

    path: Path
    name: str
    reconnect: bool
    reconnect_delay: float
    reconnect_delay_max: float
    reconnect_tries: int
    retry_start: bool
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    sudo: tuple[str, ...]
    helper: bool
    key_from: tuple[str, ...]
    remote_pppd: str
    remote_ip: str
    connect_timeout: float
    keepalive_interval: int
    keepalive_count_max: int
    local_address: Address
    remote_address: Address
    mtu: int
    mru: int
    proxyarp: Proxyarp
    compression: Compression
    local_pppd: str
    local_options: tuple[str, ...]
    remote_options: tuple[str, ...]
    lcp_echo_interval: int
    lcp_echo_failure: int
    up_timeout: float
    local_networks: tuple[Network, ...]
    remote_networks: tuple[Network, ...]
    local_lan_gateways: tuple[Address, ...] = ()
    remote_lan_gateways: tuple[Address, ...] = ()
    full_tunnel: bool = False
    ipv6: bool = False
    mss_clamp: bool | None = None  # None: auto (mss.py)
    qdisc: str = ""  # the local ppp interface's; "": the kernel's, left alone
    local_networks6: tuple[Network6, ...] = ()
    remote_networks6: tuple[Network6, ...] = ()
    up_command: tuple[str, ...] = ()
    down_command: tuple[str, ...] = ()
    up_failure_aborts: bool = True
    hook_timeout: float = 30.0
    jump: tuple[Hop, ...] = ()
    jump_identity: Path | None = None
    proxy: Proxy | None = None
    proxy_auth: Path | None = None
    proxy_command: tuple[str, ...] = ()
    agent: str = ""
    certificate: Path | None = None
    ssh_config: Path | None = None
    pkcs11_provider: str = ""  # a PKCS#11 library whose token holds the key
    pkcs11_pin_file: Path | None = None
    dns_servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()  # [dns]
    dns_domains: tuple[str, ...] = ()
    secondaries: tuple[tuple[str, int], ...] = ()  # host's gateways after the first, in order
    failback: float = 300.0
    tcp_congestion: str = "bbr"  # "": the system's
    tcp_congestion_down: str = "bbr"  # the remote sshd's socket; "": left as it is
    tcp_notsent_lowat: int = -1  # bytes; -1: auto (queues.NOTSENT_AUTO); 0: straight through
    bandwidth: float = 0.0
    pump_codel: bool = True
    pace: bool = False
    delay_target: int = 12  # ms, flows sending down; 0: the pump leaves them alone
    delay_target_up: int = 0  # ms, flows sending up; 0: left alone
    window_target: int = 3  # ms, flows sending down: their windows narrowed; 0: never
    window_target_up: int = 5  # ms, flows sending up
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def linkname(self) -> str:
        """The local pppd's linkname (pidfile /run/ppp-<linkname>.pid), also its ipparam."""
        return f"pppssh-{self.name}"

    @property
    def remote_linkname(self) -> str:
        """The remote pppd's linkname: the site and this end's PPP address, which is unique
        on the remote gateway even if another client uses the same site name there."""
        return f"pppssh-{self.name}-{self.local_address}"

    @property
    def file_stem(self) -> str:
        """The site name as a collision-free file-name stem without '.' (see safe_name)."""
        return safe_name(self.name)

    @property
    def first_hop(self) -> tuple[str, int]:
        """Where the SSH path's TCP connection goes: the proxy, else the first jump host, else
        the remote gateway (with proxy_command too: full_tunnel is refused with it)."""
        if self.proxy is not None:
            return self.proxy.host, self.proxy.port
        if self.jump:
            return self.jump[0].host, self.jump[0].port
        return self.host, self.port

    @property
    def destination(self) -> str:
        """user@host:port, for messages."""
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """The remote gateways of `host`, in order of preference: (host, port) each."""
        return ((self.host, self.port), *self.secondaries)

    def at_server(self, index: int) -> SiteConfig:
        """This site as reached at servers[index] (its host key looked up under that name)."""
        if index == 0:
            return self
        host, port = self.secondaries[index - 1]
        return replace(self, host=host, port=port)

    def remote_pppd_command(self) -> tuple[str, ...]:
        """The argv prefix that starts pppd on the remote gateway (through sudo by default)."""
        return (*self.sudo, self.remote_pppd)

    def remote_ip_command(self) -> tuple[str, ...]:
        """The argv prefix that changes routes on the remote gateway."""
        return (*self.sudo, self.remote_ip)


def server_text(server: tuple[str, int]) -> str:
    """A gateway of SiteConfig.servers as host:port ([v6]:port), for messages and status."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- value parsers

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_ABS_PROGRAM = re.compile(r"^/[A-Za-z0-9_./+-]+$")
_PPPD_WORD = re.compile(r"^[A-Za-z0-9_.:,/=+@-]+$")

# pppd options a site may add: harmless tunables only (pppd 2.4.9's names). None of them runs
# a program, reads or writes a file, changes addresses, routes or authentication, or lets the
# peer choose an address; everything else is refused.
_PPPD_FLAGS = (
    "debug", "novj", "novjccomp", "nopcomp", "noaccomp", "default-asyncmap", "receive-all",
)  # fmt: skip
_PPPD_NUMBERS: dict[str, tuple[int, int]] = {
    "kdebug": (0, 7),
    "lcp-restart": (1, 60),
    "lcp-max-configure": (1, 100),
    "lcp-max-terminate": (1, 100),
    "lcp-max-failure": (1, 100),
    "ipcp-restart": (1, 60),
    "ipcp-max-configure": (1, 100),
    "ipcp-max-terminate": (1, 100),
    "ipcp-max-failure": (1, 100),
    "vj-max-slots": (2, 16),
}
_ASYNCMAP = re.compile(r"^[0-9A-Fa-f]{1,8}$")  # pppd reads it as hex, without 0x
PPPD_ALLOWED = ", ".join(
    [
        "debug",
        *(f"{name} N" for name in _PPPD_NUMBERS),
        *(name for name in _PPPD_FLAGS if name != "debug"),
        "asyncmap MAP",
    ]
)
# Options pppssh sets itself, and the key that sets them.
_PPPD_MANAGED = {
    "mtu": "mtu", "mru": "mru", "proxyarp": "proxyarp", "noproxyarp": "proxyarp",
    "noccp": "compression", "deflate": "compression", "nodeflate": "compression",
    "bsdcomp": "compression", "nobsdcomp": "compression", "nopredictor1": "compression",
    "lcp-echo-interval": "lcp_echo_interval", "lcp-echo-failure": "lcp_echo_failure",
    "+ipv6": "ipv6", "ipv6": "ipv6", "noipv6": "ipv6", "-ipv6": "ipv6",
}  # fmt: skip


def _as_int(lo: int, hi: int) -> Callable[[str], int]:
    """Parser for an integer within [lo, hi]."""

    def parse_int(value: str) -> int:
        try:
            if not value.isascii():
                raise ValueError
            number = int(value, 10)
        except ValueError:
            raise ValueError(f"'{value}' is not a whole number") from None
        if not lo <= number <= hi:
            raise ValueError(f"{number} is out of range {lo}..{hi}")
        return number

    return parse_int


def _as_seconds(lo: float, hi: float) -> Callable[[str], float]:
    """Parser for a number of seconds within [lo, hi]."""

    def parse_seconds(value: str) -> float:
        try:
            if not value.isascii():
                raise ValueError
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"'{value}' is not a number of seconds")
        if not lo <= number <= hi:
            raise ValueError(f"{value} is out of range {lo:g}..{hi:g} seconds")
        return number

    return parse_seconds


def _site_name(value: str) -> str:
    """A site name: used in file names, the pppd linkname and unit instance names."""
    if value and not _SITE_NAME.match(value):
        raise ValueError(
            f"'{value}' is not a valid site name (letters, digits, '_', '.', '-'; at most 32)"
        )
    return value


def _host(value: str) -> str:
    """A DNS name or a unicast IP address (no IPv6 scope: `%` is refused)."""
    if "%" not in value:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            if (
                addr.is_unspecified
                or addr.is_multicast
                or addr == ipaddress.IPv4Address("255.255.255.255")
            ):
                raise ValueError(f"'{value}' is not an address an SSH server can have")
            return str(addr)
    last = value.rstrip(".").rsplit(".", 1)[-1].lower()
    # a numeric or hex last label would be read as an address (inet_aton: 0x7f.1 = 127.0.0.1)
    numeric = last.isdigit() or (last.startswith("0x") and len(last) > 2)
    if not _HOSTNAME.match(value) or numeric:
        raise ValueError(f"'{value}' is not a host name or IP address")
    return value


def _user(value: str) -> str:
    """A non-root POSIX account name."""
    if not _USER.match(value):
        raise ValueError(f"'{value}' is not a valid account name")
    if value == "root":
        raise ValueError("must be a restricted non-root account (sudo runs pppd)")
    return value


def _user_or_empty(value: str) -> str:
    """A non-root account name, or nothing (then ssh_config must give one)."""
    return _user(value) if value else ""


def _program(value: str) -> str:
    """An absolute program path without shell characters."""
    if not _ABS_PROGRAM.match(value):
        raise ValueError(f"'{value}' must be an absolute path to a program")
    return value


def _sudo(value: str) -> tuple[str, ...]:
    """The privilege wrapper on the remote gateway, e.g. 'sudo -n'."""
    words = _words(value)
    if not words:
        raise ValueError("must not be empty: the remote account is not root")
    for word in words:
        if not _PPPD_WORD.match(word):
            raise ValueError(f"'{word}' contains characters not allowed here")
    return words


_FROM_PATTERN = re.compile(r"^!?[A-Za-z0-9.:*?/-]+$")


def _from_patterns(value: str) -> tuple[str, ...]:
    """sshd `from=` patterns: addresses, CIDR networks or host names, `*`/`?` and `!` allowed."""
    found: list[str] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if not word:
            continue
        if not _FROM_PATTERN.match(word):
            raise ValueError(
                f"'{word}' is not an address, network or host pattern for sshd's from="
            )
        if "/" in word:
            try:
                ipaddress.ip_network(word.lstrip("!"), strict=True)
            except ValueError:
                raise ValueError(f"'{word}' is not a network like 198.51.100.0/24") from None
        found.append(word)
    return tuple(found)


def _words(value: str) -> tuple[str, ...]:
    """Split a value like a shell would, without running one."""
    try:
        return tuple(shlex.split(value, comments=False))
    except ValueError as exc:
        raise ValueError(f"cannot split '{value}': {exc}") from None


def _pppd_options(value: str) -> tuple[str, ...]:
    """Extra pppd options: only the allow-listed tunables, their numbers in range."""
    words = _words(value)
    i = 0
    while i < len(words):
        word = words[i]
        if not _PPPD_WORD.match(word):
            raise ValueError(f"'{word}' contains characters not allowed in a pppd option")
        if word in _PPPD_MANAGED:
            raise ValueError(
                f"pppd option '{word}' is not allowed here: pppssh sets it from the key "
                f"{_PPPD_MANAGED[word]}"
            )
        if word in _PPPD_FLAGS:
            i += 1
            continue
        if word not in _PPPD_NUMBERS and word != "asyncmap":
            shown = word if len(word) <= 40 else word[:37] + "..."
            raise ValueError(f"pppd option '{shown}' is not allowed here; allowed: {PPPD_ALLOWED}")
        arg = words[i + 1] if i + 1 < len(words) else ""
        got = f"'{arg[:40]}'" if arg else "nothing"
        if word == "asyncmap":
            if not _ASYNCMAP.match(arg):
                raise ValueError(f"pppd option 'asyncmap' needs 1 to 8 hex digits, not {got}")
        else:
            lo, hi = _PPPD_NUMBERS[word]
            # decimal digits only: pppd would read 010 as octal and 0x10 as hex
            number = int(arg) if arg.isascii() and arg.isdigit() and arg == str(int(arg)) else -1
            if not lo <= number <= hi:
                raise ValueError(f"pppd option '{word}' needs a number {lo}..{hi}, not {got}")
        i += 2
    return words


def _address(value: str) -> Address:
    """An IPv4 address."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None
    if not isinstance(addr, Address):
        raise ValueError(f"'{value}' is IPv6; the PPP link carries IPv4 (IPCP)")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_reserved:
        raise ValueError(f"'{value}' cannot be a PPP address")
    return addr


def _addresses(value: str) -> tuple[Address, ...]:
    """A comma- or space-separated list of IPv4 addresses (maybe empty)."""
    found: list[Address] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if word:
            addr = _address(word)
            if addr in found:
                raise ValueError(f"'{word}' is listed twice")
            found.append(addr)
    return tuple(found)


def _networks(value: str) -> tuple[Network | Network6, ...]:
    """A comma- or space-separated list of networks (IPv4, or IPv6 with ipv6 = yes), most
    specific first."""
    nets: list[Network | Network6] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if not word:
            continue
        prefix = word.partition("/")[2]
        if prefix and not (prefix.isascii() and prefix.isdigit() and prefix == str(int(prefix))):
            raise ValueError(f"'{word}': write the prefix length, like 10.1.0.0/24") from None
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            raise ValueError(f"'{word}' is not a network like 10.1.0.0/24") from None
        if "/" in word and (net.network_address != ipaddress.ip_interface(word).ip):
            raise ValueError(f"'{word}' has host bits set; did you mean {net}?")
        if "/" not in word:
            raise ValueError(f"'{word}' needs a prefix length, e.g. {net}")
        if net.prefixlen == 0:
            raise ValueError(f"{net} would send everything through the link; not supported")
        if isinstance(net, Network6) and (net.is_link_local or net.is_multicast):
            raise ValueError(f"'{word}' is link-local or multicast; not a network to route")
        if net in nets:
            raise ValueError(f"'{word}' is listed twice")
        nets.append(net)
    nets.sort(key=lambda n: (n.version, -n.prefixlen, int(n.network_address)))
    return tuple(nets)


def _hook(value: str) -> tuple[str, ...]:
    """A command run as root without a shell: an absolute program and plain words."""
    words = _words(value)
    if words and not _ABS_PROGRAM.match(words[0]):
        raise ValueError(
            f"'{words[0]}' must be an absolute path to a program (the command runs without a "
            "shell; write /bin/sh -c '...' to have one)"
        )
    return words


MAX_HOPS = 8
_HOP = re.compile(r"^(?:([^@]*)@)?(\[[^\]]*\]|[^:]*)(?::([^:]*))?$")


def _host_port(text: str, what: str) -> tuple[str, int | None]:
    """host, host:port, [v6] or [v6]:port; the port None when not given."""
    m = re.match(r"^(\[[^\]]*\]|[^:\[\]]*)(?::([0-9]*))?$", text)
    if not m or not m.group(1):
        raise ValueError(f"'{text}' is not a {what} like host or host:port")
    host = m.group(1)
    if host.startswith("["):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"'{text}': only an IPv6 address goes in [brackets]")
    port = _as_int(1, 65535)(m.group(2)) if m.group(2) is not None else None
    return _host(host), port


def _servers(value: str) -> list[tuple[str, int | None]]:
    """The gateways of `host` in order: host, host:port or [v6]:port (a bare IPv6 address
    takes no port), comma or space separated, none twice."""
    found: list[tuple[str, int | None]] = []
    for word in value.replace(",", " ").split():
        bare_v6 = word.count(":") > 1 and not word.startswith("[")
        server = (_host(word), None) if bare_v6 else _host_port(word, "gateway")
        if server in found:
            raise ValueError(f"'{word}' is listed twice")
        found.append(server)
    if not found:
        raise ValueError("no gateway given")
    return found


def _hosts(value: str) -> str:
    """`host`: one gateway as before, or several in order of preference (see _servers)."""
    found = _servers(value)
    if len(found) == 1 and found[0][1] is None:
        return found[0][0]
    return ", ".join(f"[{h}]:{p}" if ":" in h and p else h + (f":{p}" if p else "")
                     for h, p in found)  # fmt: skip


def _jump(value: str) -> tuple[Hop, ...]:
    """Jump hosts in order, like ProxyJump: `[user@]host[:port]`, comma or space separated."""
    hops: list[Hop] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if not word:
            continue
        if word.startswith("ssh://") or "%" in word:
            raise ValueError(f"'{word}': write a jump host as [user@]host[:port]")
        user, at, rest = word.rpartition("@")
        if at and not user:
            raise ValueError(f"'{word}': the account name before @ is empty")
        host, port = _host_port(rest, "jump host")
        if user == "root":
            raise ValueError(f"'{word}': log in to a jump host as a restricted account, not root")
        hops.append(Hop(_user(user) if user else "", host, port or 22))
        if len(hops) > MAX_HOPS:
            raise ValueError(f"more than {MAX_HOPS} jump hosts")
    return tuple(hops)


def _proxy(value: str) -> Proxy | None:
    """http://host:port (HTTP CONNECT) or socks5://host:port; never a password in it."""
    if not value:
        return None
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "socks5"):
        raise ValueError(f"'{value}' is not http://host:port or socks5://host:port")
    if "@" in rest:
        raise ValueError(
            "no account or password in the proxy address: put `user:password` in a file "
            "only root can read and name it in proxy_auth"
        )
    rest = rest.removesuffix("/")
    host, port = _host_port(rest, "proxy address")
    if port is None:
        raise ValueError(f"'{value}' needs its port, like {scheme}://{rest}:3128")
    return Proxy(scheme, host, port)


_PROXY_TOKEN = re.compile(r"%(.?)")


def _proxy_command(value: str) -> tuple[str, ...]:
    """A program and its arguments (no shell) that connects stdin/stdout to the SSH server;
    %h and %p (and %% for a %) are the only substitutions."""
    words = _hook(value)
    for word in words:
        for m in _PROXY_TOKEN.finditer(word):
            if m.group(1) not in ("h", "p", "%"):
                raise ValueError(
                    f"'{word}': only %h (host), %p (port) and %% are substituted, not %{m.group(1)}"
                )
    return words


def _agent(value: str) -> str:
    """An ssh-agent socket: an absolute path, or `env` for $SSH_AUTH_SOCK at start."""
    if value in ("", "env"):
        return value
    if not _ABS_PROGRAM.match(value):
        raise ValueError(f"'{value}' is not an absolute path to an agent socket, nor env")
    return value


def _library(value: str) -> str:
    """A shared library's absolute path (a PKCS#11 provider), or nothing."""
    if value and not _ABS_PROGRAM.match(value):
        raise ValueError(f"'{value}' must be an absolute path to a PKCS#11 library (.so)")
    return value


def _optional_path(value: str) -> Path | None:
    """A file path (relative to the site file), or nothing."""
    return Path(value) if value else None


def _ssh_config(value: str) -> Path | None:
    """no, yes (root's ~/.ssh/config) or the absolute path of an ssh_config file."""
    word = value.lower()
    if word in ("no", "false", "off", "0", ""):
        return None
    if word in ("yes", "true", "on", "1"):
        return Path(os.path.expanduser("~/.ssh/config"))
    if not value.startswith("/"):
        raise ValueError(f"'{value}' is not yes, no or an absolute path to an ssh_config file")
    return Path(value)


def _up_failure(value: str) -> bool:
    """abort (True) or continue (False)."""
    word = value.lower()
    if word not in ("abort", "continue"):
        raise ValueError(f"'{value}' is not abort or continue")
    return word == "abort"


def _yes_no(value: str) -> bool:
    """yes/no (also true/false, on/off, 1/0)."""
    word = value.lower()
    if word in ("yes", "true", "on", "1"):
        return True
    if word in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"'{value}' is not yes or no")


def _compression(value: str) -> Compression:
    """One of none, deflate, bsdcomp."""
    try:
        return Compression(value.lower())
    except ValueError:
        raise ValueError(f"'{value}' is not one of: none, deflate, bsdcomp") from None


def _auto_yes_no(value: str) -> bool | None:
    """auto (None), yes or no."""
    if value.lower() == "auto":
        return None
    try:
        return _yes_no(value)
    except ValueError:
        raise ValueError(f"'{value}' is not one of: auto, yes, no") from None


QDISCS = ("fq_codel", "default")


def _qdisc(value: str) -> str:
    """fq_codel, or default (the kernel's, left alone: "")."""
    word = value.lower()
    if word not in QDISCS:
        raise ValueError(f"'{value}' is not one of: {', '.join(QDISCS)}")
    return "" if word == "default" else word


def _proxyarp(value: str) -> Proxyarp:
    """One of no, local, remote, both."""
    try:
        return Proxyarp(value.lower())
    except ValueError:
        raise ValueError(f"'{value}' is not one of: no, local, remote, both") from None


# --- the SSH connection's queues (tcp_congestion, tcp_notsent_lowat, bandwidth)
_CC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,14}$")  # a kernel congestion control's name


def _congestion(value: str) -> str:
    """A congestion control name as the kernel spells it (bbr, cubic, ...), or `default`."""
    if not _CC_NAME.match(value):
        raise ValueError(f"'{value}' is not a congestion control name (e.g. bbr, cubic, default)")
    return "" if value == "default" else value


def _notsent(value: str) -> int:
    """auto (-1: scaled to the measured rate), or bytes 0..16 MiB (0: no limit)."""
    if value.lower() == "auto":
        return -1
    try:
        return _as_int(0, 16777216)(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (or auto)") from None


def _mbit(value: str) -> float:
    """A rate in Mbit/s, 0 (unknown) up to 100000."""
    try:
        number = float(value) if value.isascii() else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 <= number <= 100000):
        raise ValueError(f"'{value}' is not a rate in Mbit/s (0 for unknown, up to 100000)")
    return number


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Key:
    """One documented key: its section, name, default, parser and description."""

    section: str
    name: str
    attr: str
    default: str | None  # None: required
    # A parser raises ValueError, never seen outside: parse() makes it the key's ConfigError
    parse: Callable[[str], Any]
    doc: str


SCHEMA: tuple[Key, ...] = (
    Key("site", "name", "name", "", _site_name,
        "Site name, used by `pppssh stop NAME`, the state file and the pppd linkname. "
        "Default: the file name without `.conf`."),
    Key("site", "reconnect", "reconnect", "yes", _yes_no,
        "After a link that was up is lost, bring it up again (yes) or exit (no)."),
    Key("site", "reconnect_delay", "reconnect_delay", "5", _as_seconds(0.1, 3600),
        "Seconds before the first reconnect attempt; doubled after each failure."),
    Key("site", "reconnect_delay_max", "reconnect_delay_max", "60", _as_seconds(0.1, 86400),
        "Upper bound of the delay between reconnect attempts. Each delay is drawn between "
        "half and all of its value (jitter), so that sites do not retry in step."),
    Key("site", "reconnect_tries", "reconnect_tries", "0", _as_int(0, 1000000),
        "Failed attempts in a row after which the site gives up and exits 1 (0: never)."),
    Key("site", "retry_start", "retry_start", "no", _yes_no,
        "no: `start` fails at once when the first attempt fails. yes: the site keeps trying "
        "like a reconnect; `start` returns after the first failure, saying it keeps trying."),
    Key("site", "failback", "failback", "300", _as_seconds(0, 86400),
        "With several gateways in `host`: seconds on a later one after which the first is "
        "tried again (a full SSH login, the link kept meanwhile); when it answers, the link "
        "moves back to it. 0: never."),
    Key("remote", "host", "host", None, _hosts,
        "The remote gateway's SSH address (name or IP); or several, comma separated, in order "
        "of preference (`gw1.example.net, gw2.example.net:2222`; port: `port`), each set up "
        "alike and with its own host key in `known_hosts`: a failed start or a lost link "
        "dials the next."),
    Key("remote", "port", "port", "22", _as_int(1, 65535), "Its SSH port."),
    Key("remote", "user", "user", "", _user_or_empty,
        "The restricted, non-root account on the remote gateway (required, unless "
        "`ssh_config` gives it)."),
    Key("remote", "identity", "identity", "", str,
        "Private key file for that account (relative paths are relative to the site file). "
        "Like the site file and every file it names, it must be root's, not writable by "
        "group or others, in directories that are the same; and, as OpenSSH requires, not "
        "readable by group or others (chmod 600). Required unless `agent`, `pkcs11_provider` "
        "or `ssh_config` is set. A FIDO security key's file (`ssh-keygen -t ed25519-sk`) holds "
        "only a handle; the authenticator signs."),
    Key("remote", "known_hosts", "known_hosts", None, str,
        "known_hosts file holding the remote gateway's host key; there is no way to skip "
        "the check."),
    Key("remote", "jump", "jump", "", _jump,
        "Jump hosts to reach the gateway through, in order, like ssh's ProxyJump: "
        "`[user@]host[:port]`, comma or space separated (user: the site's `user`; port 22). "
        "Each hop's host key must be in `known_hosts`, checked as strictly as the gateway's."),
    Key("remote", "jump_identity", "jump_identity", "", _optional_path,
        "Private key for the jump hosts (default: `identity`), checked like it."),
    Key("remote", "proxy", "proxy", "", _proxy,
        "Reach the first SSH hop through a proxy: `http://host:port` (HTTP CONNECT) or "
        "`socks5://host:port`. The proxy sees where you connect, never what you send."),
    Key("remote", "proxy_auth", "proxy_auth", "", _optional_path,
        "For an http proxy: a file holding `user:password` for its basic authentication, "
        "root's and closed to group and others (chmod 600), as an identity."),
    Key("remote", "proxy_command", "proxy_command", "", _proxy_command,
        "Instead of a TCP connection to the first hop: a program and its arguments, run as "
        "root without a shell, that talks to it on stdin/stdout (%h and %p: its host and "
        "port; %%: a %). The program must be root's, in directories only root can write."),
    Key("remote", "agent", "agent", "", _agent,
        "Log in with the keys of an ssh-agent: its socket's absolute path, or `env` for "
        "$SSH_AUTH_SOCK. The socket must be root's, in a directory that is root's and closed "
        "to others. The identity file is then offered only after the agent's keys."),
    Key("remote", "certificate", "certificate", "", _optional_path,
        "An OpenSSH user certificate (`id-cert.pub`) for `identity`, signed by a CA the "
        "remote sshd trusts (TrustedUserCAKeys); checked like known_hosts."),
    Key("remote", "pkcs11_provider", "pkcs11_provider", "", _library,
        "Log in with a key on a PKCS#11 token (smart card, HSM): the absolute path of its "
        "provider library (`/usr/lib/softhsm/libsofthsm2.so`, `opensc-pkcs11.so`), which "
        "root loads: root's, in directories only root can write. Its keys are offered after "
        "the agent's, before `identity`. Needs the python-pkcs11 package."),
    Key("remote", "pkcs11_pin_file", "pkcs11_pin_file", "", _optional_path,
        "A file holding the token's user PIN (one line), root's and closed to group and "
        "others (chmod 600), as an identity; empty: the token is opened without a PIN."),
    Key("remote", "ssh_config", "ssh_config", "no", _ssh_config,
        "yes (root's ~/.ssh/config) or a path: take HostName, Port, User, IdentityFile, "
        "ProxyJump and CertificateFile of the first matching Host entries for `host`; keys "
        "set here win, and nothing else in it is read (host key checking stays on)."),
    Key("remote", "sudo", "sudo", "sudo -n", _sudo,
        "How the remote account gains root for pppd and routes (`-n`: fail, never prompt)."),
    Key("remote", "helper", "helper", "yes", _yes_no,
        "yes: the account's key may only run pppssh-helper (`pppssh remote-setup` installs "
        "it), which accepts `pppd`, `route add|del`, `interface`, `cleanup`, `check` and "
        "`congestion`; the remote pppd options, allowed networks and the way down's "
        "congestion control are fixed on the remote side. no: the key gives a login shell as "
        "the account plus exactly the sudo commands remote-setup writes (`pppd call "
        "pppssh-SITE`, `ip route add|del NET via PEER`, `pkill` of its pid file, "
        "`pppssh-congestion NAME`)."),
    Key("remote", "from", "key_from", "", _from_patterns,
        "Where the key may be used from (sshd `from=` patterns: this gateway's public "
        "address, a network, a host name); `pppssh remote-setup` writes it into the key line."),
    Key("remote", "pppd", "remote_pppd", "/usr/sbin/pppd", _program,
        "pppd on the remote gateway, run as `<sudo> <pppd> call pppssh-NAME` (its options "
        "are in the peers file remote-setup writes there)."),
    Key("remote", "ip", "remote_ip", "/usr/sbin/ip", _program,
        "iproute2's ip on the remote gateway (routes are changed as `<sudo> <ip> route "
        "add|del NET via PEER`, exactly as the sudo rules remote-setup writes name them)."),
    Key("remote", "connect_timeout", "connect_timeout", "20", _as_seconds(1, 600),
        "Seconds allowed for the TCP connect and SSH handshake."),
    Key("remote", "keepalive_interval", "keepalive_interval", "10", _as_int(0, 3600),
        "Seconds of silence from the server before an SSH keepalive is sent (0: off). Any "
        "data received counts as an answer, so a saturated link never looks dead."),
    Key("remote", "keepalive_count_max", "keepalive_count_max", "2", _as_int(1, 100),
        "Keepalives left unanswered before the connection is declared dead: it is after "
        "interval x (count + 1) seconds of silence, 30 with the defaults."),
    Key("remote", "tcp_congestion", "tcp_congestion", "bbr", _congestion,
        "Congestion control of the SSH connection's TCP socket (TCP_CONGESTION), so of the "
        "way up, when the kernel has it (loaded or loadable); else, silently, the system's "
        "default, which `pppssh check` names. `default`: the system's. bbr was measured "
        "(see Benchmark): with 1% loss on the WAN the way up carried 1.13x the HOWTO "
        "path's, where cubic carried 0.84x, its loaded RTT at the idle one; elsewhere on a "
        "par with cubic."),
    Key("remote", "tcp_congestion_down", "tcp_congestion_down", "bbr", _congestion,
        "Congestion control of the remote sshd's socket of this connection, so of the way "
        "down: set once per connection by pppssh-congestion, run as root through an exact "
        "sudoers line that `pppssh remote-setup` writes with this name (run it again after "
        "a change). Where it cannot (a gateway set up before, a kernel without it) the link "
        "comes up all the same and the log says why. `default`: left as it is (the remote "
        "system's). bbr was measured (see Benchmark)."),
    Key("remote", "tcp_notsent_lowat", "tcp_notsent_lowat", "auto", _notsent,
        "Bytes the SSH socket may hold not yet sent (TCP_NOTSENT_LOWAT); beyond them the "
        "frames from the local pppd wait in pppssh's own queue, small ones first, bulk ones "
        "dropped by `codel`, in front of the tunnel rather than inside it. 0: no such queue, "
        "every frame goes straight into the SSH connection's buffers (up to its 2 MiB "
        "window). auto: 4 ms at the socket's measured delivery rate, 8 KiB to 256 KiB, "
        "followed as the rate changes. The default was measured (see Benchmark)."),
    Key("remote", "bandwidth", "bandwidth", "0", _mbit,
        "The path's rate in Mbit/s, the slower way (0: unknown). Set, it sizes the SSH "
        "window pppssh grants to twice the bandwidth-delay product (the delay: the SSH "
        "handshake's RTT), so the remote sshd can hold no more than that towards this "
        "gateway; unknown, the window is 2 MiB (OpenSSH's)."),
    Key("remote", "pace", "pace", "no", _yes_no,
        "With `bandwidth`: pace the SSH socket at 95% of it (SO_MAX_PACING_RATE), so that "
        "the WAN's queue stays short and the frames wait where pppssh orders and drops them "
        "(see `tcp_notsent_lowat`)."),
    Key("remote", "delay_target", "delay_target", "12", _as_int(0, 1000),
        "Milliseconds of queue each TCP flow coming down the tunnel may keep, measured by the "
        "pump from the flow's own timestamps (its one-way delay over its smallest of the last "
        "10 s); above it for 100 ms, pppssh drops the flow's data frames CoDel's way so the "
        "far sender slows down: the queue in the remote pty and sshd, out of pppssh's reach "
        "otherwise, stays short. No drops for 1 s after the SSH connection itself lost a "
        "segment (that delay is the outer TCP's). 0: off. Not 0, VJ header compression is "
        "off (novj). The default was measured (see Benchmark): at 5 ms the way down carried "
        "0.94x the HOWTO path's, at 12 ms 0.97-0.99x, with a loaded RTT 4-5 ms longer "
        "(0.42-0.53x the HOWTO path's)."),
    Key("remote", "delay_target_up", "delay_target_up", "0", _as_int(0, 1000),
        "The same for TCP flows going up, measured by their round trip (a TSval going up to "
        "the ACK that echoes it). 0: off, the default: the far receiver's delayed ACKs "
        "lengthen those round trips, and measured, the drops cost the way up throughput "
        "(see Benchmark)."),
    Key("remote", "window_target", "window_target", "3", _as_int(0, 1000),
        "Milliseconds of queue each TCP flow coming down the tunnel may keep (measured as for "
        "`delay_target`) before pppssh narrows the window the local receiver advertises in "
        "its ACKs going up: the window becomes the flow's rate times its round trip plus "
        "this, so the far sender keeps the path full without a standing queue and without "
        "drops (and `delay_target` drops none of the flow's frames). Only flows whose "
        "handshake and timestamps the pump saw. 0: off. Not 0, VJ header compression is off "
        "(novj)."),
    Key("remote", "window_target_up", "window_target_up", "5", _as_int(0, 1000),
        "The same for TCP flows going up, through the far receiver's ACKs coming down; their "
        "queue is measured by their round trip (a TSval going up to the ACK that echoes it). "
        "The defaults were measured (see Benchmark): on a 4 Mbit/s WAN the RTT under load "
        "fell to 0.36x (up) and 0.47-0.49x (down) the HOWTO path's, its throughput kept."),
    Key("remote", "codel", "pump_codel", "yes", _yes_no,
        "With `tcp_notsent_lowat`: drop large frames that waited in pppssh's queue longer "
        "than 5 ms for 100 ms (CoDel), so the inner TCP slows down rather than queueing."),
    Key("ppp", "local_address", "local_address", None, _address,
        "This gateway's address on the PPP link."),
    Key("ppp", "remote_address", "remote_address", None, _address,
        "The remote gateway's address on the PPP link."),
    Key("ppp", "mtu", "mtu", "1400", _as_int(128, 16384),
        "MTU asked of both pppds (see \"MTU and compression\" below for the default)."),
    Key("ppp", "mru", "mru", "1400", _as_int(128, 16384), "MRU asked of both pppds."),
    Key("ppp", "mss_clamp", "mss_clamp", "auto", _auto_yes_no,
        "Clamp the MSS of TCP connections through the link to fit its MTU (nftables rules of "
        "pppssh's own on this gateway, both ways; see \"MTU and compression\"): auto (when "
        "the smaller of mtu and mru is below 1500; a warning if it cannot), yes (the start "
        "fails if it cannot) or no."),
    Key("ppp", "qdisc", "qdisc", "default", _qdisc,
        "Queueing discipline of this gateway's ppp interface, set once it is up (`tc qdisc "
        "replace dev pppN root fq_codel`): the queue that forms there when the pty to the "
        "SSH connection is full. fq_codel keeps each flow's queue short by dropping by "
        "waiting time and sends small flows (pings, ACKs, interactive) first; the kernel's "
        "default for a ppp interface is pfifo_fast with room for 3 packets, which drops "
        "whatever comes next. `default`: leave the kernel's. A warning, not a failure, "
        "if tc cannot set it. Measured (see Benchmark): fq_codel lifts the lossy way up to "
        "the HOWTO's throughput but, where the pump is CPU-bound, lets a queue of 50-100 ms "
        "build under upload; hence not the default."),
    Key("ppp", "compression", "compression", "none", _compression,
        "PPP compression (CCP) both pppds ask for: none, deflate or bsdcomp (window 15). "
        "Each needs its kernel module (ppp_deflate, bsd_comp) on both gateways."),
    Key("ppp", "proxyarp", "proxyarp", "no", _proxyarp,
        "Which pppd answers ARP for its peer on its LAN: no, local, remote or both."),
    Key("ppp", "ipv6", "ipv6", "no", _yes_no,
        "yes: carry IPv6 too (IPV6CP, link-local fe80::1 here and fe80::2 there) and route "
        "the IPv6 networks in [networks] through the link on both sides."),
    Key("ppp", "local_pppd", "local_pppd", "/usr/sbin/pppd", _program,
        "pppd on this gateway (root's, in directories only root can write)."),
    Key("ppp", "local_options", "local_options", "", _pppd_options,
        "Extra options for the local pppd, from this list of harmless tunables only: "
        f"`{PPPD_ALLOWED.replace(', ', '`, `')}` (N: a whole number in the "
        "option's range, MAP: hex). Any other option is refused: none may run a program, "
        "read a file, or change addresses, routes or authentication."),
    Key("ppp", "remote_options", "remote_options", "", _pppd_options,
        "Extra options for the remote pppd (the same list)."),
    Key("ppp", "lcp_echo_interval", "lcp_echo_interval", "10", _as_int(0, 3600),
        "Seconds between LCP echo requests on both ends (0: off). A pppd of 2.5.0 or later "
        "sends them only when nothing came from the peer meanwhile (`lcp-echo-adaptive`); an "
        "older one (Debian 12's 2.4.9) every interval (see Staying up)."),
    Key("ppp", "lcp_echo_failure", "lcp_echo_failure", "3", _as_int(1, 100),
        "Unanswered LCP echoes before a pppd declares its peer dead (30 s with the defaults)."),
    Key("ppp", "up_timeout", "up_timeout", "60", _as_seconds(1, 3600),
        "Seconds allowed from the SSH login until IPCP is up."),
    Key("networks", "local", "local_networks", "", _networks,
        "Networks behind this gateway (comma-separated; IPv6 ones with ipv6 = yes); the "
        "remote gateway routes them through the link."),
    Key("networks", "remote", "remote_networks", "", _networks,
        "Networks behind the remote gateway; this gateway routes them through the link."),
    Key("networks", "local_lan_gateways", "local_lan_gateways", "", _addresses,
        "This gateway's address on each local LAN, for `pppssh routes --print` (one per "
        "network at most; a network without one gets its first host)."),
    Key("networks", "remote_lan_gateways", "remote_lan_gateways", "", _addresses,
        "The remote gateway's address on each remote LAN (same rules)."),
    Key("networks", "full_tunnel", "full_tunnel", "no", _yes_no,
        "yes: send all IPv4 traffic of this gateway (and the LANs it routes) through the "
        "remote gateway: 0.0.0.0/1 and 128.0.0.0/1 via the link, and a host route to the SSH "
        "server through the path it had before, so the link never carries itself."),
    Key("hooks", "up", "up_command", "", _hook,
        "Run on this gateway once routes are in place on both sides, before `start` returns "
        "(like pppd's ip-up, wg-quick's PostUp): an absolute program and its arguments, run "
        "as root without a shell, with SITE, IFNAME, LOCAL_IP, REMOTE_IP and REMOTE_IFNAME "
        "in its environment. The program must be root's, in directories only root can "
        "write."),
    Key("hooks", "down", "down_command", "", _hook,
        "Run on the way down (stop, or a lost link before it reconnects), before the routes "
        "are removed; same environment. Its failure is reported and never stops the "
        "teardown."),
    Key("hooks", "up_failure", "up_failure_aborts", "abort", _up_failure,
        "When the up command fails: abort (undo everything; a start fails, a reconnect "
        "tries again) or continue (report it and keep the link)."),
    Key("hooks", "timeout", "hook_timeout", "30", _as_seconds(1, 3600),
        "Seconds an up or down command may run before it is killed and counts as failed."),
)  # fmt: skip


# --------------------------------------------------------------------------- [dns]

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _dns_servers(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """DNS servers for the link: unicast IPv4 or IPv6 addresses, comma or space separated."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if not word:
            continue
        try:
            addr = ipaddress.ip_address(word)
        except ValueError:
            raise ValueError(f"'{word}' is not an IP address (no name, port or %scope)") from None
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local:
            raise ValueError(f"'{word}' cannot be a DNS server reached through the link")
        if addr == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"'{word}' is the broadcast address")
        if addr in found:
            raise ValueError(f"'{word}' is listed twice")
        found.append(addr)
    if len(found) > 8:
        raise ValueError("more than 8 servers")
    return tuple(found)


def _dns_domains(value: str) -> tuple[str, ...]:
    """Search and routing domains: DNS names, `~name` (routing only) or `~.` (every query)."""
    found: list[str] = []
    for word in re.split(r"[,\s]+", value.strip()):
        if not word:
            continue
        name = word.removeprefix("~")
        if word != "~." and (
            len(name.rstrip(".")) > 253
            or not all(_DNS_LABEL.match(label) for label in name.rstrip(".").split("."))
        ):
            raise ValueError(
                f"'{word[:80]}' is not a DNS domain (letters, digits, '-', '_' in dot-separated "
                "labels; '~' before it: routing only; '~.': every query; IDNs in xn-- form)"
            )
        word = "~" * word.startswith("~") + name.rstrip(".").lower() if word != "~." else word
        if word in found:
            raise ValueError(f"'{word}' is listed twice")
        found.append(word)
    if len(found) > 32:
        raise ValueError("more than 32 domains")
    return tuple(found)


def _check_dns(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """Domains need servers; each server must be reached through the link (its queries would
    otherwise leave by this gateway's usual way out, names of the remote site and all)."""
    servers = parsed["dns_servers"]
    if parsed["dns_domains"] and not servers:
        raise err("dns_domains", "needs servers in [dns] to send these domains to")
    for addr in servers:
        if isinstance(addr, ipaddress.IPv4Address):
            if parsed["full_tunnel"] or addr == parsed["remote_address"]:
                continue
            nets = parsed["remote_networks"]
        else:
            nets = parsed["remote_networks6"]
        if not any(addr in net for net in nets):
            raise err(
                "dns_servers",
                f"{addr} is not reached through the link: it is not remote_address or inside "
                "a remote network (add its network to remote, or set full_tunnel for IPv4)",
            )


SCHEMA += (
    Key("dns", "servers", "dns_servers", "", _dns_servers,
        "DNS servers on the remote side for this link (IPv4/IPv6 addresses, each inside a "
        "remote network, or remote_address, or anywhere with full_tunnel), set on the local "
        "pppN once the link and routes are up and removed on the way down (see DNS). Nothing "
        "the remote side or its pppd says reaches DNS here."),
    Key("dns", "domains", "dns_domains", "", _dns_domains,
        "Domains whose names go to those servers: `example.com` (search and routing "
        "domain), `~example.com` (routing only), `~.` (every query: with full_tunnel, all "
        "name resolution goes through the remote side). Needs `servers`."),
)  # fmt: skip

SECTIONS = tuple(dict.fromkeys(k.section for k in SCHEMA))


def parse_value(attr: str, value: str) -> Any:
    """One key's value parsed as in a site file (ValueError when it is not valid)."""
    return next(k for k in SCHEMA if k.attr == attr).parse(value)


# --------------------------------------------------------------------------- INI reader

MAX_FILE = 64 * 1024  # a site file is a few hundred bytes
MAX_LINE = 4096
_SECTION_RE = re.compile(r"^\[\s*([^\]\s]+)\s*\]$")
_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def _inline_comment(value: str) -> int:
    """Where an unquoted `#` or `;` starts a word of value (-1: nowhere).

    Comments are whole lines only (like configparser's default): such a word is refused, not
    dropped, so `remote = 10.2.0.0/24 ; 10.3.0.0/24` cannot silently lose a network. Inside
    quotes (a hook's `/bin/sh -c 'a ; b'`) or within a word (`a;b`) it is ordinary text.
    """
    quote = ""
    start = True
    i = 0
    while i < len(value):
        c = value[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c in "#;" and start:
            return i
        start = c in " \t" and not quote
        i += 1
    return -1


def _suggest(word: str, choices: list[str]) -> str:
    """A ` (did you mean 'x'?)` hint, or nothing."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse(text: str, path: Path) -> SiteConfig:
    """Parse the text of a site file; raise ConfigError on the first problem."""
    shown = str(path)
    values: dict[tuple[str, str], tuple[str, int]] = {}
    section_lines: dict[str, int] = {}
    section: str | None = None
    known = {(k.section, k.name) for k in SCHEMA}
    text = text.removeprefix("\ufeff")  # a byte order mark some editors write
    # Lines end at \n only (and \r\n), as editors and grep count them; any other control
    # character is refused rather than let it split or hide part of a line.
    for number, raw in enumerate(text.split("\n"), 1):
        raw = raw.removesuffix("\r")
        bad = next((c for c in raw if (ord(c) < 32 and c != "\t") or 0x7F <= ord(c) < 0xA0), None)
        if bad is None:
            bad = next((c for c in raw if c in "\u2028\u2029\ufeff"), None)
        named = _KEY_RE.match(raw.strip())
        key = named.group(1).lower() if named else ""
        if bad is not None:
            raise ConfigError(
                shown, number, key, f"control character U+{ord(bad):04X} in the line; remove it"
            )
        if len(raw) > MAX_LINE:
            raise ConfigError(shown, number, key, f"line longer than {MAX_LINE} characters")
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if m := _SECTION_RE.match(re.sub(r"\s+[#;].*$", "", line)):
            section = m.group(1).lower()
            if section not in SECTIONS:
                raise ConfigError(
                    shown, number, f"[{section}]",
                    "unknown section" + _suggest(section, list(SECTIONS)),
                )  # fmt: skip
            if section in section_lines:
                raise ConfigError(
                    shown, number, f"[{section}]",
                    f"section repeated (first at line {section_lines[section]})",
                )  # fmt: skip
            section_lines[section] = number
            continue
        m = _KEY_RE.match(line)
        if not m:
            word = line.partition("=")[0].strip()
            if "=" in line and word and " " not in word:
                names = [k.name for k in SCHEMA]
                hint = _suggest(word.replace("-", "_").lower(), names)
                raise ConfigError(shown, number, "", f"'{word}' is not a key name{hint}")
            raise ConfigError(shown, number, "", f"cannot read line: {raw.strip()!r}")
        if section is None:
            raise ConfigError(shown, number, m.group(1), "key outside any [section]")
        key = m.group(1).lower()
        if (section, key) not in known:
            elsewhere = [k.section for k in SCHEMA if k.name == key]
            if elsewhere:
                raise ConfigError(
                    shown, number, key, f"belongs in [{elsewhere[0]}], not in [{section}]"
                )
            names = [k.name for k in SCHEMA if k.section == section]
            raise ConfigError(shown, number, key, "unknown key" + _suggest(key, names))
        if (section, key) in values:
            raise ConfigError(
                shown, number, key, f"set twice (first at line {values[section, key][1]})"
            )
        value = m.group(2).strip()
        if (at := _inline_comment(value)) >= 0:
            raise ConfigError(
                shown, number, key,
                f"'{value[at]}' inside the value: comments go on a line of their own (a line "
                f"starting with # or ;); quote it if it belongs to the value",
            )  # fmt: skip
        values[section, key] = (value, number)

    parsed: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key in SCHEMA:
        raw_value, number = values.get((key.section, key.name), (None, 0))
        if raw_value is None:
            if key.default is None:
                raise ConfigError(
                    shown, section_lines.get(key.section, 0), key.name,
                    f"required key missing from [{key.section}]",
                )  # fmt: skip
            raw_value = key.default
        elif raw_value == "" and key.default is None:
            raise ConfigError(shown, number, key.name, "must not be empty")
        try:
            parsed[key.attr] = key.parse(raw_value)
        except ValueError as exc:
            raise ConfigError(shown, number, key.name, str(exc)) from None
        lines[key.attr] = number

    def err(attr: str, message: str) -> ConfigError:
        """An error pointing at the line that set attr."""
        key = next(k for k in SCHEMA if k.attr == attr)
        return ConfigError(shown, lines.get(attr, 0), key.name, message)

    if not parsed["name"]:
        stem = path.name.removesuffix(".conf")
        try:
            parsed["name"] = _site_name(stem)
        except ValueError as exc:
            raise ConfigError(shown, 0, "name", f"file name gives no site name: {exc}") from None
    base = path.parent
    for attr in ("user", "identity"):
        if not parsed[attr] and parsed["ssh_config"] is None:
            if attr == "identity" and (parsed["agent"] or parsed["pkcs11_provider"]):
                continue
            if lines[attr]:
                raise err(attr, "must not be empty")
            raise ConfigError(shown, section_lines.get("remote", 0), attr,
                              "required key missing from [remote]")  # fmt: skip
    for attr in ("identity", "known_hosts"):
        if not parsed[attr]:
            if attr == "identity":
                parsed[attr] = NO_IDENTITY
                continue
            raise err(attr, "must not be empty")
        parsed[attr] = (base / _home(Path(parsed[attr]), attr, err)).absolute()
    for attr in ("jump_identity", "proxy_auth", "certificate", "pkcs11_pin_file"):
        if parsed[attr] is not None:
            parsed[attr] = (base / _home(parsed[attr], attr, err)).absolute()
    servers = [(h, p or parsed["port"]) for h, p in _servers(parsed["host"])]
    if servers[0][1] != parsed["port"] and lines["port"]:
        raise err("port", f"also given in host ({servers[0][1]}); give it in one place")
    (parsed["host"], parsed["port"]), parsed["secondaries"] = servers[0], tuple(servers[1:])
    if parsed["secondaries"] and parsed["ssh_config"] is not None:
        raise err("ssh_config", "takes one gateway in host; write each one's address there")
    _check_reach(parsed, err)
    if parsed["local_address"] == parsed["remote_address"]:
        raise err("remote_address", "must differ from local_address")
    _check_server_address(parsed, err)
    _split_ipv6(parsed, err)
    if parsed["ipv6"] and parsed["helper"]:
        raise err("ipv6", "not available with helper = yes: pppssh-helper routes IPv4 only")
    _check_networks(parsed, err)
    _check_dns(parsed, err)
    return SiteConfig(path=path, lines=lines, **parsed)


def _check_reach(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """Jump hosts take the site's account by default; proxy keys must fit together."""
    parsed["jump"] = tuple(
        hop if hop.user else Hop(parsed["user"], hop.host, hop.port) for hop in parsed["jump"]
    )
    if parsed["proxy"] is not None and parsed["proxy_command"]:
        raise err("proxy_command", "set proxy or proxy_command, not both")
    if parsed["proxy_auth"] is not None and (
        parsed["proxy"] is None or parsed["proxy"].scheme != "http"
    ):
        raise err("proxy_auth", "only an http:// proxy takes basic authentication")
    if parsed["pkcs11_pin_file"] is not None and not parsed["pkcs11_provider"]:
        raise err("pkcs11_pin_file", "set without pkcs11_provider")
    if parsed["jump_identity"] is not None and not parsed["jump"]:
        raise err("jump_identity", "set without any jump host")
    if parsed["full_tunnel"] and parsed["proxy_command"]:
        raise err(
            "full_tunnel",
            "cannot pin the route to the SSH server when proxy_command reaches it; use jump "
            "or proxy instead",
        )


def server_address_clash(
    server: str, local: Address, remote: Address
) -> tuple[str, Address] | None:
    """("remote_address" or "local_address", the address) when that PPP address is the SSH
    server's address: routing it into the link would carry the link's own SSH connection."""
    try:
        addr = ipaddress.ip_address(server.split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for attr, own in (("remote_address", remote), ("local_address", local)):
        if addr == own:
            return attr, own
    return None


def server_address_message(addr: Address, where: str) -> str:
    """The refusal for a PPP address that is the SSH server's (where: "host" or "host x")."""
    return (
        f"{addr} is the SSH server ({where}): the link would carry its own SSH connection; "
        "use an address the server does not have"
    )


def server_address_error(cfg: SiteConfig, peer: str) -> ConfigError | None:
    """The usual file:line: key error when the SSH connection's TCP peer (the gateway as
    resolved, or the first jump host or proxy) is one of the site's PPP addresses."""
    clash = server_address_clash(peer, cfg.local_address, cfg.remote_address)
    if clash is None:
        return None
    attr, addr = clash
    if peer == cfg.host:
        where = "host"
    elif cfg.jump or cfg.proxy is not None:
        where = "the first hop of the SSH path"
    else:
        where = f"host {cfg.host} resolves to it"
    line = cfg.lines.get(attr, 0)
    return ConfigError(str(cfg.path), line, attr, server_address_message(addr, where))


def _check_server_address(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """A host given as an IP literal must not be one of the PPP addresses."""
    for host, _ in ((parsed["host"], 0), *parsed["secondaries"]):
        clash = server_address_clash(host, parsed["local_address"], parsed["remote_address"])
        if clash is not None:
            raise err(clash[0], server_address_message(clash[1], "host"))


def _split_ipv6(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """IPv4 networks stay in local/remote_networks; IPv6 ones go to *_networks6, with ipv6."""
    for attr in ("local_networks", "remote_networks"):
        nets = parsed[attr]
        six = tuple(n for n in nets if isinstance(n, Network6))
        if six and not parsed["ipv6"]:
            raise err(attr, f"'{six[0]}' is IPv6; the link carries it only with ipv6 = yes "
                            "in [ppp] (IPV6CP)")  # fmt: skip
        parsed[attr] = tuple(n for n in nets if isinstance(n, Network))
        parsed[attr + "6"] = six
    for lnet in parsed["local_networks6"]:
        for rnet in parsed["remote_networks6"]:
            if lnet.overlaps(rnet):
                raise err("remote_networks", f"{rnet} overlaps local network {lnet}")


def _check_networks(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """Cross-checks: sides must not overlap, addresses must fit proxyarp."""
    local: tuple[Network, ...] = parsed["local_networks"]
    remote: tuple[Network, ...] = parsed["remote_networks"]
    for lnet in local:
        for rnet in remote:
            if lnet.overlaps(rnet):
                raise err("remote_networks", f"{rnet} overlaps local network {lnet}")
    proxy: Proxyarp = parsed["proxyarp"]
    if proxy.remote and not any(parsed["local_address"] in n for n in remote):
        raise err(
            "proxyarp",
            f"proxyarp on the remote gateway needs local_address {parsed['local_address']} "
            f"inside a remote network ({', '.join(map(str, remote)) or 'none set'})",
        )
    if proxy.local and not any(parsed["remote_address"] in n for n in local):
        raise err(
            "proxyarp",
            f"proxyarp on the local gateway needs remote_address {parsed['remote_address']} "
            f"inside a local network ({', '.join(map(str, local)) or 'none set'})",
        )
    _check_placement(parsed, err)
    for attr, nets in (("local_lan_gateways", local), ("remote_lan_gateways", remote)):
        seen: dict[Network, Address] = {}
        for gw in parsed[attr]:
            net = next((n for n in nets if gw in n), None)
            if net is None:
                raise err(attr, f"{gw} is not inside any of {', '.join(map(str, nets)) or 'none'}")
            if net in seen:
                raise err(attr, f"{gw} and {seen[net]} are both in {net}: one gateway per LAN")
            if net.prefixlen < 31 and gw in (net.network_address, net.broadcast_address):
                raise err(attr, f"{gw} is not a host address of {net}")
            seen[net] = gw


def lan_gateway(net: Network, gateways: tuple[Address, ...]) -> Address:
    """A gateway's address on its LAN: the configured one inside it, else the LAN's first
    usable address (.1 of a /24; .0 of a /31, whose two addresses are both usable, RFC 3021;
    the one address of a /32). Never an address outside the network."""
    configured = next((gw for gw in gateways if gw in net), None)
    if configured is not None:
        return configured
    return net.network_address + 1 if net.prefixlen < 31 else net.network_address


def _check_placement(parsed: dict[str, Any], err: Callable[[str, str], ConfigError]) -> None:
    """PPP addresses must not land in the wrong LAN.

    Inside its own side's LAN, a PPP address may only be that gateway's own LAN address (a
    common, unnumbered-style choice); inside the far side's LAN, only with proxyarp there.
    """
    sides = (
        ("local_address", parsed["local_networks"], "local_lan_gateways",
         parsed["remote_networks"], parsed["proxyarp"].remote, "remote"),
        ("remote_address", parsed["remote_networks"], "remote_lan_gateways",
         parsed["local_networks"], parsed["proxyarp"].local, "local"),
    )  # fmt: skip
    for attr, own, gateways_attr, far, proxied, far_side in sides:
        addr: Address = parsed[attr]
        for net in own:
            gateway = lan_gateway(net, parsed[gateways_attr])
            if addr in net and addr != gateway:
                raise err(
                    attr,
                    f"{addr} is inside {net}, that gateway's own LAN, but is not its address "
                    f"there ({gateway}); use that address or one outside the LAN",
                )
        for net in far:
            if addr in net and not proxied:
                raise err(
                    attr,
                    f"{addr} is inside {net}, a LAN on the other side of the link; that "
                    f"needs proxyarp = {far_side} (or both), or an address outside it",
                )


def load(path: str | Path, *, files: bool = True) -> SiteConfig:
    """Read a site file through trust.read_trusted and parse it; then, with files=True (the
    verbs that connect or run programs), check every file it names that root will trust or
    run. Untrusted, unreadable or bad files are ConfigErrors.

    The site file, its identity, known_hosts, local_pppd and hook programs must each be a
    regular file owned by root (or by the user running pppssh, when that is not root), not
    writable by group or others, in directories that are all the same, checked on the opened
    descriptor (trust.py). `routes`, `status` and `stop` read the site file alone (files=False).
    """
    p = Path(path)
    try:
        data = trust.read_trusted(p, "site file", limit=MAX_FILE).data
    except TooLarge:
        raise ConfigError(
            str(p), 0, "", f"larger than {MAX_FILE // 1024} KiB; not a site file"
        ) from None
    except Missing:
        raise ConfigError(str(p), 0, "", "no such file") from None
    except Untrusted as exc:
        # "site file /abs/path is ..." reads "PATH: is ..." after the path ConfigError shows
        message = str(exc).removeprefix(f"site file {os.path.join(os.getcwd(), p)}")
        raise ConfigError(str(p), 0, "", message.removeprefix(":").strip()) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            str(p), line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None
    cfg = parse(text, p)
    if cfg.ssh_config is not None:
        from . import ssh_config

        cfg = ssh_config.apply(cfg)
    if files:
        check_files(cfg)
    return cfg


def check_files(cfg: SiteConfig, missing_ok: bool = False) -> None:
    """Check each file the site names that root will trust or run; the error names its key.

    missing_ok: a file that is not there passes (`pppssh check` reports it with its fix);
    one that is there must pass every check.
    """
    named: list[tuple[str, str, str | Path, bool]] = [  # attr, key, path, program?
        ("known_hosts", "known_hosts", cfg.known_hosts, False),
        ("local_pppd", "local_pppd", cfg.local_pppd, True),
    ]
    for attr, key, argv in (("up_command", "up", cfg.up_command),
                            ("down_command", "down", cfg.down_command),
                            ("proxy_command", "proxy_command", cfg.proxy_command)):  # fmt: skip
        if argv:
            named.append((attr, key, argv[0], True))
    if cfg.identity != NO_IDENTITY:
        named.insert(0, ("identity", "identity", cfg.identity, False))
    for attr in ("jump_identity", "proxy_auth", "certificate", "pkcs11_pin_file"):
        if getattr(cfg, attr) is not None:
            named.append((attr, attr, getattr(cfg, attr), False))
    if cfg.pkcs11_provider:  # a library root loads: checked like a program, minus the x bit
        named.append(("pkcs11_provider", "pkcs11_provider", cfg.pkcs11_provider, False))
    secrets = ("identity", "jump_identity", "proxy_auth", "pkcs11_pin_file")
    for attr, key, path, program in named:
        try:
            if program:
                trust.check_program(path, f"{key} program" if attr.endswith("command") else key)
            else:
                trust.check_file(path, key, secret=key in secrets)
        except Missing as exc:
            if not missing_ok:
                raise ConfigError(str(cfg.path), cfg.lines.get(attr, 0), key, str(exc)) from None
        except Untrusted as exc:
            raise ConfigError(str(cfg.path), cfg.lines.get(attr, 0), key, str(exc)) from None


_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def safe_name(name: str) -> str:
    """A site name as a file-name stem that no other site name maps to, for files whose names
    must avoid '.' (sudo skips /etc/sudoers.d files with a '.' or ending in '~'): letters,
    digits and '-' stay, every other character becomes '_' and its two hex digits ('.' is
    '_2e', '_' is '_5f'). Since '_' only ever starts an escape, the mapping is one-to-one:
    `a.b` is `a_2eb`, `a_b` is `a_5fb`."""
    return "".join(c if c in _SAFE_CHARS else f"_{ord(c):02x}" for c in name)


def schema_markdown() -> str:
    """Every key with its default, as the Markdown tables README.md carries."""
    out: list[str] = []
    for section in SECTIONS:
        out += ["", f"**[{section}]**", "", "| key | default | meaning |", "|---|---|---|"]
        for key in (k for k in SCHEMA if k.section == section):
            if key.default is None:
                default = "(required)"
            else:
                default = f"`{key.default}`" if key.default else "(empty)"
            out.append(f"| `{key.name}` | {default} | {key.doc} |")
    return "\n".join(out[1:]) + "\n"
