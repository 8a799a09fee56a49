"""The restricted remote account: `pppssh remote-setup --apply`, a link through pppssh-helper,
and everything else that key might try, refused with nothing changed on gw-b."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import (
    GW_A_WAN,
    GW_B_WAN,
    LINK_USER,
    NET_A,
    NET_B,
    PPP_LOCAL,
    PPP_REMOTE,
    WS_A,
    WS_B,
    Lab,
)
from tests.lab.test_tunnel import no_leftovers, ppp_link, pppssh, show

pytestmark = pytest.mark.lab

SITE = "site-h"
HELPER = Path("/usr/local/libexec/pppssh-helper")
POLICY = Path(f"/etc/pppssh-helper/pppssh-{SITE}.policy")
OLD_POLICY = Path(f"/etc/pppssh/helper/pppssh-{SITE}.policy")  # where it was kept before
IP_UP = Path(f"/etc/ppp/ip-up.d/pppssh-{SITE}")
IP_DOWN = Path(f"/etc/ppp/ip-down.d/pppssh-{SITE}")
PEERS = Path(f"/etc/ppp/peers/pppssh-{SITE}")
SUDOERS = Path(f"/etc/sudoers.d/pppssh-{SITE}")
CANARY = Path("/tmp/pppssh-helper-canary")
SECOND_SOURCE = "198.51.100.3"  # another address of gw-a, not in the key's from=


class Syslog:
    """A stand-in syslog on /dev/log (the lab has none) that keeps what it receives."""

    def __init__(self) -> None:
        """Bind /dev/log and collect datagrams in a thread."""
        self.lines: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("/dev/log")
        Path("/dev/log").chmod(0o666)
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        """Receive until the socket is closed."""
        with contextlib.suppress(OSError):
            while True:
                self.lines.append(self.sock.recv(4096).decode(errors="replace"))

    def close(self) -> None:
        """Unbind /dev/log."""
        Path("/dev/log").unlink(missing_ok=True)
        self.sock.close()


@pytest.fixture
def syslog() -> Iterator[Syslog]:
    """Our own /dev/log for the test's duration."""
    if Path("/dev/log").exists():
        pytest.fail("/dev/log exists: this test needs the lab kernel, where nothing logs there")
    log = Syslog()
    yield log
    log.close()


@pytest.fixture
def helper_site(lab: Lab) -> Iterator[tuple[Path, Path]]:
    """A site file with helper = yes for the account `tunnel`, and its key; removed after."""
    key = lab.dir / "tunnel_ed25519"
    if not key.exists():
        lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    conf = lab.write_site_conf(
        SITE, remote_user=LINK_USER, remote_identity=key, remote_helper="yes",
        remote_from=GW_A_WAN, setup=False,  # the test sets it up itself, as an administrator
    )  # fmt: skip
    admin, admin_key = lab.make_admin()
    yield conf, key
    pppssh(lab, "stop", SITE)
    pppssh(lab, "remote-setup", "--remove", "--apply", "--admin", admin,
           "--admin-identity", str(admin_key), str(conf))  # fmt: skip
    CANARY.unlink(missing_ok=True)
    conf.unlink()  # the init script test starts every site file in the lab folder


def gw_b_files() -> dict[str, bool]:
    """Which of remote-setup's files exist on gw-b (the lab's gateways share one filesystem)."""
    return {str(p): p.exists() for p in (HELPER, POLICY, PEERS, SUDOERS, IP_UP, IP_DOWN)}


def authorized_keys() -> list[str]:
    """The link account's key lines."""
    home = Path(pwd.getpwnam(LINK_USER).pw_dir)
    return (home / ".ssh" / "authorized_keys").read_text().splitlines()


def test_remote_setup_helper_link_and_refusals(
    lab: Lab, helper_site: tuple[Path, Path], syslog: Syslog
) -> None:
    """Apply the set-up as an administrator, run the link through the helper, then try
    everything else with that key: each try refused and logged, nothing changed on gw-b."""
    conf, key = helper_site
    admin, admin_key = lab.make_admin()
    with pytest.raises(KeyError):
        pwd.getpwnam(LINK_USER)

    before = gw_b_files()  # the helper itself may be there already, for the lab's other sites
    assert not any(v for k, v in before.items() if k != str(HELPER)), before
    printed = pppssh(lab, "remote-setup", str(conf))
    assert printed.returncode == 0, show(printed)
    assert gw_b_files() == before, "printing must change nothing"

    apply = ["remote-setup", "--apply", "--admin", admin, "--admin-identity", str(admin_key)]
    applied = pppssh(lab, *apply, str(conf))
    assert applied.returncode == 0, show(applied)
    assert f"created account {LINK_USER}" in applied.stdout
    assert all(gw_b_files().values()), gw_b_files()
    shadow = lab.run(None, ["getent", "shadow", LINK_USER]).stdout.split(":")
    assert shadow[1] == "*", "the link account has no password"
    lines = authorized_keys()
    assert len(lines) == 1
    assert lines[0].startswith(
        f'restrict,pty,command="{HELPER} {SITE}",from="{GW_A_WAN}" ssh-ed25519 '
    ), lines
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1s5m6YhXyU0e1AIW3Gdp0VKEmzq5G9n3a9X4jPz0pB other"
    keys_file = Path(pwd.getpwnam(LINK_USER).pw_dir) / ".ssh" / "authorized_keys"
    keys_file.write_text(f"{other}\n" + keys_file.read_text())
    again = pppssh(lab, *apply, str(conf))
    assert again.returncode == 0, show(again)
    assert "created account" not in again.stdout
    assert authorized_keys() == [other, *lines], "applying again replaces only its own line"

    # The sudo layer on its own: the account may run the helper's exact commands, no others.
    def sudo(*argv: str) -> int:
        return lab.run("gw-b", ["sudo", "-n", *argv], check=False, user=LINK_USER).returncode

    assert sudo("/usr/sbin/pppd") != 0
    assert sudo("/usr/sbin/pppd", "call", "pppssh-site-b") != 0
    assert sudo("/usr/sbin/ip", "route", "add", "10.9.0.0/24", "via", PPP_LOCAL) != 0
    assert sudo("/usr/bin/id") != 0

    # The preflight asks the helper (`check`), which asks sudo and changes nothing.
    checked = pppssh(lab, "check", str(conf))
    assert checked.returncode == 0 and "\u2717" not in checked.stdout, show(checked)
    assert "\u2713 remote sudo allows pppd: /usr/sbin/pppd call pppssh-site-h;" in checked.stdout
    assert "\u2713 remote sudo allows the routes: /usr/sbin/ip route add|del for 1 network(s)" in (
        checked.stdout
    )
    assert "\u2713 remote link filter" in checked.stdout

    # The link, through the helper.
    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    checked = pppssh(lab, "check", str(conf))
    assert checked.returncode == 0, f"the running link is not a clash: {show(checked)}"
    remote = f"[{LINK_USER}@{GW_B_WAN}]"
    assert f"{remote} pppd\n" in started.stdout, started.stdout
    assert f"{remote} route add {NET_A} via {PPP_LOCAL}\n" in started.stdout
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    ppp_link(lab, "gw-a", PPP_LOCAL, PPP_REMOTE)
    assert f"{NET_A} via {PPP_LOCAL} dev {if_b}" in lab.routes("gw-b")
    # the link filter pppd ran through ip-up.d: strict rp_filter, forwarding only to NET_B
    rules = lab.run("gw-b", ["ip", "-4", "rule", "show"]).stdout.splitlines()
    assert any(r.startswith("5000:") and f"iif {if_b}" in r and f"to {NET_B}" in r for r in rules)
    assert any(r.startswith("5001:") and f"iif {if_b}" in r and "prohibit" in r for r in rules)
    rp = lab.run("gw-b", ["cat", f"/proc/sys/net/ipv4/conf/{if_b}/rp_filter"]).stdout.strip()
    assert rp == "1", rules
    assert lab.ping("ws-a", WS_B, count=3) and lab.ping("ws-b", WS_A, count=3)
    status = pppssh(lab, "status", SITE)
    assert status.returncode == 0 and if_b in status.stdout, show(status)
    pppd_pids = lab.pids("gw-b", "pppd")
    routes_up = lab.routes("gw-b")
    logged_before = len([x for x in syslog.lines if "refused" in x])

    # Everything else that key might try.
    tries = {
        "a login shell": [],
        "an arbitrary command": ["id"],
        "a shell command": ["sh", "-c", "id"],
        "a route outside the allow-list": ["route add 10.9.0.0/24 via 192.168.77.1"],
        "a default route": ["route add default via 192.168.77.1"],
        "the whole address space": ["route add 0.0.0.0/0 via 192.168.77.1"],
        "a route via another gateway": [f"route add {NET_A} via 10.2.0.10"],
        "removing a route it may not": ["route del 10.2.0.0/24 via 192.168.77.1"],
        "pppd with options": ["pppd pty /bin/sh"],
        "pppd with a plugin": ["pppd plugin /tmp/x.so"],
        "a semicolon": [f"route add {NET_A} via {PPP_LOCAL}; touch {CANARY}"],
        "a command substitution": [f"route add $(touch {CANARY}) via {PPP_LOCAL}"],
        "backquotes": [f"route add `touch {CANARY}` via {PPP_LOCAL}"],
        "a newline": [f"interface\ntouch {CANARY}"],
        "a pipe": [f"interface | touch {CANARY}"],
        "an ampersand": [f"pppd & touch {CANARY}"],
    }
    for what, command in tries.items():
        proc = lab.ssh(LINK_USER, key, *command)
        assert proc.returncode == 126, f"{what}: {show(proc)}"
        assert "pppssh-helper: refused:" in proc.stderr, f"{what}: {show(proc)}"
    shell = lab.ssh(LINK_USER, key, tty=True)
    assert shell.returncode == 126 and "refused: a login shell" in shell.stdout, show(shell)
    forward = lab.ssh(LINK_USER, key, options=("-W", f"{WS_B}:22"))
    assert forward.returncode != 0, f"port forwarding must be refused: {show(forward)}"
    lab.run("gw-a", ["ip", "addr", "add", f"{SECOND_SOURCE}/24", "dev", "wan0"])
    try:
        elsewhere = lab.ssh(LINK_USER, key, "interface", source=SECOND_SOURCE)
    finally:
        lab.run("gw-a", ["ip", "addr", "del", f"{SECOND_SOURCE}/24", "dev", "wan0"])
    assert elsewhere.returncode == 255 and "Permission denied" in elsewhere.stderr, (
        f"from= must refuse the key from {SECOND_SOURCE}: {show(elsewhere)}"
    )

    assert not CANARY.exists(), "a refused request ran a command"
    assert lab.routes("gw-b") == routes_up, "a refused request changed gw-b's routes"
    assert lab.pids("gw-b", "pppd") == pppd_pids, "a refused request touched pppd"
    refusals = [x for x in syslog.lines if "refused" in x][logged_before:]
    assert len(refusals) >= len(tries) + 1, syslog.lines
    assert all(f"site={SITE} user={LINK_USER} client={GW_A_WAN}" in x for x in refusals), refusals
    assert all(x.startswith("<36>") for x in refusals), refusals  # auth.warning
    assert lab.ping("ws-a", WS_B), "the link must be untouched by the refused requests"

    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert f"{remote} route del {NET_A} via {PPP_LOCAL}\n" in stopped.stdout
    assert no_leftovers(lab) == []
    rules_after = lab.run("gw-b", ["ip", "-4", "rule", "show"]).stdout
    assert "5000:" not in rules_after and "5001:" not in rules_after, "ip-down left its rules"

    removed = pppssh(lab, "remote-setup", "--remove", *apply[1:], str(conf))
    assert removed.returncode == 0, show(removed)
    # The site's own files are gone; the shared helper stays exactly while another site's
    # policy is there (the lab's other sites, when the whole suite runs).
    others = sorted(POLICY.parent.glob("*.policy")) if POLICY.parent.is_dir() else []
    expected = dict.fromkeys(gw_b_files(), False) | {str(HELPER): bool(others)}
    assert gw_b_files() == expected, (gw_b_files(), others)
    assert authorized_keys() == [other], "an account that holds another key stays"
    keys_file.write_text("")
    removed = pppssh(lab, "remote-setup", "--remove", *apply[1:], str(conf))
    assert removed.returncode == 0, show(removed)
    assert f"removed account {LINK_USER}" in removed.stdout
    with pytest.raises(KeyError):
        pwd.getpwnam(LINK_USER)
    assert not Path(f"/etc/sudoers.d/.pppssh-{SITE}.new").exists()


@contextlib.contextmanager
def closed_etc_pppssh() -> Iterator[Path]:
    """/etc/pppssh at 0700, as on a gateway that also runs pppssh; its mode restored after."""
    etc = Path("/etc/pppssh")
    made = not etc.exists()
    etc.mkdir(exist_ok=True)
    mode = etc.stat().st_mode & 0o7777
    etc.chmod(0o700)
    try:
        yield etc
    finally:
        if made:
            with contextlib.suppress(OSError):
                (etc / "helper").rmdir()
            etc.rmdir()
        else:
            etc.chmod(mode)


def test_helper_reads_its_policy_when_etc_pppssh_is_0700(
    lab: Lab, helper_site: tuple[Path, Path]
) -> None:
    """The policy lives in its own root-owned 0755 directory: a 0700 /etc/pppssh does not
    hide it from the helper, an old policy there is taken away, and a directory made
    unreadable is made right again by the next run."""
    conf, key = helper_site
    admin, admin_key = lab.make_admin()
    apply = ["remote-setup", "--apply", "--admin", admin, "--admin-identity", str(admin_key)]
    with closed_etc_pppssh() as etc:
        OLD_POLICY.parent.mkdir(mode=0o755, exist_ok=True)
        OLD_POLICY.write_text("pppd /usr/sbin/pppd\n")  # an earlier set-up's, now out of reach
        applied = pppssh(lab, *apply, str(conf))
        assert applied.returncode == 0, show(applied)
        print(applied.stdout)
        assert f"removed the outdated helper policy {OLD_POLICY}" in applied.stdout
        assert not OLD_POLICY.exists() and not OLD_POLICY.parent.exists()
        assert etc.stat().st_mode & 0o777 == 0o700, "set-up must not loosen /etc/pppssh"
        assert POLICY.parent.stat().st_mode & 0o777 == 0o755
        assert POLICY.stat().st_mode & 0o777 == 0o644 and POLICY.stat().st_uid == 0
        answer = lab.ssh(LINK_USER, key, "check")
        assert answer.returncode == 0 and "pppd present" in answer.stdout, show(answer)

        POLICY.parent.chmod(0o700)  # broken by hand: the helper cannot read its policy
        broken = lab.ssh(LINK_USER, key, "check")
        assert broken.returncode == 1 and "no readable policy" in broken.stderr, show(broken)
        again = pppssh(lab, *apply, str(conf))
        assert again.returncode == 0, show(again)
        assert POLICY.parent.stat().st_mode & 0o777 == 0o755, "a second run repairs the mode"
        answer = lab.ssh(LINK_USER, key, "check")
        assert answer.returncode == 0 and "pppd present" in answer.stdout, show(answer)

        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)
        assert lab.ping("ws-a", WS_B, count=3)
        stopped = pppssh(lab, "stop", SITE)
        assert stopped.returncode == 0, show(stopped)


def zombie_of(user: str) -> tuple[int, int]:
    """A process of user that no signal can end (a zombie whose root parent does not reap it):
    the parent's id and the zombie's."""
    uid = pwd.getpwnam(user).pw_uid
    read_end, write_end = os.pipe()
    parent = os.fork()
    if parent == 0:  # the root parent: makes the zombie, tells its id, then only waits
        child = os.fork()
        if child == 0:
            os.setgid(uid)
            os.setuid(uid)
            os._exit(0)
        os.write(write_end, f"{child}\n".encode())
        os.close(write_end)
        signal.pause()
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        return parent, int(pipe.readline())


def test_removal_stops_the_link_that_is_up(lab: Lab, helper_site: tuple[Path, Path]) -> None:
    """`remote-setup --remove` with the link up and another process of the account: it stops
    the link (pppd, the filter rules ip-down does not get to remove, every process of the
    account), says so in one line, then removes everything, the account included; a process
    it cannot stop makes it fail first, with nothing removed."""
    conf, _key = helper_site
    admin, admin_key = lab.make_admin()
    apply = ["remote-setup", "--apply", "--admin", admin, "--admin-identity", str(admin_key)]
    remove = ["remote-setup", "--remove", *apply[1:], str(conf)]
    applied = pppssh(lab, *apply, str(conf))
    assert applied.returncode == 0, show(applied)

    parent, zombie = zombie_of(LINK_USER)
    try:
        refused = pppssh(lab, *remove)
    finally:
        os.kill(parent, 9)
        os.waitpid(parent, 0)
    assert refused.returncode == 1, show(refused)
    assert f"cannot stop processes {zombie} of {LINK_USER}; nothing removed" in refused.stderr, (
        show(refused)
    )
    assert all(gw_b_files().values()), f"nothing may be removed: {gw_b_files()}"
    pwd.getpwnam(LINK_USER)

    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    pppd = lab.pids("gw-b", "pppd")
    assert len(pppd) == 1, pppd
    leftover = lab.spawn("gw-b", ["sleep", "600"], user=LINK_USER)
    IP_DOWN.chmod(0o644)  # as after a pppd killed with KILL: ip-down does not remove the rules
    removed = pppssh(lab, *remove)
    assert removed.returncode == 0, show(removed)
    said = [x for x in removed.stdout.splitlines() if "stopped the link" in x]
    assert len(said) == 1, show(removed)
    assert said[0].startswith(
        f"pppssh remote-setup: stopped the link of site {SITE}: pppd {pppd[0]}, "
        f"the filter rules of {if_b}, "
    ) and said[0].endswith(f" process(es) of {LINK_USER}"), said
    assert f"removed account {LINK_USER}" in removed.stdout, show(removed)
    assert "userdel" not in removed.stdout + removed.stderr, show(removed)
    with pytest.raises(KeyError):
        pwd.getpwnam(LINK_USER)
    assert leftover.wait(timeout=10) is not None
    assert lab.pids("gw-b", "pppd") == []
    rules = lab.run("gw-b", ["ip", "-4", "rule", "show"]).stdout
    assert f"iif {if_b}" not in rules, rules
    others = sorted(POLICY.parent.glob("*.policy")) if POLICY.parent.is_dir() else []
    expected = dict.fromkeys(gw_b_files(), False) | {str(HELPER): bool(others)}
    assert gw_b_files() == expected, (gw_b_files(), others)
