"""MSS clamping in the lab: a link with mtu 1280 between LANs of 1500, path MTU discovery
defeated (both workstations drop ICMP "fragmentation needed"). With the clamp (the default,
auto) 1 MB crosses each way and no ICMP is even needed; the same link without its clamp
rules hangs in the black hole; the rules pppssh made on gw-a are gone after `stop` and after
a SIGKILL and the recovery `stop` runs.

The lab kernel's nf_tables has no inet (nor ip) family, so nft's transaction is refused
by the kernel (after nft parsed it) and pppssh clamps with the legacy xtables TCPMSS target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.lab.netlab import WS_A, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, pppssh, show
from tests.lab.test_tunnel import stop_all as stop_all  # the fixture, used by name

pytestmark = pytest.mark.lab

SITE, MTU, PORT, SIZE = "site-b", 1280, 5201, 1 << 20
WORKSTATIONS = ("ws-a", "ws-b")
DROP_ICMP = ["PREROUTING", "-p", "icmp", "--icmp-type",
             "fragmentation-needed", "-j", "DROP"]  # fmt: skip
# Receives SIZE bytes, sends SIZE back, prints the connection's MSS; stdlib only.
SERVER = f"""
import socket, sys
s = socket.create_server(("{WS_A}", {PORT}))
c, _ = s.accept()
c.settimeout(20)
got = 0
while got < {SIZE}:
    data = c.recv(65536)
    if not data:
        break
    got += len(data)
c.sendall(b"y" * {SIZE})
print(got, c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
c.close()
"""
CLIENT = f"""
import socket, struct, sys
c = socket.create_connection(("{WS_A}", {PORT}), timeout=float(sys.argv[1]))
mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
try:
    c.sendall(b"x" * {SIZE})
    got = 0
    while got < {SIZE}:
        data = c.recv(65536)
        if not data:
            break
        got += len(data)
except OSError as exc:
    print("stalled", mss, exc, flush=True)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # a reset: no orphan left retransmitting into the next link
    sys.exit(1)
print(got, mss, flush=True)
"""


def iptables(lab: Lab, ns: str, *args: str) -> str:
    """Run iptables-legacy -w in ns; its output."""
    return lab.run(ns, ["iptables-legacy", "-w", *args]).stdout


def dropped_icmp(lab: Lab, ns: str) -> int:
    """Packets of ICMP "fragmentation needed" the workstation's rule dropped so far."""
    out = iptables(lab, ns, "-t", "mangle", "-L", "PREROUTING", "-n", "-v", "-x")
    return sum(int(line.split()[0]) for line in out.splitlines() if "DROP" in line)


def clamp_rules(lab: Lab) -> list[str]:
    """The TCPMSS rules on gw-a."""
    out = iptables(lab, "gw-a", "-t", "mangle", "-S", "FORWARD")
    return [line for line in out.splitlines() if "TCPMSS" in line]


def transfer(lab: Lab, within: float) -> tuple[subprocess.CompletedProcess[str], str]:
    """1 MB from ws-b to ws-a and 1 MB back on one connection, given `within` seconds: the
    client's result, and what the server printed (bytes it got, its MSS)."""
    server = lab.spawn("ws-a", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert wait_for(lambda: f":{PORT}" in lab.run("ws-a", ["ss", "-Htln"]).stdout, timeout=10), (
        "server not listening"
    )
    client = lab.run("ws-b", [sys.executable, "-c", CLIENT, str(within)], check=False, timeout=90)
    try:
        out, _ = server.communicate(timeout=30 if client.returncode == 0 else 1)
    except subprocess.TimeoutExpired:
        server.kill()
        out, _ = server.communicate()
    return client, out.strip()


def start(lab: Lab, setup: bool = False, **overrides: object) -> subprocess.CompletedProcess[str]:
    """Start the site with the small MTU (setup: gw-b's pppd gets it too, by remote-setup)."""
    conf = lab.write_site_conf(SITE, setup=setup, ppp_mtu=MTU, ppp_mru=MTU, **overrides)
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    return started


def ledger_commands(which: str) -> list[list[str]]:
    """The apply (or undo) argv of the running site's clamp entries, from its state file."""
    state = json.loads((RUN_DIR / f"{SITE}.json").read_text())
    return [e[which] for e in state["ledger"] if e["kind"] == "mss"]


def test_mss_clamp_crosses_the_black_hole_and_is_undone(lab: Lab, stop_all: None) -> None:
    """Clamp (auto at mtu 1280): 1 MB each way, no ICMP needed. The same link without its
    clamp rules: the transfer stalls, frag-needed dropped. The rules go with stop, and with
    the recovery after a SIGKILL."""
    for ns in WORKSTATIONS:
        iptables(lab, ns, "-t", "mangle", "-I", *DROP_ICMP)
    try:
        started = start(lab, setup=True)  # auto: mtu 1280 < 1500
        out = started.stdout
        assert "TCP MSS clamped to 1240 (ipv4) through ppp" in out, show(started)
        # nft parsed pppssh's ruleset; this kernel's nf_tables refused the inet family
        assert "note: nft: Error: Could not process rule" in out, show(started)
        assert "(iptables-legacy)" in out and "syntax error" not in out, show(started)
        rules = clamp_rules(lab)
        assert len(rules) == 2 and all("--set-mss 1240" in r for r in rules), rules
        client, server = transfer(lab, within=60)
        assert client.returncode == 0, show(client)
        got, mss = (int(word) for word in client.stdout.split())
        assert got == SIZE and mss <= MTU - 40, client.stdout
        got, mss = (int(word) for word in server.split())
        assert got == SIZE and mss <= MTU - 40, server
        assert sum(dropped_icmp(lab, ns) for ns in WORKSTATIONS) == 0, "ICMP was needed"

        # Without the clamp (its rules taken away by their own undo): a PMTU black hole.
        for argv in ledger_commands("undo"):
            lab.run("gw-a", argv)
        assert clamp_rules(lab) == []
        client, server = transfer(lab, within=4)  # the hole is for good: nothing arrives
        assert client.returncode == 1 and client.stdout.startswith("stalled "), show(client)
        assert int(client.stdout.split()[1]) > MTU - 40, client.stdout  # the LAN's MSS
        assert sum(dropped_icmp(lab, ns) for ns in WORKSTATIONS) > 0, "no ICMP was dropped"
        for argv in ledger_commands("apply"):
            lab.run("gw-a", argv)
        assert len(clamp_rules(lab)) == 2

        stopped = pppssh(lab, "stop", SITE)
        assert stopped.returncode == 0, show(stopped)
        assert clamp_rules(lab) == [] and no_leftovers(lab) == []

        start(lab)
        pid = json.loads((RUN_DIR / f"{SITE}.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
        assert len(clamp_rules(lab)) == 2, "SIGKILL leaves the rules"
        recovered = pppssh(lab, "stop", SITE)
        assert recovered.returncode == 0 and "undid what it left" in recovered.stdout, show(
            recovered
        )
        assert clamp_rules(lab) == [] and no_leftovers(lab) == []
    finally:
        for ns in WORKSTATIONS:
            iptables(lab, ns, "-t", "mangle", "-D", *DROP_ICMP)
