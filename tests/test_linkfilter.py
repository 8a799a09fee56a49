"""pppssh.linkfilter: the anti-spoofing commands of a link end, golden, with their undo."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from pathlib import Path

import pytest

from pppssh.config import SiteConfig, parse
from pppssh.errors import TunnelError
from pppssh.lifecycle import Attempt
from pppssh.linkfilter import (
    PRIORITY,
    effective_rp_filter,
    link_filter,
    local_filter,
    loose_warning,
    teardown,
)
from pppssh.localppp import LocalPppd
from pppssh.plan import Command
from pppssh.ssh import RemoteFailed
from tests.fakes import Recorder, World, fake_ports


def site(
    ppp: str = "",
    networks: str = "local = 10.1.0.0/24\nremote = 10.2.0.0/24\n",
    remote: str = "",
) -> SiteConfig:
    """A typical site file, with extra [remote] and [ppp] lines and its own [networks]."""
    text = (
        "[site]\nname = site-b\n"
        "[remote]\nhost = gw.example.net\nuser = pppssh\n"
        "identity = id_ed25519\nknown_hosts = known_hosts\n"
        f"{remote}"
        "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
        f"{ppp}"
        f"[networks]\n{networks}"
    )
    return parse(text, Path("/etc/pppssh/site-b.conf"))


def shown(cfg: SiteConfig, ifname: str = "ppp0") -> list[str]:
    """The commands of the local filter as echoed."""
    return [step.apply.shown for step in local_filter(cfg, ifname)]


def test_typical_site() -> None:
    assert shown(site(), "ppp3") == [
        "sysctl -q -w net.ipv4.conf.ppp3.rp_filter=1",
        "ip -4 rule add iif ppp3 to 10.1.0.0/24 priority 5000 lookup main",
        "ip -4 rule add iif ppp3 priority 5001 prohibit",
    ]


def test_undo_is_the_same_rule_deleted_in_reverse_order() -> None:
    steps = local_filter(site(networks="local = 10.1.0.0/24, 10.3.0.0/16\n"), "ppp0")
    assert [c.shown for c in teardown(steps)] == [
        "ip -4 rule del iif ppp0 priority 5001 prohibit",
        "ip -4 rule del iif ppp0 to 10.3.0.0/16 priority 5000 lookup main",
        "ip -4 rule del iif ppp0 to 10.1.0.0/24 priority 5000 lookup main",
    ]
    for step in steps[1:]:
        assert step.undo is not None
        assert step.undo.argv == tuple("del" if w == "add" else w for w in step.apply.argv)
    assert steps[0].undo is None, "rp_filter goes with the interface"


def test_allow_rules_come_before_the_prohibit_rule() -> None:
    steps = local_filter(site(networks="local = 10.1.0.0/24, 10.3.0.0/16\n"), "ppp0")
    rules = [s.apply.argv for s in steps if "rule" in s.apply.argv]
    priorities = [int(argv[argv.index("priority") + 1]) for argv in rules]
    assert priorities == [PRIORITY, PRIORITY, PRIORITY + 1]
    assert rules[-1][-1] == "prohibit" and all(r[-2:] == ("lookup", "main") for r in rules[:-1])


def test_no_local_networks_forwards_nothing() -> None:
    assert shown(site(networks="remote = 10.2.0.0/24\n")) == [
        "sysctl -q -w net.ipv4.conf.ppp0.rp_filter=1",
        "ip -4 rule add iif ppp0 priority 5001 prohibit",
    ]


def test_full_tunnel_forwards_only_to_local_networks() -> None:
    """Replies come from anywhere (rp_filter lets them in through the halves routed via the
    link), but the link may still only reach this gateway and its own networks."""
    cfg = site(networks="local = 10.1.0.0/24\nfull_tunnel = yes\n")
    assert cfg.full_tunnel
    assert shown(cfg) == [
        "sysctl -q -w net.ipv4.conf.ppp0.rp_filter=1",
        "ip -4 rule add iif ppp0 to 10.1.0.0/24 priority 5000 lookup main",
        "ip -4 rule add iif ppp0 priority 5001 prohibit",
    ]
    laptop = site(networks="full_tunnel = yes\n")
    assert shown(laptop)[1:] == ["ip -4 rule add iif ppp0 priority 5001 prohibit"]


def test_ipv6_rules_name_the_sources() -> None:
    cfg = site(
        remote="helper = no\n",  # IPv6 is not available through the helper
        ppp="ipv6 = yes\n",
        networks="local = 10.1.0.0/24, 2001:db8:a::/64\nremote = 10.2.0.0/24, 2001:db8:b::/64\n",
    )
    assert shown(cfg) == [
        "sysctl -q -w net.ipv4.conf.ppp0.rp_filter=1",
        "ip -4 rule add iif ppp0 to 10.1.0.0/24 priority 5000 lookup main",
        "ip -4 rule add iif ppp0 priority 5001 prohibit",
        "ip -6 rule add iif ppp0 from 2001:db8:b::/64 to 2001:db8:a::/64 priority 5000 lookup main",
        "ip -6 rule add iif ppp0 priority 5001 prohibit",
    ]
    assert [c.shown for c in teardown(local_filter(cfg, "ppp0"))][:2] == [
        "ip -6 rule del iif ppp0 priority 5001 prohibit",
        "ip -6 rule del iif ppp0 from 2001:db8:b::/64 to 2001:db8:a::/64 priority 5000 lookup main",
    ]


def test_no_ipv6_rules_without_ipv6() -> None:
    assert not [s for s in local_filter(site(), "ppp0") if "-6" in s.apply.argv]


def test_remote_side_from_the_same_functions() -> None:
    """The remote gateway's filter: its own networks, its interface, its programs' paths."""
    steps = link_filter(
        "ppp1",
        [ipaddress.IPv4Network("10.2.0.0/24")],
        priority=7000,
        ip="/usr/sbin/ip",
        sysctl="/usr/sbin/sysctl",
    )
    assert [s.apply.shown for s in steps] == [
        "/usr/sbin/sysctl -q -w net.ipv4.conf.ppp1.rp_filter=1",
        "/usr/sbin/ip -4 rule add iif ppp1 to 10.2.0.0/24 priority 7000 lookup main",
        "/usr/sbin/ip -4 rule add iif ppp1 priority 7001 prohibit",
    ]
    assert all(s.why for s in steps)


def test_loose_all_setting_is_reported() -> None:
    assert effective_rp_filter(2, 1) == 2 and effective_rp_filter(0, 1) == 1
    assert loose_warning(0, "ppp0") is None
    assert loose_warning(1, "ppp0") is None
    warning = loose_warning(2, "ppp0")
    assert warning is not None
    assert "net.ipv4.conf.all.rp_filter = 2 (loose)" in warning and "ppp0" in warning


# ---------------------------------------------------------------------------- remote text


class Answers:
    """An SSH transport whose every remote request gets one answer (or one failure)."""

    def __init__(self, answer: str | Exception) -> None:
        """What each request returns or raises."""
        self.answer = answer

    async def run(self, command: Command, timeout: float = 60.0) -> str:
        """The answer."""
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def tunnel_for(cfg: SiteConfig, answer: str | Exception) -> Attempt:
    """An attempt whose remote requests all get `answer`."""
    ports, _, _ = fake_ports(World(), cfg)
    attempt = Attempt(cfg, ports, Recorder())
    attempt.ssh = Answers(answer)  # type: ignore[assignment]
    return attempt


@pytest.mark.parametrize("answer", ["ppp0;reboot", "eth0", "ppp0\x1b[2J", "../ppp0", "ppp"])
def test_remote_interface_name_must_be_pppn(
    answer: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PPPSSH_RUN_DIR", str(tmp_path))
    cfg = site(ppp="", networks="local = 10.1.0.0/24\nremote = 10.2.0.0/24\n")
    cfg = dataclasses.replace(cfg, helper=True)  # the helper answers with the name alone
    tunnel = tunnel_for(cfg, answer + "\n")
    with pytest.raises(TunnelError) as caught:
        asyncio.run(tunnel._remote_if())
    message = str(caught.value)
    assert "not pppN: refused" in message and "\x1b" not in message and "\n" not in message
    assert tunnel.remote_interface is None


def test_remote_interface_pppn_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    tunnel = tunnel_for(dataclasses.replace(site(), helper=True), "ppp7\n")
    assert asyncio.run(tunnel._remote_if()) == "ppp7"


def test_remote_stderr_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = "ip route add 10.1.0.0/24"
    failure = RemoteFailed(shown, 1, "sudo: \x1b]0;owned\x07no\r\nsecond\x1b[2J line")
    tunnel = tunnel_for(site(), failure)
    with pytest.raises(RemoteFailed) as caught:
        asyncio.run(tunnel._remote(Command(("ip", "route", "add", "10.1.0.0/24"))))
    message = str(caught.value)
    assert message.isprintable(), message
    assert "\\x1b]0;owned\\x07no | second\\x1b[2J line" in message
    assert caught.value.status == 1


def test_local_pppd_interface_must_be_pppn() -> None:
    """The filter is applied to the interface the local pppd names: only a pppN is taken."""

    async def main() -> list[str | None]:
        pppd = LocalPppd(site())
        names = []
        for line in ("Using interface ppp0\x1b[2J", "Using interface eth0", "Using interface ppp3"):
            pppd._line(line)
            names.append(pppd.interface)
        return names

    assert asyncio.run(main()) == [None, None, "ppp3"]
