"""pppssh.config: parsing, defaults, and one-line errors `NAME:LINE: key: what`."""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path

import pytest

from pppssh.config import (
    PPPD_ALLOWED,
    SCHEMA,
    Compression,
    ConfigError,
    Proxyarp,
    SiteConfig,
    load,
    parse,
)
from pppssh.plan import (
    local_pppd_argv,
    local_routes,
    remote_pppd_argv,
    remote_routes,
    shell_join,
)

IP = ipaddress.ip_address
NET = ipaddress.ip_network

# Every key of SCHEMA, none at its default.
FULL = """\
# branch office B, reached through the HQ firewall's SSH door
[site]
name = branch-b
reconnect = no
reconnect_delay = 2.5
reconnect_delay_max = 30
reconnect_tries = 12
retry_start = yes
failback = 120

[remote]
host = gw.example.net
port = 2222
user = pppssh
# relative: next to this file
identity = keys/id_ed25519
known_hosts = /etc/pppssh/known_hosts
pkcs11_provider = /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
pkcs11_pin_file = keys/token.pin
sudo = /usr/bin/sudo -n
helper = yes
from = 203.0.113.0/24, !203.0.113.9 *.example.net
pppd = /usr/local/sbin/pppd
ip = /sbin/ip
connect_timeout = 7.5
keepalive_interval = 30
keepalive_count_max = 3
tcp_congestion = cubic
tcp_congestion_down = reno
tcp_notsent_lowat = 16384
bandwidth = 4.5
codel = no
pace = yes
delay_target = 8
delay_target_up = 20
window_target = 3
window_target_up = 6

[ppp]
local_address = 192.168.50.250
remote_address = 10.1.2.250
mtu = 1300
mru = 1350
mss_clamp = yes
qdisc = FQ_Codel
proxyarp = BOTH
compression = Deflate
ipv6 = No
local_pppd = /opt/ppp/sbin/pppd
local_options = debug kdebug 1
remote_options = novj lcp-restart 2
lcp_echo_interval = 5
lcp_echo_failure = 6
up_timeout = 45

[networks]
local = 10.1.0.0/16, 10.1.2.0/24 10.3.0.0/24
remote = 192.168.0.0/16,192.168.50.0/24
local_lan_gateways = 10.1.2.1, 10.1.0.1 10.3.0.1
remote_lan_gateways = 192.168.50.1
full_tunnel = yes

[hooks]
up = /usr/local/sbin/firewall-open "site $SITE" --quiet
down = /usr/local/sbin/firewall-close
up_failure = Continue
timeout = 12.5

[dns]
servers = 192.168.50.53, 9.9.9.9
domains = branch-b.example, ~.
"""

# Only what is required (plus name, tested separately). Line numbers matter below.
BASE = """\
[site]
name = site-b
[remote]
host = gw.example.net
user = pppssh
identity = id_ed25519
known_hosts = known_hosts
[ppp]
local_address = 10.99.0.1
remote_address = 10.99.0.2
[networks]
local = 10.1.0.0/24
remote = 10.2.0.0/24
"""

# Relative, so that messages read `site-b.conf:LINE: ...` whether the file name or the path
# as given is shown.
CONF = Path("site-b.conf")
ETC = Path("/etc/pppssh/site-b.conf")


def with_line(text: str, key: str, value: str) -> str:
    """Replace the `key = ...` line of text, keeping every line number."""
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
    assert len(hits) == 1, key
    lines[hits[0]] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def insert_after(text: str, line_number: int, new: str) -> str:
    """Insert `new` so that it becomes line line_number + 1."""
    lines = text.splitlines()
    lines.insert(line_number, new)
    return "\n".join(lines) + "\n"


def without(text: str, key: str) -> str:
    """Drop the `key = ...` line (later lines move up by one)."""
    lines = [line for line in text.splitlines() if line.split("=")[0].strip() != key]
    return "\n".join(lines) + "\n"


def error(text: str, path: Path = CONF) -> str:
    """The message parse() gives for text; it must be a ConfigError of one line."""
    with pytest.raises(ConfigError) as info:
        parse(text, path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- valid files


def test_full_file_every_key() -> None:
    reach = {
        "jump",
        "jump_identity",
        "proxy",
        "proxy_auth",
        "proxy_command",
        "agent",
        "certificate",
        "ssh_config",
    }  # exclusive of each other: tests/test_reach_config.py
    assert {(k.section, k.name) for k in SCHEMA if k.name not in reach} <= {
        (section, line.split("=")[0].strip()) for section, line in _sections(FULL)
    }, "FULL must set every key in SCHEMA"
    cfg = parse(FULL, ETC)
    assert isinstance(cfg, SiteConfig)
    assert cfg.path == ETC
    assert cfg.name == "branch-b"
    assert cfg.reconnect is False
    assert (cfg.reconnect_delay, cfg.reconnect_delay_max) == (2.5, 30.0)
    assert cfg.reconnect_tries == 12 and cfg.retry_start is True
    assert cfg.linkname == "pppssh-branch-b"
    assert cfg.host == "gw.example.net"
    assert cfg.port == 2222
    assert cfg.user == "pppssh"
    assert cfg.destination == "pppssh@gw.example.net:2222"
    assert cfg.identity == Path("/etc/pppssh/keys/id_ed25519")
    assert cfg.known_hosts == Path("/etc/pppssh/known_hosts")
    assert cfg.pkcs11_provider == "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
    assert cfg.pkcs11_pin_file == Path("/etc/pppssh/keys/token.pin")
    assert cfg.sudo == ("/usr/bin/sudo", "-n")
    assert cfg.helper is True
    assert cfg.key_from == ("203.0.113.0/24", "!203.0.113.9", "*.example.net")
    assert cfg.remote_pppd == "/usr/local/sbin/pppd"
    assert cfg.remote_ip == "/sbin/ip"
    assert cfg.remote_pppd_command() == ("/usr/bin/sudo", "-n", "/usr/local/sbin/pppd")
    assert cfg.remote_ip_command() == ("/usr/bin/sudo", "-n", "/sbin/ip")
    assert cfg.connect_timeout == 7.5
    assert (cfg.keepalive_interval, cfg.keepalive_count_max) == (30, 3)
    assert (cfg.tcp_congestion, cfg.tcp_notsent_lowat, cfg.bandwidth) == ("cubic", 16384, 4.5)
    assert cfg.tcp_congestion_down == "reno"
    assert (cfg.delay_target, cfg.delay_target_up) == (8, 20)
    assert (cfg.window_target, cfg.window_target_up) == (3, 6)
    assert cfg.pump_codel is False and cfg.pace is True
    assert cfg.qdisc == "fq_codel"
    assert cfg.local_address == IP("192.168.50.250")
    assert cfg.remote_address == IP("10.1.2.250")
    assert isinstance(cfg.local_address, ipaddress.IPv4Address)
    assert (cfg.mtu, cfg.mru) == (1300, 1350)
    assert cfg.proxyarp is Proxyarp.BOTH
    assert cfg.proxyarp.local and cfg.proxyarp.remote
    assert cfg.compression is Compression.DEFLATE
    assert cfg.local_pppd == "/opt/ppp/sbin/pppd"
    assert cfg.local_options == ("debug", "kdebug", "1")
    assert cfg.remote_options == ("novj", "lcp-restart", "2")
    assert (cfg.lcp_echo_interval, cfg.lcp_echo_failure) == (5, 6)
    assert cfg.up_timeout == 45.0
    # most specific first, then by address
    assert cfg.local_networks == (NET("10.1.2.0/24"), NET("10.3.0.0/24"), NET("10.1.0.0/16"))
    assert cfg.remote_networks == (NET("192.168.50.0/24"), NET("192.168.0.0/16"))
    assert all(isinstance(n, ipaddress.IPv4Network) for n in cfg.local_networks)
    assert isinstance(cfg.local_networks, tuple) and isinstance(cfg.sudo, tuple)
    assert cfg.local_lan_gateways == (IP("10.1.2.1"), IP("10.1.0.1"), IP("10.3.0.1"))
    assert cfg.remote_lan_gateways == (IP("192.168.50.1"),)
    assert cfg.up_command == ("/usr/local/sbin/firewall-open", "site $SITE", "--quiet")
    assert cfg.down_command == ("/usr/local/sbin/firewall-close",)
    assert cfg.full_tunnel is True
    assert cfg.ipv6 is False and cfg.local_networks6 == cfg.remote_networks6 == ()
    assert cfg.up_failure_aborts is False and cfg.hook_timeout == 12.5


def test_ipv6_networks_beside_ipv4_ones() -> None:
    text = with_line(
        insert_after(BASE, 10, "ipv6 = yes"),
        "remote",
        "10.2.0.0/24 2001:db8:b::/48, 2001:db8:b:1::/64",
    )
    cfg = parse(text.replace("[ppp]", "helper = no\n[ppp]"), CONF)  # no IPv6 with the helper
    assert cfg.ipv6 is True and cfg.remote_networks == (NET("10.2.0.0/24"),)
    assert cfg.remote_networks6 == (
        ipaddress.IPv6Network("2001:db8:b:1::/64"),
        ipaddress.IPv6Network("2001:db8:b::/48"),
    )
    overlap = with_line(text, "local", "2001:db8:b:1:1::/80")
    assert error(overlap).endswith(
        "remote: 2001:db8:b:1::/64 overlaps local network 2001:db8:b:1:1::/80"
    )


@pytest.mark.parametrize("line, message", [
    ("up = firewall-open", "hooks.conf:15: up: 'firewall-open' must be an absolute path to a program"),
    ("down = ./close", "hooks.conf:15: down: './close' must be an absolute path to a program"),
    ("up = /bin/sh -c 'unclosed", "hooks.conf:15: up: cannot split"),
    ("up_failure = ignore", "hooks.conf:15: up_failure: 'ignore' is not abort or continue"),
    ("timeout = 0", "hooks.conf:15: timeout: 0 is out of range 1..3600 seconds"),
])  # fmt: skip
def test_bad_hooks(line: str, message: str, tmp_path: Path) -> None:
    text = BASE + "[hooks]\n" + line + "\n"
    assert error(text, tmp_path / "hooks.conf").startswith(str(tmp_path / message))


def test_hook_programs_are_checked_like_the_site_file(tmp_path: Path) -> None:
    """Any site file must be root's now (hooks or not); the hook program too, at its key."""
    conf = _named_files(tmp_path / "hooks.conf", BASE + "[hooks]\nup = /bin/true\n")
    assert load(conf).up_command == ("/bin/true",)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "open-firewall"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    conf.write_text(BASE + f"[hooks]\nup = {program} --now\n")
    assert load(conf).up_command == (str(program), "--now")
    os.chown(bindir, 1000, 1000)
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert str(info.value) == (
        f"{conf}:15: up: directory {bindir} is owned by uid 1000; only root may own it "
        "(keep the file in a directory only root can write, such as /etc/pppssh)"
    )
    os.chown(bindir, 0, 0)
    conf.write_text(BASE + f"[hooks]\nup = /bin/true\ndown = {program}\n")
    program.chmod(0o775)
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert str(info.value) == (
        f"{conf}:16: down: down program {program} is writable by group or others (mode "
        f"0775); chmod go-w {program}"
    )


def _named_files(site: Path, text: str) -> Path:
    """Write a site file and the identity and known_hosts it names, as a gateway has them."""
    site.parent.mkdir(parents=True, exist_ok=True)
    site.write_text(text)
    cfg = parse(text, site)
    for path, mode in ((cfg.identity, 0o600), (cfg.known_hosts, 0o644)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
        path.chmod(mode)
    return site


def _sections(text: str) -> list[tuple[str, str]]:
    """(section, line) for every key line of text."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            out.append((section, line))
    return out


def test_full_file_via_load_resolves_relative_paths(tmp_path: Path) -> None:
    site = _named_files(
        tmp_path / "conf.d" / "hq.conf", with_line(BASE, "known_hosts", "../kh/known_hosts")
    )
    cfg = load(site)
    assert cfg.path == site
    assert cfg.identity == site.parent / "id_ed25519"
    assert cfg.identity.is_absolute()
    assert cfg.known_hosts == site.parent / "../kh/known_hosts"


def test_config_is_frozen() -> None:
    cfg = parse(BASE, CONF)
    with pytest.raises(AttributeError):
        cfg.port = 23  # type: ignore[misc]


def test_qdisc_allows_only_fq_codel_or_default() -> None:
    """Anything else is refused with the file, line and key (tc would take a full spec)."""
    text = BASE.replace("[ppp]\n", "[ppp]\nqdisc = netem delay 1s\n")
    with pytest.raises(ConfigError) as err:
        parse(text, CONF)
    assert "qdisc: 'netem delay 1s' is not one of: fq_codel, default" in str(err.value)
    assert str(err.value).startswith(f"{CONF}:")


def test_defaults() -> None:
    cfg = parse(BASE, ETC)
    assert cfg.reconnect is True
    assert (cfg.reconnect_delay, cfg.reconnect_delay_max) == (5.0, 60.0)
    assert cfg.reconnect_tries == 0 and cfg.retry_start is False
    assert cfg.port == 22
    assert cfg.sudo == ("sudo", "-n")
    assert cfg.remote_pppd == "/usr/sbin/pppd"
    assert cfg.remote_ip == "/usr/sbin/ip"
    assert cfg.connect_timeout == 20.0
    assert cfg.keepalive_interval == 10
    assert cfg.keepalive_count_max == 2
    assert cfg.mtu == 1400 and cfg.mru == 1400
    assert cfg.qdisc == "" and cfg.tcp_notsent_lowat == -1 and cfg.pump_codel  # -1: auto
    assert cfg.proxyarp is Proxyarp.NO
    assert not cfg.proxyarp.local and not cfg.proxyarp.remote
    assert cfg.local_pppd == "/usr/sbin/pppd"
    assert cfg.local_options == () and cfg.remote_options == ()
    assert cfg.lcp_echo_interval == 10 and cfg.lcp_echo_failure == 3
    assert cfg.up_timeout == 60.0
    assert cfg.local_lan_gateways == () and cfg.remote_lan_gateways == ()
    assert cfg.identity == Path("/etc/pppssh/id_ed25519")
    assert cfg.known_hosts == Path("/etc/pppssh/known_hosts")


def test_networks_may_be_empty() -> None:
    cfg = parse(with_line(with_line(BASE, "local", ""), "remote", ""), CONF)
    assert cfg.local_networks == () and cfg.remote_networks == ()


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    """BUG: the empty default of `name` is run through the site-name check and refused."""
    site = tmp_path / "site-b.conf"
    site.write_text(BASE.replace("[site]\nname = site-b\n", ""))
    cfg = load(site, files=False)
    assert cfg.name == "site-b"
    assert cfg.linkname == "pppssh-site-b"


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "# leading comment\n\n; another\n   # indented\n" + with_line(BASE, "user", "pppssh")
    assert parse(text, CONF).user == "pppssh"


@pytest.mark.parametrize(
    ("key", "value", "char"),
    [
        ("remote", "10.20.0.0/24 ; 172.16.5.0/24", ";"),
        ("remote", "10.20.0.0/24 # 172.16.5.0/24", "#"),
        ("remote", "10.20.0.0/24,\t;172.16.5.0/24", ";"),
        ("user", "pppssh   # the account", "#"),
        ("host", "; gw-b.example.net", ";"),
        ("known_hosts", "known_hosts ;comment", ";"),
    ],
)
def test_inline_comment_is_an_error_not_a_silent_cut(key: str, value: str, char: str) -> None:
    text = with_line(BASE, key, value)
    number = text.split("\n").index(f"{key} = {value}") + 1
    assert error(text) == (
        f"site-b.conf:{number}: {key}: '{char}' inside the value: comments go on a line of "
        "their own (a line starting with # or ;); quote it if it belongs to the value"
    )


def test_semicolon_and_hash_inside_quotes_or_words_are_text() -> None:
    text = BASE + "[hooks]\nup = /bin/sh -c 'logger a ; logger \"b # c\"' x;y\n"
    assert parse(text, CONF).up_command == ("/bin/sh", "-c", 'logger a ; logger "b # c"', "x;y")


def test_section_header_may_carry_a_trailing_comment() -> None:
    assert parse(BASE.replace("[site]", "[site]   ; the site", 1), CONF).name == "site-b"


def test_proxyarp_values_are_case_insensitive() -> None:
    text = insert_after(BASE, 8, "proxyarp = No")
    assert parse(text, CONF).proxyarp is Proxyarp.NO


def test_proxyarp_local_ok_when_peer_inside_local_lan() -> None:
    text = with_line(insert_after(BASE, 8, "proxyarp = local"), "remote_address", "10.1.0.200")
    cfg = parse(text, CONF)
    assert cfg.proxyarp is Proxyarp.LOCAL
    assert cfg.proxyarp.local and not cfg.proxyarp.remote


# ---------------------------------------------------------------------------- errors


def test_unknown_key_suggests_host() -> None:
    assert error(insert_after(BASE, 3, "hots = gw2")) == (
        "site-b.conf:4: hots: unknown key (did you mean 'host'?)"
    )


def test_unknown_key_suggests_in_networks() -> None:
    assert error(insert_after(BASE, 11, "rout = 10.3.0.0/24")) == (
        "site-b.conf:12: rout: unknown key (did you mean 'remote'?)"
    )


def test_unknown_key_without_suggestion() -> None:
    assert error(insert_after(BASE, 3, "frobnicate = 1")) == (
        "site-b.conf:4: frobnicate: unknown key"
    )


def test_unknown_section() -> None:
    assert error(BASE.replace("[networks]", "[netwroks]")) == (
        "site-b.conf:11: [netwroks]: unknown section (did you mean 'networks'?)"
    )


def test_repeated_section() -> None:
    assert error(BASE + "[ppp]\n") == "site-b.conf:14: [ppp]: section repeated (first at line 8)"


def test_key_outside_section() -> None:
    assert error("host = gw\n" + BASE) == "site-b.conf:1: host: key outside any [section]"


def test_unreadable_line() -> None:
    assert error(insert_after(BASE, 3, "just words")) == (
        "site-b.conf:4: cannot read line: 'just words'"
    )


def test_duplicate_key() -> None:
    assert error(insert_after(BASE, 4, "host = gw2.example.net")) == (
        "site-b.conf:5: host: set twice (first at line 4)"
    )


def test_missing_required_key_points_at_its_section() -> None:
    assert error(without(BASE, "user")) == (
        "site-b.conf:3: user: required key missing from [remote]"
    )


def test_missing_section_has_no_line() -> None:
    text = "\n".join(BASE.splitlines()[:7]) + "\n"  # no [ppp], no [networks]
    assert error(text) == "site-b.conf: local_address: required key missing from [ppp]"


def test_empty_required_value() -> None:
    assert error(with_line(BASE, "identity", "")) == "site-b.conf:6: identity: must not be empty"


@pytest.mark.parametrize("key", ["identity", "known_hosts"])
def test_home_of_an_unknown_user_is_a_one_line_error(key: str) -> None:
    """~user naming no account is the file's error, not a traceback from pathlib."""
    line = BASE.splitlines().index(next(x for x in BASE.splitlines() if x.startswith(key))) + 1
    assert error(with_line(BASE, key, "~nobody-pppssh$(reboot)/id")) == (
        f"site-b.conf:{line}: {key}: ~nobody-pppssh$(reboot): "
        "no home directory for that user on this machine"
    )


def test_home_of_a_known_user_is_expanded() -> None:
    cfg = parse(with_line(BASE, "identity", "~root/.ssh/id"), CONF)
    assert cfg.identity == Path(os.path.expanduser("~root")) / ".ssh/id"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("local_address", "10.99.0.300", "site-b.conf:9: local_address: '10.99.0.300' is not an IP address"),
        ("local_address", "gw", "site-b.conf:9: local_address: 'gw' is not an IP address"),
        ("remote_address", "fd00::2", "site-b.conf:10: remote_address: 'fd00::2' is IPv6; the PPP link carries IPv4 (IPCP)"),
        ("remote_address", "127.0.0.1", "site-b.conf:10: remote_address: '127.0.0.1' cannot be a PPP address"),
        ("remote_address", "0.0.0.0", "site-b.conf:10: remote_address: '0.0.0.0' cannot be a PPP address"),
        ("remote_address", "10.99.0.1", "site-b.conf:10: remote_address: must differ from local_address"),
        ("local", "10.1.0.1/24", "site-b.conf:12: local: '10.1.0.1/24' has host bits set; did you mean 10.1.0.0/24?"),
        ("remote", "10.2.3.4/16", "site-b.conf:13: remote: '10.2.3.4/16' has host bits set; did you mean 10.2.0.0/16?"),
        ("remote", "10.2.0.0", "site-b.conf:13: remote: '10.2.0.0' needs a prefix length, e.g. 10.2.0.0/32"),
        ("remote", "10.2.0.0/33", "site-b.conf:13: remote: '10.2.0.0/33' is not a network like 10.1.0.0/24"),
        ("remote", "fd00::/64", "site-b.conf:13: remote: 'fd00::/64' is IPv6; the link carries it only with ipv6 = yes in [ppp] (IPV6CP)"),
        ("remote", "0.0.0.0/0", "site-b.conf:13: remote: 0.0.0.0/0 would send everything through the link; not supported"),
        ("remote", "10.2.0.0/24, 10.2.0.0/24", "site-b.conf:13: remote: '10.2.0.0/24' is listed twice"),
        ("local", "10.0.0.0/8", "site-b.conf:13: remote: 10.2.0.0/24 overlaps local network 10.0.0.0/8"),
        ("remote", "10.1.0.128/25", "site-b.conf:13: remote: 10.1.0.128/25 overlaps local network 10.1.0.0/24"),
        ("user", "root", "site-b.conf:5: user: must be a restricted non-root account (sudo runs pppd)"),
        ("user", "Bob Smith", "site-b.conf:5: user: 'Bob Smith' is not a valid account name"),
        ("host", "-oProxyCommand=sh", "site-b.conf:4: host: '-oProxyCommand=sh' is not a host name or IP address"),
        ("host", "1.2.3.999", "site-b.conf:4: host: '1.2.3.999' is not a host name or IP address"),
        ("name", "a b", "site-b.conf:2: name: 'a b' is not a valid site name (letters, digits, '_', '.', '-'; at most 32)"),
        ("name", "../etc", "site-b.conf:2: name: '../etc' is not a valid site name (letters, digits, '_', '.', '-'; at most 32)"),
    ],
)  # fmt: skip
def test_bad_values(key: str, value: str, message: str) -> None:
    assert error(with_line(BASE, key, value)) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port = 70000", "site-b.conf:5: port: 70000 is out of range 1..65535"),
        ("port = 0", "site-b.conf:5: port: 0 is out of range 1..65535"),
        ("port = ssh", "site-b.conf:5: port: 'ssh' is not a whole number"),
        ("port = 22.0", "site-b.conf:5: port: '22.0' is not a whole number"),
        ("connect_timeout = soon", "site-b.conf:5: connect_timeout: 'soon' is not a number of seconds"),
        ("connect_timeout = 0.5", "site-b.conf:5: connect_timeout: 0.5 is out of range 1..600 seconds"),
        ("pppd = pppd", "site-b.conf:5: pppd: 'pppd' must be an absolute path to a program"),
        ("pppd = /usr/sbin/pppd;id", "site-b.conf:5: pppd: '/usr/sbin/pppd;id' must be an absolute path to a program"),
        ("ip = $(which ip)", "site-b.conf:5: ip: '$(which ip)' must be an absolute path to a program"),
        ("sudo = sudo -n $(id)", "site-b.conf:5: sudo: '$(id)' contains characters not allowed here"),
        ("sudo = sudo -n|sh", "site-b.conf:5: sudo: '-n|sh' contains characters not allowed here"),
        ("sudo = `id`", "site-b.conf:5: sudo: '`id`' contains characters not allowed here"),
        ("sudo = sudo -n 'a b'", "site-b.conf:5: sudo: 'a b' contains characters not allowed here"),
        ("sudo = sudo \"", "site-b.conf:5: sudo: cannot split 'sudo \"': No closing quotation"),
        ("sudo =", "site-b.conf:5: sudo: must not be empty: the remote account is not root"),
        ("helper = maybe", "site-b.conf:5: helper: 'maybe' is not yes or no"),
        ('from = 198.51.100.1"', "site-b.conf:5: from: '198.51.100.1\"' is not an address, network or host pattern for sshd's from="),
        ("from = a;b", "site-b.conf:5: from: 'a;b' is not an address, network or host pattern for sshd's from="),
        ("from = $(id)", "site-b.conf:5: from: '$(id)' is not an address, network or host pattern for sshd's from="),
        ("from = 10.0.0.0/33", "site-b.conf:5: from: '10.0.0.0/33' is not a network like 198.51.100.0/24"),
        ("from = 10.0.0.1/8", "site-b.conf:5: from: '10.0.0.1/8' is not a network like 198.51.100.0/24"),
        ("from = !", "site-b.conf:5: from: '!' is not an address, network or host pattern for sshd's from="),
        ('from = "x"', "site-b.conf:5: from: '\"x\"' is not an address, network or host pattern for sshd's from="),
    ],
)  # fmt: skip
def test_bad_remote_values(line: str, message: str) -> None:
    assert error(insert_after(BASE, 4, line)) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("local_options = connect /bin/sh", f"site-b.conf:9: local_options: pppd option 'connect' is not allowed here; allowed: {PPPD_ALLOWED}"),
        ("remote_options = plugin x.so", f"site-b.conf:9: remote_options: pppd option 'plugin' is not allowed here; allowed: {PPPD_ALLOWED}"),
        ("remote_options = debug pty /bin/sh", f"site-b.conf:9: remote_options: pppd option 'pty' is not allowed here; allowed: {PPPD_ALLOWED}"),
        ("local_options = ip-up-script /tmp/x", f"site-b.conf:9: local_options: pppd option 'ip-up-script' is not allowed here; allowed: {PPPD_ALLOWED}"),
        ("local_options = file /etc/shadow", f"site-b.conf:9: local_options: pppd option 'file' is not allowed here; allowed: {PPPD_ALLOWED}"),
        ("local_options = mtu 9000", "site-b.conf:9: local_options: pppd option 'mtu' is not allowed here: pppssh sets it from the key mtu"),
        ("remote_options = lock;rm -rf /", "site-b.conf:9: remote_options: 'lock;rm' contains characters not allowed in a pppd option"),
        ("remote_options = debug $(reboot)", "site-b.conf:9: remote_options: '$(reboot)' contains characters not allowed in a pppd option"),
        ("local_options = 'connect /bin/sh'", "site-b.conf:9: local_options: 'connect /bin/sh' contains characters not allowed in a pppd option"),
        ("local_options = debug>/tmp/x", "site-b.conf:9: local_options: 'debug>/tmp/x' contains characters not allowed in a pppd option"),
        ("mtu = 64", "site-b.conf:9: mtu: 64 is out of range 128..16384"),
        ("lcp_echo_failure = 0", "site-b.conf:9: lcp_echo_failure: 0 is out of range 1..100"),
        ("proxyarp = yes", "site-b.conf:9: proxyarp: 'yes' is not one of: no, local, remote, both"),
        ("proxyarp = remote", "site-b.conf:9: proxyarp: proxyarp on the remote gateway needs local_address 10.99.0.1 inside a remote network (10.2.0.0/24)"),
        ("proxyarp = local", "site-b.conf:9: proxyarp: proxyarp on the local gateway needs remote_address 10.99.0.2 inside a local network (10.1.0.0/24)"),
    ],
)  # fmt: skip
def test_bad_ppp_values(line: str, message: str) -> None:
    assert error(insert_after(BASE, 8, line)) == message


def test_proxyarp_remote_without_remote_networks() -> None:
    text = with_line(insert_after(BASE, 8, "proxyarp = remote"), "remote", "")
    assert error(text) == (
        "site-b.conf:9: proxyarp: proxyarp on the remote gateway needs local_address "
        "10.99.0.1 inside a remote network (none set)"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("remote_lan_gateways = 10.9.9.9", "site-b.conf:14: remote_lan_gateways: 10.9.9.9 is not inside any of 10.2.0.0/24"),
        ("local_lan_gateways = 10.1.0.1 10.1.0.2", "site-b.conf:14: local_lan_gateways: 10.1.0.2 and 10.1.0.1 are both in 10.1.0.0/24: one gateway per LAN"),
        ("local_lan_gateways = 10.1.0.1,10.1.0.1", "site-b.conf:14: local_lan_gateways: '10.1.0.1' is listed twice"),
        ("local_lan_gateways = 10.1.0.255", "site-b.conf:14: local_lan_gateways: 10.1.0.255 is not a host address of 10.1.0.0/24"),
        ("remote_lan_gateways = 10.2.0.0", "site-b.conf:14: remote_lan_gateways: 10.2.0.0 is not a host address of 10.2.0.0/24"),
        ("remote_lan_gateways = 10.2.0.1/24", "site-b.conf:14: remote_lan_gateways: '10.2.0.1/24' is not an IP address"),
    ],
)  # fmt: skip
def test_bad_lan_gateways(line: str, message: str) -> None:
    assert error(insert_after(BASE, 13, line)) == message


def test_error_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        parse(insert_after(BASE, 3, "hots = x"), CONF)
    assert (info.value.path, info.value.line, info.value.key) == ("site-b.conf", 4, "hots")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_not_utf8(tmp_path: Path) -> None:
    site = tmp_path / "latin.conf"
    site.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(site)
    assert str(info.value) == f"{site}:14: not UTF-8 text (byte 0xe9 at column 6)"


# ---------------------------------------------------------------------------- shell safety

SHELL_META = set("$`;|&<>\n'\"\\*?~(){}[] \t")

NASTY = [
    "$(reboot)",
    "`reboot`",
    "a;reboot",
    "a; reboot",
    "a|reboot",
    "a&&reboot",
    "a&",
    "a>/etc/passwd",
    "a</etc/shadow",
    "a\nreboot",
    "a\rreboot",
    "'a'",
    '"a b"',
    "a'b",
    'a"b',
    "$HOME",
    "${IFS}reboot",
    "a\\ b",
    "a b",
    "a\tb",
    "*",
    "~root",
    "-oProxyCommand=reboot",
    "--help",
    "a #b",
    "a\x00b",
    "a\u2028b",
    "é",
    "/usr/sbin/pppd $(reboot)",
    "/usr/sbin/pppd;reboot",
    "sudo -n ;reboot",
    "sudo -n 'a;b'",
    "debug 'connect reboot'",
    'debug "$(reboot)"',
    "10.1.0.0/24;reboot",
    "10.1.0.0/24 $(reboot)",
]

FREE_TEXT = [
    ("site", "name"),
    ("remote", "host"),
    ("remote", "user"),
    ("remote", "identity"),
    ("remote", "known_hosts"),
    ("remote", "sudo"),
    ("remote", "from"),
    ("remote", "pppd"),
    ("remote", "ip"),
    ("ppp", "local_pppd"),
    ("ppp", "local_options"),
    ("ppp", "remote_options"),
    ("ppp", "proxyarp"),
    ("networks", "local"),
    ("networks", "remote"),
    ("networks", "local_lan_gateways"),
    ("networks", "remote_lan_gateways"),
]

SECTION_LINE = {"site": 1, "remote": 3, "ppp": 8, "networks": 11}


def _set(section: str, key: str, value: str) -> str:
    """BASE with section.key set to value (replacing an existing line, or added)."""
    if any(line.split("=")[0].strip() == key for line in BASE.splitlines()):
        lines = BASE.splitlines()
        i = next(i for i, line in enumerate(lines) if line.split("=")[0].strip() == key)
        lines[i] = f"{key} = {value}"
        return "\n".join(lines) + "\n"
    return insert_after(BASE, SECTION_LINE[section], f"{key} = {value}")


def _all_argv(cfg: SiteConfig) -> list[list[str]]:
    """Every command the plan would run, locally or remotely."""
    argvs = [local_pppd_argv(cfg, 7), remote_pppd_argv(cfg)]
    for route in [*local_routes(cfg, "ppp0"), *remote_routes(cfg, "ppp0")]:
        argvs += [list(route.add.argv), list(route.delete.argv)]
    return argvs


@pytest.mark.parametrize(("section", "key"), FREE_TEXT)
def test_shell_metacharacters_never_reach_a_shell(section: str, key: str) -> None:
    for value in NASTY:
        try:
            cfg = parse(_set(section, key, value), CONF)
        except ConfigError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc)
            assert str(exc).startswith(f"{CONF}:")
            continue
        for argv in _all_argv(cfg):
            joined = shell_join(argv)
            assert shlex.split(joined) == argv, (key, value, joined)
            # Validation, not just quoting: no word of any command carries shell syntax.
            for word in argv:
                assert not SHELL_META & set(word), (key, value, word)


def test_semicolon_after_space_is_refused_not_a_command() -> None:
    with pytest.raises(ConfigError, match="remote_options: ';' inside the value"):
        parse(insert_after(BASE, 8, "remote_options = novj ;rm -rf /"), CONF)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("reconnect = maybe", "site-b.conf:2: reconnect: 'maybe' is not yes or no"),
        ("reconnect_delay = 0", "site-b.conf:2: reconnect_delay: 0 is out of range 0.1..3600 seconds"),
    ],
)  # fmt: skip
def test_bad_site_values(line: str, message: str) -> None:
    assert error(insert_after(BASE, 1, line)) == message


@pytest.mark.parametrize(("word", "value"), [("yes", True), ("On", True), ("0", False)])
def test_reconnect_yes_no(word: str, value: bool) -> None:
    assert parse(insert_after(BASE, 2, f"reconnect = {word}"), CONF).reconnect is value


def test_name_from_unusable_file_name(tmp_path: Path) -> None:
    site = tmp_path / "my site.conf"
    site.write_text(BASE.replace("[site]\nname = site-b\n", ""))
    with pytest.raises(ConfigError) as info:
        load(site)
    assert str(info.value).endswith(
        "my site.conf: name: file name gives no site name: 'my site' is not a valid site name "
        "(letters, digits, '_', '.', '-'; at most 32)"
    )
    assert info.value.line == 0


# ---------------------------------------------------------------------------- found by the corpus


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("host = 0x7f.1", "site-b.conf:4: host: '0x7f.1' is not a host name or IP address"),
        ("host = 10.0.0.010", "site-b.conf:4: host: '10.0.0.010' is not a host name or IP address"),
        ("host = ::", "site-b.conf:4: host: '::' is not an address an SSH server can have"),
        ("host = 224.0.0.1", "site-b.conf:4: host: '224.0.0.1' is not an address an SSH server can have"),
        ("host = fe80::1%eth0", "site-b.conf:4: host: 'fe80::1%eth0' is not a host name or IP address"),
        ("port = \uff12\uff12", "site-b.conf:5: port: '\uff12\uff12' is not a whole number"),
        ("connect_timeout = inf", "site-b.conf:5: connect_timeout: 'inf' is not a number of seconds"),
    ],
)  # fmt: skip
def test_hosts_and_numbers_that_only_look_right(line: str, message: str) -> None:
    key, _, value = line.partition(" = ")
    text = with_line(BASE, key, value) if key == "host" else insert_after(BASE, 4, line)
    assert error(text) == message


def test_netmask_instead_of_prefix_length() -> None:
    text = with_line(BASE, "local", "10.1.0.0/255.255.255.0")
    assert error(text) == (
        "site-b.conf:12: local: '10.1.0.0/255.255.255.0': write the prefix length, like 10.1.0.0/24"
    )


def test_defaultroute_is_pppssh_s_business() -> None:
    text = insert_after(BASE, 8, "local_options = defaultroute")
    assert error(text) == (
        "site-b.conf:9: local_options: pppd option 'defaultroute' is not allowed here; "
        f"allowed: {PPPD_ALLOWED}"
    )


def test_key_name_with_a_dash_gets_a_suggestion() -> None:
    text = insert_after(BASE, 8, "lcp-echo-interval = 5")
    assert error(text) == (
        "site-b.conf:9: 'lcp-echo-interval' is not a key name (did you mean 'lcp_echo_interval'?)"
    )


def test_invisible_characters_are_shown_escaped() -> None:
    message = error(with_line(BASE, "user", "pp\u202essh"))
    assert "\u202e" not in message and "\\u202e" in message


@pytest.mark.parametrize("attr", ["remote_address", "local_address"])
def test_ppp_address_equal_to_ssh_server_literal_is_refused(attr: str) -> None:
    text = with_line(with_line(BASE, "host", "10.99.0.9"), attr, "10.99.0.9")
    number = text.split("\n").index(f"{attr} = 10.99.0.9") + 1
    assert error(text) == (
        f"site-b.conf:{number}: {attr}: 10.99.0.9 is the SSH server (host): the link would "
        "carry its own SSH connection; use an address the server does not have"
    )


def test_ppp_address_next_to_ssh_server_is_fine() -> None:
    assert parse(with_line(BASE, "host", "10.99.0.3"), CONF).host == "10.99.0.3"
