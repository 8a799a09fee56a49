"""Reaching gw-b the way users must: through a bastion, an HTTP or SOCKS5 proxy, with keys in
an agent or a user certificate; each path also with a changed host key, refused.

gw-a has no route to gw-b's inner address (100.67.0.2): only the bastion's sshd, tinyproxy
and `ssh -D` in the bastion namespace reach it (netlab.add_bastion).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pppssh.commands import HELPER_PATH
from tests.lab.netlab import (
    BASTION_WAN,
    GW_B_INNER,
    HTTP_PROXY_PORT,
    PROXY_PASSWORD,
    PROXY_USER,
    SOCKS_PORT,
    WS_B,
    Bastion,
    Lab,
    add_bastion,
    wait_for,
)
from tests.lab.test_tunnel import no_leftovers, pppssh, show, stop_all

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

OK = "\u2713"
SITE = "reach"


@pytest.fixture(scope="module")
def bastion(lab: Lab) -> Iterator[Bastion]:
    """The bastion namespace, its sshd and gw-b's inner sshd, for this module."""
    made = add_bastion(lab)
    try:
        yield made
    finally:
        made.close()


def conf(lab: Lab, bastion: Bastion, variant: str, setup: bool = False, **remote: object) -> Path:
    """A site file (site `reach`, file reach-VARIANT.conf) for gw-b's inner address, its
    known_hosts the bastion's; set up on gw-b with remote-setup when asked."""
    sections = {"remote": {"host": GW_B_INNER, "known_hosts": str(bastion.known_hosts), **remote}}
    written = lab.write_site_conf(SITE, sections=sections, setup=setup)
    path = lab.dir / f"{SITE}-{variant}.conf"
    path.write_text(written.read_text())
    return path


def changed_known_hosts(bastion: Bastion, address: str) -> Path:
    """A copy of the bastion's known_hosts in which address has another key."""
    other = bastion.dir / f"other_{address}"
    if not other.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)  # fmt: skip
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    lines = [
        f"{address} {kind} {blob}" if line.split()[0] == address else line
        for line in bastion.known_hosts.read_text().splitlines()
    ]
    path = bastion.dir / f"known_hosts.changed-{address}"
    path.write_text("\n".join(lines) + "\n")
    return path


def refused(lab: Lab, path: Path, message: str) -> str:
    """`start` must fail with message on one line of stderr and change nothing."""
    before = {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")}
    proc = pppssh(lab, "start", str(path))
    assert proc.returncode != 0, show(proc)
    hits = [line for line in proc.stderr.splitlines() if message in line]
    assert hits, show(proc)
    assert {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")} == before
    assert no_leftovers(lab) == []
    print(f"attack/refusal: {message} -> {hits[0]}")
    return hits[0]


def up_and_down(lab: Lab, path: Path) -> str:
    """Start the site, ping ws-b from ws-a through it, stop it; return start's stdout."""
    started = pppssh(lab, "start", str(path))
    assert started.returncode == 0, show(started)
    try:
        assert lab.ping("ws-a", WS_B, count=3), "no traffic through the tunnel"
    finally:
        stopped = pppssh(lab, "stop", str(path))
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []
    return started.stdout


def check_lines(lab: Lab, path: Path) -> dict[str, str]:
    """`pppssh check`: every line ✓; the lines by what they check."""
    proc = pppssh(lab, "check", str(path))
    assert proc.returncode == 0, show(proc)
    lines = proc.stdout.splitlines()
    assert all(line.startswith(OK + " ") for line in lines), show(proc)
    return {line[2:].split(":")[0]: line[2:].partition(": ")[2] for line in lines}


def test_through_a_bastion(lab: Lab, bastion: Bastion, stop_all: None) -> None:
    """gw-a reaches only the bastion; the link runs through it; a changed bastion key stops
    everything before any login."""
    assert lab.run("gw-a", ["ip", "route", "get", GW_B_INNER], check=False).returncode != 0
    path = conf(lab, bastion, "jump", setup=True, jump=f"{lab.user}@{BASTION_WAN}",
                jump_identity=str(bastion.jump_key))  # fmt: skip
    lines = check_lines(lab, path)
    assert lines["SSH path"] == f"jump host {lab.user}@{BASTION_WAN}:22, then " \
        f"{lab.user}@{GW_B_INNER}:22"  # fmt: skip
    assert lines["SSH reachable"].startswith(f"{BASTION_WAN}:22 (SSH-2.0-OpenSSH")
    assert lines["host key known"].endswith("(and of 1 jump host(s))")
    assert lines["key accepted"].startswith(f"{lab.user}@{GW_B_INNER} with ssh-ed25519 SHA256:")

    started = pppssh(lab, "start", str(path))
    assert started.returncode == 0, show(started)
    try:
        relayed = bastion.run(["ss", "-Htn", "state", "established", "dst", f"{GW_B_INNER}:22"])
        assert relayed.stdout.strip(), "the bastion must carry the SSH connection to gw-b"
        assert lab.ping("ws-a", WS_B, count=3)
    finally:
        assert pppssh(lab, "stop", str(path)).returncode == 0
    assert no_leftovers(lab) == []

    logins = (bastion.dir / "sshd-bastion.log").read_text().count("Accepted publickey")
    bad = conf(lab, bastion, "jump-bad", jump=f"{lab.user}@{BASTION_WAN}",
               jump_identity=str(bastion.jump_key),
               known_hosts=str(changed_known_hosts(bastion, BASTION_WAN)))  # fmt: skip
    line = refused(lab, bad, f"jump host HOST KEY CHANGED: {BASTION_WAN}:22 now presents")
    assert "Nothing was started" in line
    assert (bastion.dir / "sshd-bastion.log").read_text().count("Accepted publickey") == logins


def test_http_proxy_and_user_certificate(lab: Lab, bastion: Bastion, stop_all: None) -> None:
    """Only tinyproxy (basic auth) leads out; the login is a certificate from the CA gw-b's
    sshd trusts, carrying the same forced command as the site's key line."""
    bastion.start_http_proxy()
    try:
        conf(lab, bastion, "plain", setup=True)  # the site's helper policy on gw-b
        key = bastion.dir / "id_cert"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)  # fmt: skip
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(bastion.user_ca), "-I", "pppssh-reach", "-n",
             lab.user, "-V", "+1h", "-O", "clear", "-O", "permit-pty",
             "-O", f"force-command={HELPER_PATH} {SITE}", f"{key}.pub"],
            check=True,
        )  # fmt: skip
        auth = bastion.dir / "proxy.auth"
        auth.write_text(f"{PROXY_USER}:{PROXY_PASSWORD}\n")
        auth.chmod(0o600)
        proxy = f"http://{BASTION_WAN}:{HTTP_PROXY_PORT}"
        common = {"proxy": proxy, "identity": str(key), "certificate": f"{key}-cert.pub"}

        no_auth = conf(lab, bastion, "http-noauth", **common)
        refused(lab, no_auth, f"proxy {proxy} refused CONNECT {GW_B_INNER}:22: HTTP/1.")

        path = conf(lab, bastion, "http", proxy_auth=str(auth), **common)
        lines = check_lines(lab, path)
        assert lines["proxy reachable"] == f"{BASTION_WAN}:{HTTP_PROXY_PORT}"
        assert "with certificate" in lines["key accepted"]
        up_and_down(lab, path)
        log = (bastion.dir / "sshd-inner.log").read_text()
        assert "ED25519-CERT" in log and "CA ED25519" in log, log[-2000:]

        bad = conf(lab, bastion, "http-bad", proxy_auth=str(auth), **common,
                   known_hosts=str(changed_known_hosts(bastion, GW_B_INNER)))  # fmt: skip
        refused(lab, bad, f"HOST KEY CHANGED: {GW_B_INNER}:22 now presents")
    finally:
        bastion.stop("tinyproxy")


def test_socks5_proxy_and_agent(lab: Lab, bastion: Bastion, stop_all: None) -> None:
    """`ssh -D` in the bastion leads out; the key is in ssh-agent alone (no key file); an
    agent socket in a directory others may enter is refused."""
    bastion.start_socks_proxy()
    folder = lab.dir / "agent"
    folder.mkdir(mode=0o700, exist_ok=True)
    sock = folder / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    key = lab.site_key(SITE)
    aside = key.with_name(key.name + ".aside")
    try:
        assert wait_for(sock.exists, timeout=10)
        conf(lab, bastion, "plain", setup=True)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, stderr=subprocess.DEVNULL)  # fmt: skip
        proxy = f"socks5://{BASTION_WAN}:{SOCKS_PORT}"
        path = conf(lab, bastion, "socks", identity=None, agent=str(sock), proxy=proxy)
        bad = conf(lab, bastion, "socks-bad", identity=None, agent=str(sock), proxy=proxy,
                   known_hosts=str(changed_known_hosts(bastion, GW_B_INNER)))  # fmt: skip
        os.rename(key, aside)  # no key file at all: the agent holds the only copy
        lines = check_lines(lab, path)
        assert lines["SSH path"].startswith(f"proxy {proxy}, then ")
        assert lines["key accepted"].endswith("(agent)"), lines
        up_and_down(lab, path)
        refused(lab, bad, f"HOST KEY CHANGED: {GW_B_INNER}:22 now presents")
        folder.chmod(0o711)
        refused(lab, path, f"agent socket {sock}: its directory is owned by uid 0 with mode 0711")
    finally:
        folder.chmod(0o700)
        if aside.exists():
            os.rename(aside, key)
        agent.terminate()
        agent.wait()
        bastion.stop("socks")
