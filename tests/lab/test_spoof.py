"""Anti-spoofing on gw-a's end of the link, attacked from the peer (gw-b): spoofed sources and
forwarding into a network that is not the site's stay out; legitimate traffic still flows.

      ws-a 10.1.0.10 (+ 10.7.0.10, a network not in [networks])
        |  lan0 10.1.0.1 (+ 10.7.0.1)
      gw-a ppp 192.168.77.1  <== link ==>  192.168.77.2 gw-b (the attacker: root there)
                                                 lo: 198.18.0.99, 10.1.0.99 (spoofed sources)

A listener on ws-a records every ICMP echo request that reaches it (source, destination).
After each attack a legitimate echo from the peer's PPP address goes the same way: the link
keeps order, so once that one is seen, anything sent before it has arrived or never will.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_A_LAN, NET_A, PPP_LOCAL, PPP_REMOTE, WS_A, WS_B, Lab, wait_for
from tests.lab.test_ipv6 import ipv6_lans  # noqa: F401
from tests.lab.test_tunnel import RUN_DIR, ppp_link, pppssh, show, stop_all  # noqa: F401

pytestmark = pytest.mark.lab

OUTSIDE = "198.18.0.99"  # in neither side's networks
OWN_LAN = "10.1.0.99"  # inside gw-a's own LAN: only strict reverse-path filtering stops it
EXTRA_NET, EXTRA_GW, EXTRA_WS = "10.7.0.0/24", "10.7.0.1", "10.7.0.10"  # not in [networks]

LISTENER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
out = open(sys.argv[1], "w", buffering=1)
out.write("ready\n")
while True:
    data = sock.recv(65535)
    ihl = (data[0] & 15) * 4
    if len(data) > ihl and data[ihl] == 8:  # echo request
        out.write(f"{socket.inet_ntoa(data[12:16])} {socket.inet_ntoa(data[16:20])}\n")
"""


class Listener:
    """A raw ICMP socket in ws-a, writing `SRC DST` for each echo request it receives."""

    def __init__(self, lab: Lab, path: Path) -> None:
        """Start it and wait until its socket is open."""
        self.path = path
        self.proc = lab.spawn("ws-a", [sys.executable, "-c", LISTENER, str(path)])
        assert wait_for(lambda: path.exists() and path.read_text().startswith("ready"), 30)

    def seen(self) -> list[tuple[str, str]]:
        """Every echo request received so far, in order."""
        lines = self.path.read_text().splitlines()[1:]
        return [(line.split()[0], line.split()[1]) for line in lines if len(line.split()) == 2]

    def stop(self) -> None:
        """End the listener."""
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def rules(lab: Lab, ns: str = "gw-a") -> list[str]:
    """The policy rules of a namespace, both families, spaces normalised, `[detached]` (the
    interface is gone) left out."""
    out = [lab.run(ns, ["ip", family, "rule", "show"]).stdout for family in ("-4", "-6")]
    lines = (
        " ".join(line.replace(" [detached]", "").split()) for t in out for line in t.splitlines()
    )
    return [line for line in lines if line]


def rp_filter_drops(lab: Lab) -> int:
    """gw-a's count of packets the reverse-path filter dropped (TcpExt IPReversePathFilter)."""
    lines = lab.run("gw-a", ["cat", "/proc/net/netstat"]).stdout.splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split(), values.split(), strict=True))["IPReversePathFilter"])
    raise AssertionError("no TcpExt line in /proc/net/netstat")


def ping_from(lab: Lab, ns: str, dst: str, src: str | None = None, count: int = 3) -> str:
    """Ping dst from ns (from address src); return ping's output, whether answered or not."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", dst]
    if src:
        argv[1:1] = ["-I", src]
    done = lab.run(ns, argv, check=False, timeout=30)
    return done.stdout + done.stderr


def sentinel(lab: Lab, listener: Listener) -> None:
    """A legitimate echo from the peer's PPP address to ws-a, seen arriving: what was sent
    over the link before it has been delivered or dropped by now."""
    before = listener.seen().count((PPP_REMOTE, WS_A))
    out = ping_from(lab, "gw-b", WS_A, PPP_REMOTE, count=1)
    assert " 0% packet loss" in out, f"the peer's own address must reach ws-a: {out}"
    assert wait_for(lambda: listener.seen().count((PPP_REMOTE, WS_A)) > before, timeout=30)


def attack(lab: Lab, listener: Listener, src: str, dst: str, tried: str) -> tuple[bool, str]:
    """Send 3 echo requests from gw-b with source src to dst; say whether any reached ws-a,
    and ping's output."""
    print(f"attack: {tried}: ping -I {src} {dst} from gw-b, into the link")
    out = ping_from(lab, "gw-b", dst, src)
    sentinel(lab, listener)
    return (src, dst) in listener.seen(), out


@pytest.fixture
def extra_addresses(lab: Lab) -> Iterator[None]:
    """Spoofable sources on gw-b's lo; a network on ws-a's wire that is not the site's."""
    changes = [
        ("gw-b", "lo", f"{OUTSIDE}/32"), ("gw-b", "lo", f"{OWN_LAN}/32"),
        ("gw-a", "lan0", f"{EXTRA_GW}/24"), ("ws-a", "eth0", f"{EXTRA_WS}/24"),
    ]  # fmt: skip
    for ns, dev, addr in changes:
        lab.run(ns, ["ip", "addr", "add", addr, "dev", dev])
    try:
        yield
    finally:
        for ns, dev, addr in changes:
            lab.run(ns, ["ip", "addr", "del", addr, "dev", dev], check=False)


def test_spoofed_sources_and_foreign_destinations_stay_out(
    lab: Lab,
    stop_all: None,  # noqa: F811
    extra_addresses: None,
    tmp_path: Path,
) -> None:
    before = rules(lab)
    listener = Listener(lab, tmp_path / "seen")
    try:
        conf = lab.write_site_conf("site-b")
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
        if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
        out = started.stdout
        assert f"[#] sysctl -q -w net.ipv4.conf.{if_a}.rp_filter=1\n" in out, out
        assert f"[#] ip -4 rule add iif {if_a} to {NET_A} priority 5000 lookup main\n" in out
        assert f"[#] ip -4 rule add iif {if_a} priority 5001 prohibit\n" in out
        assert out.index("rule add") < out.index("[#] ip route add"), "filter before routes"
        assert "(loose)" not in out, "conf/all is 0 in the lab: no warning"
        now = [r for r in rules(lab) if r not in before]
        assert now == [
            f"5000: from all to {NET_A} iif {if_a} lookup main",
            f"5001: from all iif {if_a} prohibit",
        ], now
        sysctl = ["cat", f"/proc/sys/net/ipv4/conf/{if_a}/rp_filter"]
        assert lab.run("gw-a", sysctl).stdout.strip() == "1"
        state = json.loads((RUN_DIR / "site-b.json").read_text())
        assert state["local_filter"] == [
            f"ip -4 rule add iif {if_a} to {NET_A} priority 5000 lookup main",
            f"ip -4 rule add iif {if_a} priority 5001 prohibit",
        ], state

        # What must still work: the link's own traffic, local delivery, the site's traffic.
        assert lab.ping("gw-b", PPP_LOCAL, count=2), "the peer pings gw-a's PPP address"
        assert lab.ping("gw-b", GW_A_LAN, count=2), "gw-a's own LAN address: local delivery"
        assert lab.ping("ws-b", WS_A, count=2), "ws-b reaches ws-a"
        assert (WS_B, WS_A) in listener.seen()
        assert lab.ping("ws-a", WS_B, count=2), "ws-a reaches ws-b (replies come in)"
        sentinel(lab, listener)  # the peer's PPP address reaches ws-a

        # 1. A source in neither side's networks.
        drops = rp_filter_drops(lab)
        arrived, _ = attack(lab, listener, OUTSIDE, WS_A, "a source in no network of the site")
        stopped = rp_filter_drops(lab) - drops
        assert not arrived, listener.seen()
        assert stopped >= 3, f"IPReversePathFilter went up by {stopped}, not 3"
        print(f"  stopped: strict rp_filter on gw-a's {if_a} ({stopped} drops counted)")

        # 2. A source inside gw-a's own LAN: a loose filter would let it in.
        drops = rp_filter_drops(lab)
        arrived, _ = attack(lab, listener, OWN_LAN, WS_A, "a source inside gw-a's own LAN")
        stopped = rp_filter_drops(lab) - drops
        assert not arrived, listener.seen()
        assert stopped >= 3, f"IPReversePathFilter went up by {stopped}, not 3"
        print(f"  stopped: strict rp_filter on gw-a's {if_a} ({stopped} drops counted)")

        # 3. A legitimate source, into a network on gw-a's LAN that is not the site's.
        lab.run("gw-b", ["ip", "route", "add", EXTRA_NET, "via", PPP_LOCAL, "dev", if_b])
        arrived, said = attack(lab, listener, PPP_REMOTE, EXTRA_WS, "forward into 10.7.0.0/24")
        assert not arrived, listener.seen()
        assert f"From {PPP_LOCAL} icmp_seq=1 Packet filtered" in said, said
        print("  stopped: gw-a's prohibit rule (5001) for what comes from the link "
              f"(gw-a answered: Packet filtered): {said.splitlines()[1]}")  # fmt: skip

        # Controls: without each part of the filter, the same attack gets through, so the
        # listener would have seen it, and the filter is what stopped it.
        lab.run("gw-a", ["sysctl", "-q", "-w", f"net.ipv4.conf.{if_a}.rp_filter=2"])
        arrived, _ = attack(lab, listener, OWN_LAN, WS_A, "control: own-LAN source, loose")
        assert arrived, "with a loose filter the own-LAN source gets in: the listener sees it"
        lab.run("gw-a", ["sysctl", "-q", "-w", f"net.ipv4.conf.{if_a}.rp_filter=0"])
        arrived, _ = attack(lab, listener, OUTSIDE, WS_A, "control: outside source, no filter")
        assert arrived, "without rp_filter the outside source gets in"
        lab.run("gw-a", ["sysctl", "-q", "-w", f"net.ipv4.conf.{if_a}.rp_filter=1"])
        prohibit = ["iif", if_a, "priority", "5001", "prohibit"]
        lab.run("gw-a", ["ip", "-4", "rule", "del", *prohibit])
        try:
            arrived, _ = attack(lab, listener, PPP_REMOTE, EXTRA_WS, "control: no prohibit rule")
            assert arrived, "without the prohibit rule gw-a forwards into 10.7.0.0/24"
        finally:
            lab.run("gw-a", ["ip", "-4", "rule", "add", *prohibit])
        print("  controls: each attack got through with that part of the filter taken away")

        stopped_site = pppssh(lab, "stop", "site-b")
        assert stopped_site.returncode == 0, show(stopped_site)
        assert f"[#] ip -4 rule del iif {if_a} priority 5001 prohibit\n" in stopped_site.stdout
        text = stopped_site.stdout
        assert text.index("local pppd stopped") < text.index("rule del"), (
            "the rules go after the link: never an unfiltered moment"
        )
        assert rules(lab) == before, "the rules are gone"
    finally:
        listener.stop()
        lab.run("gw-b", ["ip", "route", "del", EXTRA_NET], check=False)


def test_loose_all_warned_and_sigkill_leaves_no_stale_rules(lab: Lab, stop_all: None) -> None:  # noqa: F811
    """conf/all.rp_filter = 2 makes the filter loose: start says so once, status too. A
    SIGKILLed pppssh leaves its rules; the next start removes them before adding its own."""
    before = rules(lab)
    key = "net.ipv4.conf.all.rp_filter"
    old = lab.run("gw-a", ["sysctl", "-n", key]).stdout.strip()
    lab.run("gw-a", ["sysctl", "-q", "-w", f"{key}=2"])
    try:
        conf = lab.write_site_conf("site-b")
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        assert started.stdout.count(f"warning: {key} = 2 (loose)") == 1, show(started)
        status = pppssh(lab, "status", "site-b")
        assert f"warning: {key} = 2 (loose)" in status.stdout, show(status)
        if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
        ours = [r for r in rules(lab) if r not in before]
        assert len(ours) == 2 and all(f"iif {if_a}" in r for r in ours), ours

        first = json.loads((RUN_DIR / "site-b.json").read_text())
        print(f"attack: SIGKILL pppssh (pid {first['pid']}) with its rules in place")
        os.kill(first["pid"], signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{first['pid']}"), timeout=10)
        assert wait_for(lambda: not lab.ppp_links("gw-a"), timeout=30), "pppd hangs up"
        stale = [r for r in rules(lab) if r not in before]
        assert stale == ours, "the rules outlive the daemon (they are by interface name)"

        again = pppssh(lab, "start", str(conf))
        assert again.returncode == 0, show(again)
        assert "ended without its teardown" in again.stdout, show(again)
        out = again.stdout
        assert re.search(rf"^\[#\] ip -4 rule del iif {if_a} priority 5001 prohibit$", out, re.M)
        assert out.index("rule del") < out.index("rule add"), out
        if_again = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
        now = [r for r in rules(lab) if r not in before]
        assert len(now) == 2 and all(f"iif {if_again}" in r for r in now), now
        print("  stopped: the next start deleted the stale rules (state file local_filter)")

        stopped = pppssh(lab, "stop", "site-b")
        assert stopped.returncode == 0, show(stopped)
        assert rules(lab) == before, "no rule left behind"
    finally:
        lab.run("gw-a", ["sysctl", "-q", "-w", f"{key}={old}"])


LISTENER6 = r"""
import socket, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
out = open(sys.argv[1], "w", buffering=1)
out.write("ready\n")
while True:
    data, addr = sock.recvfrom(65535)
    if data and data[0] == 128:  # echo request
        out.write(f"{addr[0]}\n")
"""
WS6_A, WS6_B, NET6_A, NET6_B = (
    "2001:db8:a::10",
    "2001:db8:b::10",
    "2001:db8:a::/64",
    "2001:db8:b::/64",
)
SPOOF6 = ("2001:db8:a::99", "2001:db8:99::99")  # gw-a's own LAN, and no network of the site


def test_ipv6_spoofed_sources_stay_out(
    lab: Lab,
    stop_all: None,  # noqa: F811
    ipv6_lans: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    """IPv6 has no rp_filter: the allow rules name the far side's networks as sources."""
    before = rules(lab)
    for addr in SPOOF6:
        lab.run("gw-b", ["ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad"])
    path = tmp_path / "seen6"
    listener = lab.spawn("ws-a", [sys.executable, "-c", LISTENER6, str(path)])
    try:
        assert wait_for(lambda: path.exists() and path.read_text().startswith("ready"), 30)
        conf = lab.write_site_conf(
            "site-b", ppp_ipv6="yes", remote_helper="no",  # IPv6: not through the helper
            networks_local=f"{NET_A}, {NET6_A}",
            networks_remote=f"10.2.0.0/24, {NET6_B}",
        )  # fmt: skip
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        if_a = ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
        assert f"5000: from {NET6_B} to {NET6_A} iif {if_a} lookup main" in rules(lab)

        def seen() -> list[str]:
            return path.read_text().splitlines()[1:]

        def ping6(ns: str, dst: str, src: str | None = None) -> str:
            argv = ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst]
            argv[1:1] = ["-I", src] if src else []
            done = lab.run(ns, argv, check=False, timeout=30)
            return done.stdout + done.stderr

        def attack(src: str, tried: str) -> bool:
            print(f"attack: {tried}: ping -6 -I {src} {WS6_A} from gw-b, into the link")
            ping6("gw-b", WS6_A, src)
            count = seen().count(WS6_B)
            out = ping6("ws-b", WS6_A)  # the sentinel: legitimate, the same way
            assert " 0% packet loss" in out, out
            assert wait_for(lambda: seen().count(WS6_B) > count, timeout=30)
            return src in seen()

        for src, tried in zip(SPOOF6, ("a source in gw-a's own LAN", "a source in no network"),
                              strict=True):  # fmt: skip
            assert not attack(src, tried), seen()
            print(f"  stopped: gw-a's IPv6 prohibit rule (5001) on {if_a}: {src} is not {NET6_B}")
        prohibit = ["iif", if_a, "priority", "5001", "prohibit"]
        lab.run("gw-a", ["ip", "-6", "rule", "del", *prohibit])
        try:
            assert attack(SPOOF6[1], "control: no IPv6 prohibit rule"), "it gets through"
        finally:
            lab.run("gw-a", ["ip", "-6", "rule", "add", *prohibit])
        stopped = pppssh(lab, "stop", "site-b")
        assert stopped.returncode == 0, show(stopped)
        assert rules(lab) == before
    finally:
        listener.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            listener.wait(5)
        for addr in SPOOF6:
            lab.run("gw-b", ["ip", "-6", "addr", "del", f"{addr}/128", "dev", "lo"], check=False)
