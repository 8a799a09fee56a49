"""The no-helper mode, attacked: with exactly the key line and sudoers drop-in `pppssh
remote-setup` writes for `helper = no`, the holder of the link key (a login shell as the link
account) tries to become root on gw-b, or to route and kill what it may not. Each try prints
what it tried and what stopped it; root's marker files must stay absent.

Then a peer that spoofs: with the link up, gw-a sends from addresses that are not its side's
(ws-b's own LAN, the Internet); the remote link filter (strict rp_filter on pppN, installed
by pppd's ip-up.d) must keep them from ws-b, while a packet from gw-a's LAN arrives.
"""

from __future__ import annotations

import pwd
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pppssh.config import load
from pppssh.remote_setup import sudo_commands, sudoers_rules
from tests.lab.netlab import (
    GW_A_LAN,
    GW_A_WAN,
    LINK_USER,
    NET_A,
    PPP_LOCAL,
    PPP_REMOTE,
    WS_B,
    Lab,
    wait_for,
)
from tests.lab.test_tunnel import no_leftovers, ppp_link, pppssh, show

pytestmark = pytest.mark.lab

SITE = "site-x"
PIDFILE = f"/run/ppp-pppssh-{SITE}-{PPP_LOCAL}.pid"
MARKERS = [Path("/root/x"), Path("/root/pppssh-attack"), Path("/etc/pppssh-attack")]
ROOT_CMD = "id > /root/x; touch /root/pppssh-attack"


@pytest.fixture
def plain_site(lab: Lab) -> Iterator[tuple[Path, Path]]:
    """A helper = no site for the account `tunnel`, set up by remote-setup; removed after."""
    conf = lab.write_site_conf(
        SITE, remote_user=LINK_USER, remote_helper="no", remote_from=GW_A_WAN
    )
    key = lab.site_key(SITE)
    yield conf, key
    pppssh(lab, "stop", SITE)
    lab.remote_setup(conf, remove=True)
    for marker in MARKERS:
        marker.unlink(missing_ok=True)
    conf.unlink()


def attack(lab: Lab, key: Path, what: str, command: str) -> str:
    """Run command as the link-key holder (its login shell); print the try and its answer."""
    proc = lab.ssh(LINK_USER, key, command)
    said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    why = said[-1] if said else f"exit status {proc.returncode}"
    print(f"attack: {what}\n  tried: {command}\n  exit {proc.returncode}; stopped by: {why}")
    assert proc.returncode != 0, f"{what}: it worked: {show(proc)}"
    return why


def test_link_key_holder_cannot_get_root(lab: Lab, plain_site: tuple[Path, Path]) -> None:
    conf, key = plain_site
    cfg = load(conf)
    home = Path(pwd.getpwnam(LINK_USER).pw_dir)
    # Exactly what remote-setup wrote: the key line without a forced command, the drop-in.
    keys = (home / ".ssh" / "authorized_keys").read_text().splitlines()
    assert len(keys) == 1 and keys[0].startswith(f'restrict,pty,from="{GW_A_WAN}" ssh-ed25519 ')
    drop_in = Path(f"/etc/sudoers.d/pppssh-{SITE}").read_text()
    assert [x for x in drop_in.splitlines() if " NOPASSWD: " in x] == sudoers_rules(cfg)
    assert "*" not in drop_in
    shell = lab.ssh(LINK_USER, key, "id -un")
    assert shell.returncode == 0 and shell.stdout.strip() == LINK_USER, show(shell)

    # Files the attacker prepares in its own home and in /tmp.
    opts = f"pty '/bin/sh -c \"{ROOT_CMD}\"'\n"
    prepare = (
        f"printf '%s' {shlex.quote(opts)} > ~/opts && printf '%s' {shlex.quote(opts)} > /tmp/x"
        " && printf 'not a plugin' > ~/x.so && echo ok"
    )
    ready = lab.ssh(LINK_USER, key, prepare)
    assert ready.stdout.strip() == "ok", show(ready)

    pppd, ip, pkill = cfg.remote_pppd, cfg.remote_ip, "/usr/bin/pkill"
    sudo = "sudo -n"
    tries = {
        "pppd with a pty command": f"{sudo} {pppd} nodetach noauth pty '/bin/sh -c \"{ROOT_CMD}\"'",
        "the allowed pppd call plus a pty": (
            f"{sudo} {pppd} call pppssh-{SITE} pty '/bin/sh -c \"{ROOT_CMD}\"'"
        ),
        "pppd with a plugin": f"{sudo} {pppd} plugin {home}/x.so",
        "pppd with an options file": f"{sudo} {pppd} file {home}/opts",
        "pppd call of a file outside the peers directory": f"{sudo} {pppd} call ../../tmp/x",
        "pppd call of another site's options": f"{sudo} {pppd} call pppssh-site-b",
        "pppd showing a secret": f"{sudo} {pppd} +ua /etc/shadow show-password",
        "a default route": f"{sudo} {ip} route add default via {PPP_LOCAL}",
        "the allowed network to lo (hijacks a LAN host)": f"{sudo} {ip} route add {NET_A} dev lo",
        "the allowed network with an encap": (
            f"{sudo} {ip} route add {NET_A} via {PPP_LOCAL} encap ip id 1 dst 192.0.2.1"
        ),
        "the allowed network via another gateway": f"{sudo} {ip} route add {NET_A} via {WS_B}",
        "another network": f"{sudo} {ip} route add 10.9.0.0/24 via {PPP_LOCAL}",
        "a part of the allowed network": f"{sudo} {ip} route add 10.1.0.0/25 via {PPP_LOCAL}",
        "replacing a route": f"{sudo} {ip} route replace {NET_A} via {PPP_LOCAL}",
        "flushing routes": f"{sudo} {ip} route flush all",
        "ip beyond routes": f"{sudo} {ip} link set lan0 down",
        "pkill with another pid file": f"{sudo} {pkill} -TERM -x -F /run/sshd.pid sshd",
        "pkill of the pid file but another name": f"{sudo} {pkill} -TERM -x -F {PIDFILE} sshd",
        "pkill by pattern": f"{sudo} {pkill} -TERM sshd",
        "pkill with the arguments spread": f"{sudo} {pkill} -TERM -x -F {PIDFILE} pppd sshd",
        "an environment variable for sudo": (
            f"{sudo} LD_PRELOAD={home}/x.so {ip} route add {NET_A} via {PPP_LOCAL}"
        ),
        "a root shell": f"{sudo} -s id",
        "a login as root": f"{sudo} -i id",
        "sudo to root by name": f"{sudo} -u root id",
        "sudoedit of the peers file": f"{sudo} -e /etc/ppp/peers/pppssh-{SITE}",
        "rewriting the peers file": f"echo 'pty /bin/sh' >> /etc/ppp/peers/pppssh-{SITE}",
        "a script in ip-up.d": f"printf '#!/bin/sh\\n{ROOT_CMD}\\n' > /etc/ppp/ip-up.d/zz",
        "a sudoers drop-in": "echo 'tunnel ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/zz",
        "the link filter script": f"echo '{ROOT_CMD}' >> /etc/ppp/ip-up.d/pppssh-{SITE}",
    }
    stopped = {what: attack(lab, key, what, command) for what, command in tries.items()}
    for what, why in stopped.items():
        if tries[what].startswith("sudo"):
            assert "sudo:" in why, f"{what}: stopped by something else than sudo: {why}"
        else:
            assert "Permission denied" in why, f"{what}: {why}"
    for marker in MARKERS:
        assert not marker.exists(), f"{marker} exists: an attack ran as root"
    assert not Path("/etc/ppp/ip-up.d/zz").exists() and not Path("/etc/sudoers.d/zz").exists()

    # What sudo -l tells the key holder: exactly the commands pppssh runs, nothing more.
    listed = lab.ssh(LINK_USER, key, "sudo -n -l")
    print(f"attack: sudo -l\n{listed.stdout}")
    assert listed.returncode == 0, show(listed)
    granted = [line.strip() for line in listed.stdout.splitlines() if "NOPASSWD:" in line]
    assert [g.split("NOPASSWD: ", 1)[1] for g in granted] == [
        " ".join(argv) for argv in sudo_commands(cfg)
    ], listed.stdout
    assert "ALL" not in " ".join(g.split("NOPASSWD: ", 1)[1] for g in granted)


def test_spoofed_sources_do_not_reach_the_far_lan(lab: Lab, plain_site: tuple[Path, Path]) -> None:
    """With the link up: UDP to ws-b from gw-a's LAN arrives; from ws-b's own LAN (10.2.0.99)
    and from the Internet (8.8.8.8, routable from gw-b) it is dropped on gw-b's pppN."""
    conf, _ = plain_site
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    rp = lab.run("gw-b", ["cat", f"/proc/sys/net/ipv4/conf/{if_b}/rp_filter"]).stdout.strip()
    rules = lab.run("gw-b", ["ip", "-4", "rule", "show"]).stdout.splitlines()
    print(f"gw-b {if_b}: rp_filter {rp}; rules:\n" + "\n".join(rules))
    assert rp == "1", "the ip-up.d filter did not run"
    assert any(r.startswith("5000:") and f"iif {if_b}" in r and "to 10.2.0.0/24" in r
               for r in rules), rules  # fmt: skip
    assert any(r.startswith("5001:") and f"iif {if_b}" in r and "prohibit" in r for r in rules)

    received = lab.dir / "udp-received"
    listener = lab.spawn("ws-b", [
        "python3", "-c",
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',9999))\n"
        "while True:\n"
        "    data,addr=s.recvfrom(100)\n"
        f"    open({str(received)!r},'a').write(addr[0]+' '+data.decode()+'\\n')\n",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    spoofed = ["10.2.0.99", "8.8.8.8"]
    try:
        for addr in spoofed:
            lab.run("gw-a", ["ip", "addr", "add", f"{addr}/32", "dev", "lo"])
        # a way back to 8.8.8.8 from gw-b that is not the link: only strictness stops it
        lab.run("gw-b", ["ip", "route", "add", "default", "via", GW_A_WAN])
        send = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((sys.argv[1],0))\n"
            f"s.sendto(sys.argv[-1].encode(),({WS_B!r},9999))\n"
        )
        bound = ["ss", "-Hlun", "sport = :9999"]
        assert wait_for(lambda: ":9999" in lab.run("ws-b", bound).stdout, 30), "no listener"
        # the spoofed ones first: the same path delivers in order, so once the last has
        # arrived, the others have arrived too or were dropped on the way
        for source in [*spoofed, GW_A_LAN]:
            lab.run("gw-a", ["python3", "-c", send, source])
        assert wait_for(lambda: received.exists() and GW_A_LAN in received.read_text(), 10), (
            "the legitimate packet from gw-a's LAN did not arrive: the test cannot tell"
        )
        got = received.read_text().split()
        for source in spoofed:
            print(f"attack: UDP to {WS_B} from {source} through the link: "
                  f"{'DELIVERED' if source in got else f'dropped on gw-b {if_b} (rp_filter 1)'}")  # fmt: skip
            assert source not in got, f"a packet from {source} reached ws-b"
        # The control: with gw-b's filter on pppN off, the same packet arrives (so the test
        # sees a delivery when there is one).
        lab.run("gw-b", ["sysctl", "-qw", f"net.ipv4.conf.{if_b}.rp_filter=0"])
        lab.run("gw-a", ["python3", "-c", send, spoofed[0], "unfiltered"])
        assert wait_for(lambda: "unfiltered" in received.read_text(), 10), received.read_text()
        print(f"control: with rp_filter 0 on {if_b}, the packet from {spoofed[0]} arrives")
    finally:
        listener.kill()
        lab.run("gw-b", ["ip", "route", "del", "default", "via", GW_A_WAN], check=False)
        for addr in spoofed:
            lab.run("gw-a", ["ip", "addr", "del", f"{addr}/32", "dev", "lo"], check=False)
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    rules = lab.run("gw-b", ["ip", "-4", "rule", "show"]).stdout
    assert "5000:" not in rules and "5001:" not in rules, f"ip-down left rules: {rules}"
    assert no_leftovers(lab) == []
