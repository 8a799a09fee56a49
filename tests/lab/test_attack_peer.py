"""A hostile peer: the remote pppd asks for gw-a's LAN addresses, pushes DNS, a default route.

The link account is set up normally (`pppssh remote-setup --apply`, helper = yes); then, as
root on gw-b, the site's fixed pppd options (/etc/ppp/peers/pppssh-SITE) are replaced by hostile
ones, as an attacker who owns gw-b would. pppd 2.4.9's IPCP (ipcp.c, ipcp_reqci) NAKs a peer
address that differs from the one configured unless `ipcp-accept-remote` is given, and ignores
a NAK of its own address unless `ipcp-accept-local` is given (ipcp_nakci); pppssh gives the
local pppd `LOCAL:REMOTE` and neither option. So whatever the peer asks, gw-a's pppd must keep
192.168.77.1 <-> 192.168.77.2, and no route to gw-a's LAN (or a default route) may go into the
link. The hostile pppd logs every packet it receives from gw-a (`debug`, `logfile`): that log
is the proof of what gw-a's pppd answered.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import (
    GW_A_LAN,
    NET_B,
    PPP_LOCAL,
    PPP_REMOTE,
    WS_A,
    WS_B,
    Lab,
    wait_for,
)
from tests.lab.test_attack_key import LinkKey, link_key, report
from tests.lab.test_tunnel import pppssh, show

pytestmark = pytest.mark.lab

SITE = "site-p"
PEERS = Path(f"/etc/ppp/peers/pppssh-{SITE}")
PEER_LOG = Path("/tmp/pppssh-attack-peer.log")
RESOLV = [Path("/etc/ppp/resolv.conf"), Path("/run/ppp/resolv.conf")]
ADDRESSES = f"{PPP_REMOTE}:{PPP_LOCAL}"  # the remote pppd's own line in its peers file

# name: (the hostile pppd's `OURS:HIS` line, extra options)
HOSTILE: dict[str, tuple[str, list[str]]] = {
    "the control: the site's own options (ipv6 = no)": (ADDRESSES, []),
    "the peer takes ws-a's address": (f"{WS_A}:{PPP_LOCAL}", []),
    "the peer takes gw-a's LAN address": (f"{GW_A_LAN}:{PPP_LOCAL}", []),
    "the peer gives gw-a a LAN address": (f"{PPP_REMOTE}:10.1.0.99", []),
    "the peer gives gw-a ws-b's address": (f"{PPP_REMOTE}:{WS_B}", []),
    "both ends in gw-a's LAN, the peer accepting anything": (
        f"{WS_A}:10.1.0.99",
        ["ipcp-accept-local", "ipcp-accept-remote"],
    ),
    "DNS, WINS, a default route and IPv6 pushed": (
        ADDRESSES,
        [
            "ms-dns 10.1.0.66",
            "ms-dns 10.1.0.67",
            "ms-wins 10.1.0.68",
            "defaultroute",
            "+ipv6",
            "ipv6 ::2,::1",
        ],
    ),
}


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[LinkKey]:
    """The site, set up on gw-b normally; its peers file is put back after each attack."""
    with link_key(lab, SITE, sections={"ppp": {"up_timeout": "40"}}) as made:
        yield made


def hostile_peers(original: str, addresses: str, extra: list[str]) -> str:
    """The site's peers file with the address line replaced and hostile options added."""
    lines = original.splitlines()
    assert ADDRESSES in lines, f"no line {ADDRESSES!r} in {PEERS}:\n{original}"
    lines = [addresses if x == ADDRESSES else x for x in lines if x != "nodefaultroute"]
    return "\n".join([*lines, "debug", f"logfile {PEER_LOG}", *extra]) + "\n"


class Watch:
    """Samples gw-a's ppp links and routes in a thread while a start runs."""

    def __init__(self, lab: Lab) -> None:
        """Start sampling."""
        self.lab = lab
        self.links: set[tuple[str | None, str | None]] = set()
        self.routes: set[str] = set()
        self.ipv6: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        """Sample until stopped."""
        while not self.done.is_set():
            self.sample()
            self.done.wait(0.1)

    def sample(self) -> None:
        """Record gw-a's ppp addresses and the routes through ppp interfaces."""
        for link in self.lab.ppp_links("gw-a"):
            self.links.add((link["local"], link["peer"]))
        self.routes.update(r for r in self.lab.routes("gw-a") if " dev ppp" in r)
        self.ipv6.update(ppp_ipv6(self.lab, "gw-a"))

    def stop(self) -> None:
        """Stop sampling and take a last sample."""
        self.done.set()
        self.thread.join()
        self.sample()


def ppp_ipv6(lab: Lab, ns: str) -> list[str]:
    """IPv6 addresses on the ppp interfaces of ns: 'pppN ADDRESS/LEN'."""
    links = json.loads(lab.run(ns, ["ip", "-j", "-6", "addr", "show"]).stdout or "[]")
    return [
        f"{link['ifname']} {a['local']}/{a['prefixlen']}"
        for link in links
        if link.get("ifname", "").startswith("ppp")
        for a in link.get("addr_info", [])
    ]


def packets(log: str, direction: str, kind: str) -> list[str]:
    """IPCP packets of one kind (ConfReq, ConfAck, ConfNak, ConfRej) in the hostile log."""
    return re.findall(rf"{direction} \[IPCP {kind} id=0x[0-9a-f]+(.*?)\]", log)


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_peer(lab: Lab, site: LinkKey, what: str) -> None:
    """gw-a's pppd keeps its configured addresses whatever the peer asks; no route to gw-a's
    LAN, no default route, no DNS, no IPv6 comes through the link."""
    addresses, extra = HOSTILE[what]
    original = PEERS.read_text()
    resolv_before = {str(p): p.read_text() if p.exists() else None for p in RESOLV}
    PEER_LOG.unlink(missing_ok=True)
    PEERS.write_text(hostile_peers(original, addresses, extra))
    watch = Watch(lab)
    try:
        started = pppssh(lab, "start", str(site.conf))
        ipv6 = ppp_ipv6(lab, "gw-a")
        lan_route = lab.run("gw-a", ["ip", "-4", "route", "get", WS_A]).stdout
    finally:
        watch.stop()
        pppssh(lab, "stop", SITE)
        PEERS.write_text(original)
    assert wait_for(lambda: not lab.pids("gw-b", "pppd"), timeout=20), "the hostile pppd stays"
    log = PEER_LOG.read_text() if PEER_LOG.exists() else ""
    PEER_LOG.unlink(missing_ok=True)

    from_a = packets(log, "rcvd", "ConfReq")
    naks = packets(log, "rcvd", "ConfNak")
    acks = packets(log, "rcvd", "ConfAck")
    rejs = packets(log, "rcvd", "ConfRej")
    answer = [f"ConfNak{x}" for x in naks[-1:]] or [f"ConfRej{x}" for x in rejs[-1:]]
    answer = answer or [f"ConfAck{x}" for x in acks[-1:]]
    pushed = [x for x in packets(log, "sent", "ConfNak") if "<addr" in x]
    protrej = re.findall(r"rcvd \[LCP ProtRej[^\]]*\]", log)
    ipv6cp = re.findall(r"rcvd \[IPV6CP (?:ConfAck|ConfReq)[^\]]*\]", log)
    outcome = "started" if started.returncode == 0 else f"start failed ({started.returncode})"
    report(
        f"hostile peer: {what}",
        f"remote pppd with {addresses} {' '.join(extra)}".strip(),
        f"gw-a's pppd answered [IPCP {answer[0].strip() if answer else '-'}]; "
        f"it ignored {len(pushed)} ConfNak(s) pushing an address on it "
        f"({pushed[-1].strip() if pushed else '-'}) and asked {len(from_a)} time(s) for "
        f"{PPP_LOCAL}; {' '.join(protrej[:1])} {outcome}; "
        f"gw-a's link {sorted(watch.links, key=str)}; gw-a's IPV6CP {ipv6cp[-2:] or 'none'}",
    )
    assert from_a, f"no IPCP from gw-a reached the hostile pppd: {show(started)}\n{log}"
    # Everything gw-a's pppd asked for itself is its configured address, and every peer
    # address it acknowledged or proposed is the configured one.
    for packet in from_a:
        for addr in re.findall(r"<addr ([0-9.]+)>", packet):
            assert addr == PPP_LOCAL, f"gw-a's pppd asked for {addr}: {packet}\n{log}"
        assert "ms-dns" not in packet and "ms-wins" not in packet, f"gw-a asked DNS: {packet}"
    for packet in acks + naks:
        for addr in re.findall(r"<addr ([0-9.]+)>", packet):
            assert addr == PPP_REMOTE, f"gw-a's pppd agreed to peer address {addr}: {packet}"
    # What gw-a's kernel saw: only the configured addresses, routes only to the far side.
    allowed_links = {(None, None), (PPP_LOCAL, PPP_REMOTE)}
    assert watch.links <= allowed_links, f"gw-a's ppp link had {watch.links}"
    for route in watch.routes:
        destination = route.split()[0]
        assert destination in (PPP_REMOTE, NET_B), f"a route into the link on gw-a: {route}"
    assert "dev lan0" in lan_route, f"gw-a reaches ws-a through {lan_route}"
    resolv_after = {str(p): p.read_text() if p.exists() else None for p in RESOLV}
    assert resolv_after == resolv_before, "the peer's DNS servers were written"
    assert not [r for r in lab.routes("gw-a") if r.startswith("default")]
    if "+ipv6" in extra:
        assert "sent [IPV6CP ConfReq" in log, f"the hostile pppd offered no IPv6:\n{log}"
    if "+ipv6" in extra or (addresses, extra) == (ADDRESSES, []):  # the others: IPv4
        # ipv6 = no: gw-a's pppd must not agree to IPV6CP, whose link-local addresses would
        # open gw-a's own IPv6 services (and, with IPv6 forwarding, its LAN) to the peer.
        assert "rcvd [IPV6CP ConfAck" not in log, f"gw-a's pppd agreed to IPv6CP: {ipv6cp}"
        assert ipv6 == [] and not watch.ipv6, f"IPv6 on gw-a's ppp link: {ipv6 or watch.ipv6}"
