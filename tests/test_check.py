"""`pppssh check`: the judging of facts, and the remote part against an in-process SSH server."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from pppssh import check
from pppssh.check import Check, addresses_of, clashes, kernel_ppp, parse_helper_check, routes_of
from pppssh.cli import main
from pppssh.remote_setup import sudo_commands, sudoers_rules

from .sshserver import SSHTestServer

NET_B = ipaddress.IPv4Network("10.2.0.0/24")

ROUTES = """\
default via 192.0.2.1 dev eth0
10.0.0.0/8 via 192.0.2.254 dev eth0
10.2.0.128/25 via 192.0.2.9 dev eth0 proto static
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
unreachable 10.2.0.7
"""
ADDRS = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever
3: lan0@if4    inet 10.2.0.1/24 brd 10.2.0.255 scope global lan0\\       valid_lft forever
5: ppp0    inet 192.168.77.1 peer 192.168.77.2/32 scope global ppp0\\       valid_lft forever
"""


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async test body."""
    asyncio.run(coro())


def test_check_line_shows_the_fix_only_when_failing() -> None:
    assert Check("a", True, "fine", "never shown").line() == "\u2713 a: fine"
    assert Check("b", False, "broken", "do x").line() == "\u2717 b: broken; fix: do x"
    assert check.render([Check("a", True), Check("b", False)]) == "\u2713 a\n\u2717 b\n"


def test_routes_and_addresses_are_parsed() -> None:
    routes = routes_of(ROUTES)
    assert [str(net) for net, _ in routes] == [
        "10.0.0.0/8", "10.2.0.128/25", "192.0.2.0/24", "10.2.0.7/32",
    ]  # fmt: skip
    assert addresses_of(ADDRS) == [
        ("lo", ipaddress.IPv4Network("127.0.0.0/8")),
        ("eth0", ipaddress.IPv4Network("192.0.2.0/24")),
        ("lan0", ipaddress.IPv4Network("10.2.0.0/24")),
        ("ppp0", ipaddress.IPv4Network("192.168.77.1/32")),
    ]


def test_clashes_name_interfaces_and_narrower_routes_not_broader_ones() -> None:
    found = clashes([NET_B], routes_of(ROUTES), addresses_of(ADDRS))
    assert found == [
        "10.2.0.0/24 overlaps 10.2.0.0/24 on lan0",
        "10.2.0.0/24: a route exists already: 10.2.0.128/25 via 192.0.2.9 dev eth0 proto static",
        "10.2.0.0/24: a route exists already: unreachable 10.2.0.7",
    ]
    assert (
        clashes([ipaddress.IPv4Network("10.9.0.0/16")], routes_of(ROUTES), addresses_of(ADDRS))
        == []
    )


def test_the_sites_own_running_link_is_not_a_clash() -> None:
    routes = routes_of("10.2.0.0/24 via 192.168.77.2 dev ppp3\n")
    assert clashes([NET_B], routes, [], own_interface="ppp3") == []
    assert clashes([NET_B], routes, [], own_interface="ppp0") != []
    assert clashes([NET_B], routes, [], own_interface=None) != []


def test_kernel_ppp(tmp_path: Path) -> None:
    dev, sysmod, mods = tmp_path / "ppp", tmp_path / "module", tmp_path / "lib"
    sysmod.mkdir()
    mods.mkdir()
    missing = kernel_ppp(dev, sysmod, mods)
    assert not missing.ok and "modprobe ppp_generic" in missing.line()
    (mods / "kernel" / "drivers" / "net" / "ppp").mkdir(parents=True)
    (mods / "kernel" / "drivers" / "net" / "ppp" / "ppp_generic.ko.xz").write_bytes(b"")
    assert kernel_ppp(dev, sysmod, mods).ok
    (sysmod / "ppp_generic").mkdir()
    assert "loaded" in kernel_ppp(dev, sysmod, tmp_path / "none").detail
    dev.touch()
    assert kernel_ppp(dev, tmp_path / "none", tmp_path / "none").ok


def test_forwarding() -> None:
    assert check.forwarding("here", "1\n").ok
    off = check.forwarding("here", "0\n")
    assert not off.ok and "sysctl -w net.ipv4.ip_forward=1 here" in off.line()


def test_parse_helper_check() -> None:
    facts = parse_helper_check(
        "pppd present /usr/sbin/pppd\nsudo allowed /usr/sbin/pppd call pppssh-x\n"
        "sudo refused /usr/sbin/ip route add 10.1.0.0/24 via 192.168.77.1\n"
        "ip_forward 1\nnetwork 10.1.0.0/24 free\nnetwork 10.3.0.0/16 taken\n"
    )
    assert facts["pppd"] == ["present /usr/sbin/pppd"]
    assert facts["sudo"][1].startswith("refused ")
    assert facts["network"] == ["10.1.0.0/24 free", "10.3.0.0/16 taken"]


def test_bad_site_file_is_one_failed_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "x.conf"
    conf.write_text("[remote]\nhots = a\n")
    assert main(["check", str(conf)]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out == f"\u2717 site file valid: {conf}:2: hots: unknown key (did you mean 'host'?)\n"


def _answers(table: dict[str, tuple[int, str]]) -> Callable[..., Coroutine[Any, Any, None]]:
    """A server handler that answers commands by their first words, else exit 127."""

    async def handler(process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        for prefix, (status, out) in table.items():
            if command.startswith(prefix):
                process.stdout.write(out.encode())
                process.exit(status)
                return
        process.stderr.write(f"sh: {command}: not found\n".encode())
        process.exit(127)

    return handler


PLAIN_OK = {
    "test -f /usr/sbin/pppd": (0, ""),
    "test -x /etc/ppp/ip-up.d/pppssh-lab": (0, ""),
    "sudo -n -l /usr/sbin/pppd call pppssh-lab": (0, "/usr/sbin/pppd call pppssh-lab\n"),
    "sudo -n -l /usr/bin/pkill ": (0, "/usr/bin/pkill\n"),
    "sudo -n -l /usr/sbin/ip route ": (0, "/usr/sbin/ip route\n"),
    "sudo -n -l /usr/local/libexec/pppssh-congestion bbr": (0, "/usr/local/libexec/pp\n"),
    "cat /proc/sys/net/ipv4/ip_forward": (0, "1\n"),
    "cat /proc/sys/net/ipv4/conf/all/rp_filter": (0, "0\n"),
    "/usr/sbin/ip -4 route show": (0, "default via 192.0.2.1 dev eth0\n"),
    "/usr/sbin/ip -o -4 addr show": (0, "2: lan0    inet 10.2.0.1/24 scope global lan0\n"),
}


def test_remote_checks_all_pass_and_run_nothing_privileged(tmp_path: Path) -> None:
    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(PLAIN_OK)) as srv:
            checks = await check._remote_checks(srv.cfg())
            assert [c.what for c in checks if not c.ok] == []
            assert [c.what for c in checks] == [
                "SSH reachable", "host key known", "key accepted", "remote pppd",
                "remote sudo allows pppd", "remote sudo allows the routes",
                "remote sudo allows the way down's congestion control", "remote link filter",
                "IP forwarding on the remote gateway", "reverse-path filter on the remote gateway",
                "networks free on the remote gateway",
            ]  # fmt: skip
            commands = [s.command or "" for s in srv.rec.sessions]
            # sudo only ever asked (-l), never told to run anything, and exactly the rules'
            asked = [c.removeprefix("sudo -n -l ") for c in commands if c.startswith("sudo")]
            assert all(c.startswith("sudo -n -l ") for c in commands if c.startswith("sudo"))
            assert asked == [" ".join(argv) for argv in sudo_commands(srv.cfg())]
            assert "sudo -n -l /usr/sbin/ip route add 10.1.0.0/24 via 10.99.0.1" in commands
            assert all(s.term_type is None for s in srv.rec.sessions)

    run(main_)


def test_remote_checks_report_each_failure(tmp_path: Path) -> None:
    table = dict(PLAIN_OK)
    table["test -f /usr/sbin/pppd"] = (1, "")
    table["test -x /etc/ppp/ip-up.d/pppssh-lab"] = (1, "")
    table["sudo -n -l /usr/sbin/pppd call pppssh-lab"] = (1, "")
    table["cat /proc/sys/net/ipv4/ip_forward"] = (0, "0\n")
    table["cat /proc/sys/net/ipv4/conf/all/rp_filter"] = (0, "2\n")
    table["/usr/sbin/ip -4 route show"] = (0, "10.1.0.0/24 dev lan1 scope link\n")

    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(table)) as srv:
            cfg = srv.cfg()
            checks = {c.what: c for c in await check._remote_checks(cfg)}
            failed = sorted(w for w, c in checks.items() if not c.ok)
            assert failed == [
                "IP forwarding on the remote gateway", "networks free on the remote gateway",
                "remote link filter", "remote pppd", "remote sudo allows pppd",
                "reverse-path filter on the remote gateway",
            ]  # fmt: skip
            # the fix is the exact rule remote-setup writes, never more
            fix = checks["remote sudo allows pppd"].fix
            assert f"{cfg.user} ALL=(root) NOPASSWD: /usr/sbin/pppd call pppssh-lab" in fix
            assert f"pppssh remote-setup {cfg.path}" in fix
            assert "10.1.0.0/24 dev lan1" in checks["networks free on the remote gateway"].detail
            assert "rp_filter=0" in checks["reverse-path filter on the remote gateway"].fix

    run(main_)


def test_no_fix_suggests_more_than_pppssh_runs(tmp_path: Path) -> None:
    """Every sudo rule check prints comes from remote_setup.sudoers_rules: no `*`, no bare
    pppd, no route rule for anything but a configured network via the peer."""
    table = {k: v for k, v in PLAIN_OK.items() if not k.startswith("sudo")}

    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(table)) as srv:
            cfg = srv.cfg()
            checks = {c.what: c for c in await check._remote_checks(cfg)}
            fixes = (
                checks["remote sudo allows pppd"].fix
                + checks["remote sudo allows the routes"].fix
                + checks["remote sudo allows the way down's congestion control"].fix
            )
            assert "*" not in fixes and "NOPASSWD: /usr/sbin/pppd," not in fixes
            for rule in sudoers_rules(cfg):
                assert rule in fixes
            assert fixes.count("NOPASSWD:") == len(sudoers_rules(cfg))

    run(main_)


def test_remote_text_is_made_printable(tmp_path: Path) -> None:
    table = dict(PLAIN_OK)
    table["sudo -n -l /usr/sbin/pppd call pppssh-lab"] = (1, "")
    table["/usr/sbin/ip -4 route show"] = (0, "10.1.0.0/24 dev \x1b]0;pwned\x07lan1 scope link\n")

    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(table)) as srv:
            out = check.render(await check._remote_checks(srv.cfg()))
            assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned" in out

    run(main_)


def test_unknown_host_key_stops_before_login(tmp_path: Path) -> None:
    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(PLAIN_OK)) as srv:
            srv.known_hosts.write_text("")
            checks = await check._remote_checks(srv.cfg())
            assert [(c.what, c.ok) for c in checks] == [
                ("SSH reachable", True), ("host key known", False),
            ]  # fmt: skip
            assert srv.host_key_fingerprint in checks[1].detail
            assert srv.rec.sessions == []

    run(main_)


def test_refused_key(tmp_path: Path) -> None:
    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(PLAIN_OK)) as srv:
            checks = await check._remote_checks(srv.cfg(identity=srv.other_identity.name))
            assert [(c.what, c.ok) for c in checks][-2:] == [
                ("host key known", True), ("key accepted", False),
            ]  # fmt: skip
            assert "authorized_keys" in checks[-1].fix

    run(main_)


def test_helper_check_request(tmp_path: Path) -> None:
    answer = (
        "pppd present /usr/sbin/pppd\n"
        "sudo allowed /usr/sbin/pppd call pppssh-lab\n"
        "sudo allowed /usr/bin/pkill -TERM -x -F /run/ppp-pppssh-lab-10.99.0.1.pid pppd\n"
        "sudo allowed /usr/bin/pkill -KILL -x -F /run/ppp-pppssh-lab-10.99.0.1.pid pppd\n"
        "sudo refused /usr/sbin/ip route add 10.1.0.0/24 via 10.99.0.1\n"
        "sudo allowed /usr/sbin/ip route del 10.1.0.0/24 via 10.99.0.1\n"
        "filter present\n"
        "ip_forward 1\n"
        "rp_filter_all 2\n"
        "network 10.1.0.0/24 taken\n"
    )

    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers({"check": (0, answer)})) as srv:
            checks = {c.what: c for c in await check._remote_checks(srv.cfg(helper="yes"))}
            assert [s.command for s in srv.rec.sessions] == ["check"]
            assert checks["remote sudo allows pppd"].ok
            bad = checks["remote sudo allows the routes"]
            assert not bad.ok and "route add 10.1.0.0/24" in bad.detail
            assert "route del" not in bad.detail
            assert checks["remote pppd"].ok and checks["remote link filter"].ok
            assert not checks["networks free on the remote gateway"].ok
            assert (
                "10.1.0.0/24 is taken there" in checks["networks free on the remote gateway"].detail
            )
            assert not checks["reverse-path filter on the remote gateway"].ok

    run(main_)
