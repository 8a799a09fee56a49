"""The keys that say how the gateway is reached: jump, proxy, agent, certificate, ssh_config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pppssh import config, ssh, ssh_config, trust
from pppssh.config import NO_IDENTITY, ConfigError, Hop, Proxy, parse

CONF = Path("/etc/pppssh/site-r.conf")

BASE = """\
[site]
name = site-r
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
REMOTE_LINE = 3  # `[remote]`: new keys go right after it, as line 4


def site(*lines: str, base: str = BASE) -> str:
    """BASE with lines added at the top of [remote] (the first of them is line 4)."""
    head, _, tail = base.partition("[remote]\n")
    return head + "[remote]\n" + "".join(line + "\n" for line in lines) + tail


def error(text: str) -> str:
    """The one-line ConfigError parse() gives for text."""
    with pytest.raises(ConfigError) as info:
        parse(text, CONF)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- jump


def test_jump_list_in_order_with_default_user_and_port() -> None:
    cfg = parse(site("jump = ops@bastion.example.net:2222, 192.0.2.7 [2001:db8::1]:22"), CONF)
    assert cfg.jump == (
        Hop("ops", "bastion.example.net", 2222),
        Hop("pppssh", "192.0.2.7", 22),
        Hop("pppssh", "2001:db8::1", 22),
    )
    assert ssh.first_hop(cfg) == ("bastion.example.net", 2222)
    assert str(cfg.jump[2]) == "pppssh@[2001:db8::1]:22"


def test_first_hop_without_jump_or_proxy_is_the_gateway() -> None:
    assert ssh.first_hop(parse(BASE, CONF)) == ("gw.example.net", 22)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("root@bastion", "log in to a jump host as a restricted account, not root"),
        ("Ops@bastion", "is not a valid account name"),
        ("@bastion", "the account name before @ is empty"),
        ("bastion:0", "out of range 1..65535"),
        ("bastion:ssh", "not a jump host like host or host:port"),
        ("ssh://bastion", "write a jump host as [user@]host[:port]"),
        ("bastion;reboot", "not a host name or IP address"),
        ("-oProxyCommand=sh", "not a host name or IP address"),
        ("[bastion]:22", "only an IPv6 address goes in [brackets]"),
        ("b%h", "write a jump host as [user@]host[:port]"),
        (" ".join(f"h{i}.example" for i in range(9)), "more than 8 jump hosts"),
    ],
)
def test_bad_jump_refused_with_file_line_key(value: str, message: str) -> None:
    got = error(site(f"jump = {value}"))
    assert got.startswith(f"{CONF}:4: jump: ")
    assert message in got


def test_jump_identity_needs_a_jump_and_is_relative_to_the_site_file() -> None:
    assert error(site("jump_identity = id_jump")) == (
        f"{CONF}:4: jump_identity: set without any jump host"
    )
    cfg = parse(site("jump = b.example", "jump_identity = keys/id_jump"), CONF)
    assert cfg.jump_identity == Path("/etc/pppssh/keys/id_jump")


# ---------------------------------------------------------------------------- proxies


def test_proxies_parse() -> None:
    cfg = parse(site("proxy = http://proxy.example:3128", "proxy_auth = proxy.auth"), CONF)
    assert cfg.proxy == Proxy("http", "proxy.example", 3128)
    assert cfg.proxy_auth == Path("/etc/pppssh/proxy.auth")
    assert ssh.first_hop(cfg) == ("proxy.example", 3128)
    cfg = parse(site("proxy = SOCKS5://[2001:db8::5]:1080"), CONF)
    assert cfg.proxy == Proxy("socks5", "2001:db8::5", 1080)
    cfg = parse(site("proxy_command = /usr/bin/nc -X connect -x px:3128 %h %p"), CONF)
    assert cfg.proxy_command == ("/usr/bin/nc", "-X", "connect", "-x", "px:3128", "%h", "%p")


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        (["proxy = http://u:secret@px:3128"], "proxy", "no account or password in the proxy"),
        (["proxy = ftp://px:21"], "proxy", "is not http://host:port or socks5://host:port"),
        (["proxy = http://px"], "proxy", "needs its port, like http://px:3128"),
        (["proxy = socks4://px:1080"], "proxy", "is not http://host:port"),
        (["proxy = http://px:3128/path"], "proxy", "not a proxy address like host"),
        (["proxy_command = nc %h %p"], "proxy_command", "must be an absolute path"),
        (["proxy_command = /usr/bin/nc %r@%h"], "proxy_command", "not %r"),
        (["proxy_command = /usr/bin/nc %"], "proxy_command", "not %"),
        (["proxy = http://px:1", "proxy_command = /usr/bin/nc %h %p"], "proxy_command",
         "set proxy or proxy_command, not both"),
        (["proxy = socks5://px:1080", "proxy_auth = pa"], "proxy_auth",
         "only an http:// proxy takes basic authentication"),
        (["proxy_auth = pa"], "proxy_auth", "only an http:// proxy"),
    ],
)  # fmt: skip
def test_bad_proxy_refused(lines: list[str], key: str, message: str) -> None:
    got = error(site(*lines))
    assert f": {key}: " in got
    assert message in got


def test_full_tunnel_cannot_pin_a_proxy_command() -> None:
    text = site("proxy_command = /usr/bin/nc %h %p") + "full_tunnel = yes\n"
    assert "full_tunnel: cannot pin the route to the SSH server" in error(text)


# ---------------------------------------------------------------------------- keys


def test_agent_and_certificate_parse() -> None:
    cfg = parse(site("agent = env", "certificate = id_ed25519-cert.pub"), CONF)
    assert cfg.agent == "env"
    assert cfg.certificate == Path("/etc/pppssh/id_ed25519-cert.pub")
    cfg = parse(site("agent = /run/pppssh/agent.sock"), CONF)
    assert cfg.agent == "/run/pppssh/agent.sock"


@pytest.mark.parametrize("value", ["agent.sock", "$SSH_AUTH_SOCK", "/tmp/a b", "ENV"])
def test_bad_agent_refused(value: str) -> None:
    assert "agent: " in error(site(f"agent = {value}"))


def test_identity_is_optional_with_an_agent_only() -> None:
    without = BASE.replace("identity = id_ed25519\n", "")
    assert error(without) == f"{CONF}:3: identity: required key missing from [remote]"
    cfg = parse(site("agent = /run/a.sock", base=without), CONF)
    assert cfg.identity == NO_IDENTITY


# ---------------------------------------------------------------------------- ssh_config


def test_ssh_config_values() -> None:
    assert parse(BASE, CONF).ssh_config is None
    cfg = parse(site("ssh_config = yes"), CONF)
    assert cfg.ssh_config == Path(os.path.expanduser("~/.ssh/config"))
    assert parse(site("ssh_config = /etc/pppssh/ssh_config"), CONF).ssh_config == Path(
        "/etc/pppssh/ssh_config"
    )
    assert "ssh_config: " in error(site("ssh_config = config"))


SSH_CONFIG = """\
# only six keywords are read
Host *.internal !bad.internal
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    HostName 10.20.30.40
    ProxyCommand /bin/sh -c 'evil'
Host gw.internal
    HostName 10.9.9.9
    Port 2200
    User ops
    IdentityFile ~/.ssh/id_gw
    CertificateFile /etc/pppssh/id_gw-cert.pub
    ProxyJump jumper@bastion.example:2222,second.example
Match all
    Port 9999
Host *
    Port 2201
"""


def test_lookup_first_match_wins_and_negation() -> None:
    found = ssh_config.lookup(SSH_CONFIG, "gw.internal")
    assert {k: v for k, (v, _) in found.items()} == {
        "hostname": "10.20.30.40",  # from the first matching Host, as ssh
        "port": "2200",
        "user": "ops",
        "identityfile": "~/.ssh/id_gw",
        "certificatefile": "/etc/pppssh/id_gw-cert.pub",
        "proxyjump": "jumper@bastion.example:2222,second.example",
    }
    assert found["port"][1] == 9
    bad = ssh_config.lookup(SSH_CONFIG, "bad.internal")
    assert {k: v for k, (v, _) in bad.items()} == {"port": "2201"}  # Match is skipped


@pytest.fixture
def etc(tmp_path: Path) -> Iterator[Path]:
    """A private folder trust accepts as the top (tmp_path lies under /tmp)."""
    top, trust.TOP = trust.TOP, str(tmp_path)
    try:
        yield tmp_path
    finally:
        trust.TOP = top


def test_apply_site_file_wins(etc: Path) -> None:
    (etc / "ssh_config").write_text(SSH_CONFIG.replace("gw.internal\n", "gw.example.net\n"))
    cfg = parse(site(f"ssh_config = {etc / 'ssh_config'}", "port = 22"), etc / "s.conf")
    out = ssh_config.apply(cfg)
    assert out.host == "10.9.9.9"  # HostName of the first matching entry for gw.example.net
    assert out.port == 22  # set in the site file: it wins
    assert out.user == "pppssh"
    assert out.identity == etc / "id_ed25519"
    assert out.certificate == Path("/etc/pppssh/id_gw-cert.pub")
    assert out.jump == (Hop("jumper", "bastion.example", 2222), Hop("pppssh", "second.example"))


def test_apply_fills_user_and_identity(etc: Path) -> None:
    (etc / "ssh_config").write_text(SSH_CONFIG.replace("gw.internal\n", "gw.example.net\n"))
    bare = BASE.replace("user = pppssh\n", "").replace("identity = id_ed25519\n", "")
    cfg = parse(site(f"ssh_config = {etc / 'ssh_config'}", base=bare), etc / "s.conf")
    out = ssh_config.apply(cfg)
    assert out.user == "ops"
    assert out.identity == Path(os.path.expanduser("~/.ssh/id_gw"))
    assert out.port == 2200


def test_apply_refusals(etc: Path) -> None:
    path = etc / "ssh_config"
    path.write_text("Host gw.example.net\n  User root\n")
    bare = BASE.replace("user = pppssh\n", "")
    cfg = parse(site(f"ssh_config = {path}", base=bare), etc / "s.conf")
    with pytest.raises(ConfigError, match=r":2: user: must be a restricted non-root"):
        ssh_config.apply(cfg)
    path.write_text("Host gw.example.net\n  Port %p\n")
    cfg = parse(site(f"ssh_config = {path}"), etc / "s.conf")
    with pytest.raises(ConfigError, match=r":2: port: % tokens are not supported"):
        ssh_config.apply(cfg)
    path.write_text("Host *\n  HostName 10.0.0.1\n")
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"s.conf:4: ssh_config: .* writable by group or others"):
        ssh_config.apply(cfg)
    path.unlink()
    with pytest.raises(ConfigError, match=r"ssh_config: .* does not exist"):
        ssh_config.apply(cfg)


def test_load_applies_ssh_config(etc: Path) -> None:
    (etc / "ssh_config").write_text("Host gw.example.net\n  HostName 192.0.2.44\n")
    (etc / "s.conf").write_text(site(f"ssh_config = {etc / 'ssh_config'}"))
    assert config.load(etc / "s.conf", files=False).host == "192.0.2.44"


def test_check_files_covers_the_new_files(etc: Path) -> None:
    for name in ("id_ed25519", "known_hosts", "pa", "cert"):
        (etc / name).write_text("x")
        (etc / name).chmod(0o600)
    text = site("proxy = http://px:3128", "proxy_auth = pa", "certificate = cert")
    cfg = parse(text, etc / "s.conf")
    (etc / "pa").chmod(0o644)
    with pytest.raises(ConfigError, match=r":5: proxy_auth: .* readable by group or others"):
        config.check_files(cfg, missing_ok=True)
    (etc / "pa").chmod(0o600)
    (etc / "cert").chmod(0o664)
    with pytest.raises(ConfigError, match=r":6: certificate: .* writable by group or others"):
        config.check_files(cfg, missing_ok=True)


def test_routes_print_pins_the_first_hop() -> None:
    from pppssh.workstations import gateway_commands

    text = site("jump = 192.0.2.7, 192.0.2.8") + "full_tunnel = yes\n"
    out = gateway_commands(parse(text, CONF))
    assert "ip route add 192.0.2.7/32 ...  # the SSH server" in out
    assert "gw.example.net/32" not in out
    out = gateway_commands(parse(site("proxy = socks5://192.0.2.9:1080") + "full_tunnel = yes\n",
                                 CONF))  # fmt: skip
    assert "ip route add 192.0.2.9/32 ..." in out
