"""DNS per link in the lab, through resolvconf (openresolv): a name server on ws-b behind the
remote gateway, gw-a's resolv.conf (its own, /etc/netns/NS/resolv.conf, which `ip netns exec`
binds over /etc/resolv.conf) changed while the link is up, queries arriving from gw-a's PPP
address, and everything back as it was after stop, reload and SIGKILL plus recovery.

openresolv is never installed on the host (it would own /etc/resolv.conf): the .deb that
scripts/install-deps.sh downloads is unpacked into the lab kernel's root, a tmpfs overlay.
systemd-resolved is not in the lab (no D-Bus there); tests/test_dns.py covers its commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import GW_A_LAN, PPP_LOCAL, WS_B, Lab, wait_for
from tests.lab.test_fulltunnel import wan_via_default_route  # noqa: F401
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, pppssh, show
from tests.lab.test_tunnel import stop_all as stop_all  # the fixture, used by name

pytestmark = pytest.mark.lab

SITE = "site-b"
DEBS = Path("/var/cache/pppssh-lab")  # where scripts/install-deps.sh downloads openresolv
NAME, ADDRESS = "intranet.site-b.test", "10.2.0.80"  # what only ws-b's name server knows
LAN_RECORD = "lan0.dhcp"  # what a DHCP client on gw-a's LAN would have given resolvconf
# gw-a's own LAN address, where nobody listens on port 53: refused at once. (Not 127.0.0.1:
# openresolv then takes it for a local cache and writes no other server.)
LAN_LINES = f"nameserver {GW_A_LAN}\nsearch lan-a.test\n"
INSTALLED = (
    Path("/usr/sbin/resolvconf"),
    Path("/usr/lib/resolvconf"),
    Path("/etc/resolvconf.conf"),
)

# A name server: A for NAME, NXDOMAIN for anything else; each query logged with its source.
SERVER = r"""
import socket, struct, sys
name, addr, log = sys.argv[1], socket.inet_aton(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[4], 53))
while True:
    data, peer = s.recvfrom(512)
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1 : i + 1 + data[i]].decode().lower())
        i += 1 + data[i]
    qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
    qname = ".".join(labels)
    with open(log, "a") as f:
        f.write(f"{qname} {qtype} {peer[0]}\n")
    hit = qname == name
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + addr if hit and qtype == 1 else b""
    flags = 0x8580 | (0 if hit else 3)
    head = data[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0)
    s.sendto(head + data[12 : i + 5] + answer, peer)
"""


def in_overlay() -> bool:
    """True when / is the lab kernel's tmpfs overlay (writes to /etc never reach the host)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return any(line.split()[1:3] == ["/", "overlay"] for line in mounts)


class Dns:
    """gw-a's resolv.conf and the name server's log."""

    def __init__(self, lab: Lab, folder: Path) -> None:
        """The files of this lab."""
        self.lab = lab
        self.netns_dir = Path("/etc/netns") / lab.ns("gw-a")
        self.resolv_conf = self.netns_dir / "resolv.conf"
        self.log = folder / "queries.log"

    def servers(self) -> list[str]:
        """gw-a's nameserver lines, in order."""
        lines = self.resolv_conf.read_text().splitlines()
        return [line.split()[1] for line in lines if line.startswith("nameserver ")]

    def search(self) -> list[str]:
        """gw-a's search domains."""
        lines = self.resolv_conf.read_text().splitlines()
        return [w for line in lines if line.startswith("search ") for w in line.split()[1:]]

    def resolve(self, name: str) -> str | None:
        """What gw-a's resolver answers for name (getent, through libc and resolv.conf)."""
        got = self.lab.run("gw-a", ["getent", "ahostsv4", name], check=False, timeout=30)
        return got.stdout.split()[0] if got.returncode == 0 and got.stdout else None

    def queries(self) -> list[str]:
        """`qname qtype source` for each query the server got."""
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture(scope="module")
def dns(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dns]:
    """openresolv unpacked into the overlay, a resolv.conf of gw-a's own with a LAN record,
    a name server on ws-b; all removed afterwards."""
    assert in_overlay(), "the lab's root must be the overlay: openresolv must not reach the host"
    debs = sorted(DEBS.glob("openresolv_*.deb"))
    assert debs, f"no openresolv .deb in {DEBS}: run scripts/install-deps.sh"
    unpacked = tmp_path_factory.mktemp("openresolv")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
    assert not any(p.exists() for p in INSTALLED), "a resolvconf is there already"
    shutil.copy2(unpacked / "sbin/resolvconf", INSTALLED[0])
    shutil.copytree(unpacked / "lib/resolvconf", INSTALLED[1])
    shutil.copy2(unpacked / "etc/resolvconf.conf", INSTALLED[2])
    state = Dns(lab, tmp_path_factory.mktemp("dns"))
    state.netns_dir.mkdir(parents=True)
    state.resolv_conf.write_text("# gw-a's own, before any record\nnameserver 127.0.0.1\n")
    original = state.resolv_conf.read_text()
    lab.run("gw-a", [str(INSTALLED[0]), "-a", LAN_RECORD], input=LAN_LINES)
    server = lab.spawn("ws-b", [sys.executable, "-c", SERVER, NAME, ADDRESS, str(state.log), WS_B])
    assert wait_for(lambda: state.resolve(NAME) is None, timeout=10)
    try:
        yield state
    finally:
        server.kill()
        lab.run("gw-a", [str(INSTALLED[0]), "-d", LAN_RECORD], check=False)
        restored = state.resolv_conf.read_text()
        shutil.rmtree(state.netns_dir)
        for path in (*INSTALLED, Path("/etc/resolv.conf.bak")):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree("/run/resolvconf", ignore_errors=True)
        assert restored == original, "resolvconf -d of the last record restores gw-a's own"


def test_split_dns_through_the_link_reload_and_stop(lab: Lab, stop_all: None, dns: Dns) -> None:
    """servers and a search domain: gw-a asks ws-b first, through the link, for names of the
    site; a reload to `~.` makes ws-b's server the only one, the link untouched; stop leaves
    gw-a's resolv.conf exactly as before."""
    before = dns.resolv_conf.read_text()
    assert dns.servers() == [GW_A_LAN] and dns.resolve(NAME) is None
    conf = lab.write_site_conf(SITE, dns_servers=WS_B, dns_domains="site-b.test")
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert "DNS through resolvconf" in started.stdout, show(started)
    ifname = json.loads((RUN_DIR / f"{SITE}.json").read_text())["interface"]
    assert f"pppssh-dns /usr/sbin/resolvconf {ifname}.pppssh-{SITE}" in started.stdout
    assert dns.servers() == [WS_B, GW_A_LAN], "the link's record first (ppp* is preferred)"
    assert dns.search()[0] == "site-b.test"
    assert dns.resolve("intranet") == ADDRESS, "the short name through the search domain"
    assert f"{NAME} 1 {PPP_LOCAL}" in dns.queries(), "asked from gw-a's end of the link"

    pppd = lab.pids("gw-a", "pppd")
    lab.write_site_conf(SITE, setup=False, dns_servers=WS_B, dns_domains="~.")
    reloaded = pppssh(lab, "reload", SITE)
    assert reloaded.returncode == 0, show(reloaded)
    assert dns.servers() == [WS_B], "~.: exclusive, every query to the remote side"
    assert "site-b.test" not in dns.search() and lab.pids("gw-a", "pppd") == pppd

    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert f"resolvconf -d {ifname}.pppssh-{SITE}" in stopped.stdout, show(stopped)
    assert dns.resolv_conf.read_text() == before
    assert dns.resolve(NAME) is None and no_leftovers(lab) == []


def test_full_tunnel_dns_then_sigkill_and_recovery(
    lab: Lab,
    stop_all: None,
    dns: Dns,
    wan_via_default_route: None,  # noqa: F811
) -> None:
    """full_tunnel with `~.`: gw-a resolves only through the remote side; a SIGKILLed pppssh
    leaves the record, and the next `stop` removes it with the rest."""
    before, routes = dns.resolv_conf.read_text(), lab.routes("gw-a")
    conf = lab.write_site_conf(
        SITE, networks_full_tunnel="yes", networks_remote=None, dns_servers=WS_B, dns_domains="~."
    )
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert dns.servers() == [WS_B]
    seen = len(dns.queries())
    assert dns.resolve(NAME) == ADDRESS
    assert f"{NAME} 1 {PPP_LOCAL}" in dns.queries()[seen:]

    pid = json.loads((RUN_DIR / f"{SITE}.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
    assert dns.servers() == [WS_B], "SIGKILL leaves the record"
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert "ended without its teardown" in stopped.stdout + stopped.stderr, show(stopped)
    assert dns.resolv_conf.read_text() == before
    assert dns.resolve(NAME) is None and lab.routes("gw-a") == routes
    assert lab.pids("gw-a", "pppd") == [] and lab.ppp_links("gw-a") == []
    assert not (RUN_DIR / f"{SITE}.json").exists()
