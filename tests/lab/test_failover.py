"""Two remote gateways in `host`: the first down at start, the link on the second, a failback
probe that fails while the first is still down (the link kept), the link moved back once the
first answers; and the second's host key changed, refused.

The first gateway is a second sshd in gw-b on an address of its own (198.51.100.3, with a
host key of its own); the second is the lab's sshd on 198.51.100.2. Both run the same
account, helper and pppd set-up (the gateways share one file system), as two gateways of one
site set up alike would.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.netlab import ADMIN, GW_B_WAN, LINK_USER, SSHD_CONFIG, WS_B, Lab, wait_for
from tests.lab.test_tunnel import RUN_DIR, no_leftovers, pppssh, show, stop_all

pytestmark = pytest.mark.lab
__all__ = ["stop_all"]  # the fixture, used by name below

OK = "\u2713"
FIRST = "198.51.100.3"
SITE = "fo"
FIRST_AT, SECOND_AT = f"{FIRST}:22", f"{GW_B_WAN}:22"


@dataclass
class First:
    """The first gateway: an sshd in gw-b on FIRST, started and stopped by the test."""

    lab: Lab
    dir: Path
    known_hosts: Path  # the first's key and the lab's sshd's (the second)
    sshd: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start its sshd and wait until it listens."""
        config = self.dir / "sshd_config"
        self.sshd = self.lab.spawn("gw-b", ["/usr/sbin/sshd", "-D", "-f", str(config),
                                            "-E", str(self.dir / "sshd.log")],
                                   stdin=subprocess.DEVNULL)  # fmt: skip

        def listening() -> bool:
            """It listens on FIRST:22 (or has died)."""
            assert self.sshd is not None and self.sshd.poll() is None, "sshd died"
            return FIRST in self.lab.run("gw-b", ["ss", "-Hltn", "sport = :22"]).stdout

        assert wait_for(listening, timeout=30), "the first gateway's sshd does not listen"

    def stop(self) -> None:
        """Stop its listening sshd (sessions end with their connections)."""
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(10)
        self.sshd = None


@pytest.fixture(scope="module")
def first(lab: Lab) -> Iterator[First]:
    """FIRST on gw-b's wan0 (a /32: no route changes), its host key, its sshd config."""
    folder = Path(tempfile.mkdtemp(prefix="pppssh-failover-", dir="/run"))
    lab.run("gw-b", ["ip", "addr", "add", f"{FIRST}/32", "dev", "wan0"])
    made = First(lab, folder, folder / "known_hosts")
    try:
        key = folder / "ssh_host_ed25519_key"
        lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        kind, blob = Path(f"{key}.pub").read_text().split()[:2]
        second = next(line for line in lab.known_hosts.read_text().splitlines()
                      if line.split()[0] == GW_B_WAN)  # fmt: skip
        made.known_hosts.write_text(f"{FIRST} {kind} {blob}\n{second}\n")
        (folder / "sshd_config").write_text(SSHD_CONFIG.format(
            ns=lab.ns("gw-b"), user=lab.user, addr=FIRST, dir=folder, admin=ADMIN,
            link_user=LINK_USER,
        ))  # fmt: skip
        lab.run(None, ["/usr/sbin/sshd", "-t", "-f", str(folder / "sshd_config")])
        yield made
    finally:
        made.stop()
        lab.run("gw-b", ["ip", "addr", "del", f"{FIRST}/32", "dev", "wan0"], check=False)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def conf(lab: Lab, known_hosts: Path, variant: str) -> Path:
    """Site `fo` with both gateways, first FIRST; failback after 6 s; set up on gw-b."""
    written = lab.write_site_conf(SITE, sections={
        "site": {"failback": "6", "reconnect_delay": "1"},
        "remote": {"host": f"{FIRST}, {GW_B_WAN}", "known_hosts": str(known_hosts)},
    }, setup=True)  # fmt: skip
    path = lab.dir / f"{SITE}-{variant}.conf"
    path.write_text(written.read_text())
    return path


def status(lab: Lab) -> dict[str, object]:
    """`pppssh status --json` of the site."""
    proc = pppssh(lab, "status", "--json", SITE)
    sites = json.loads(proc.stdout)["sites"]
    assert len(sites) == 1, show(proc)
    return dict(sites[0])


def log_lines() -> list[str]:
    """The daemon's log, line by line (stamps removed)."""
    path = RUN_DIR / f"{SITE}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line.split(" ", 1)[-1] for line in text.splitlines()]


def test_first_down_at_start_then_failback(lab: Lab, first: First, stop_all: None) -> None:
    """Start on the second while the first is down; a failback probe to the still-down first
    keeps the link; once the first is up, the probe logs in and the link moves back to it."""
    path = conf(lab, first.known_hosts, "both")
    started = pppssh(lab, "start", str(path))
    assert started.returncode == 0, show(started)
    assert f"gateway 2 of 2: {SECOND_AT}" in started.stdout, show(started)
    assert f"; trying the next gateway, {SECOND_AT}, now" in started.stdout, show(started)
    assert f"192.168.77.2 via {SECOND_AT} (pid" in started.stdout, show(started)
    up = status(lab)
    assert (up["state"], up["server"], up["servers"]) == ("up", SECOND_AT, [FIRST_AT, SECOND_AT])
    assert lab.ping("ws-a", WS_B, count=2)
    table = pppssh(lab, "status", SITE).stdout
    assert f"{SITE} gateway: {SECOND_AT} (2 of 2: {FIRST_AT}, {SECOND_AT})" in table

    # failback with the first still down: one refused probe, the link untouched
    refused = f"failback: {FIRST_AT} not ready"
    assert wait_for(lambda: any(refused in line for line in log_lines()), timeout=30), \
        "\n".join(log_lines())  # fmt: skip
    still = status(lab)
    assert (still["state"], still["server"], still["interface"]) == ("up", SECOND_AT,
                                                                      up["interface"])  # fmt: skip
    assert still["reconnects"] == up["reconnects"] and not any(
        line.startswith("link down") for line in log_lines()
    )

    # the first comes back: the next probe logs in, then the link moves
    first.start()

    def on_first() -> bool:
        """The link is up again, on the first gateway."""
        now = status(lab)
        return now["state"] == "up" and now["server"] == FIRST_AT

    assert wait_for(on_first, timeout=60, interval=0.5), "\n".join(log_lines())
    lines = log_lines()
    accepted = next(i for i, line in enumerate(lines)
                    if f"failback: {FIRST_AT} accepts the login (host key known" in line)  # fmt: skip
    dropped = next(i for i, line in enumerate(lines) if line == "stopping")
    assert accepted < dropped, "\n".join(lines)  # the probe first, then the old link's teardown
    assert any("is up again: " in line and line.endswith(f"192.168.77.2 via {FIRST_AT}")
               for line in lines[dropped:]), "\n".join(lines)  # fmt: skip
    conn = lab.run("gw-a", ["ss", "-Htn", "state", "established", "dst", FIRST]).stdout
    assert ":22" in conn, conn  # the SSH connection that carries the link goes to the first
    assert lab.ping("ws-a", WS_B, count=2)

    checked = pppssh(lab, "check", str(path))
    for where in (FIRST_AT, SECOND_AT):
        assert f"{OK} {where}: host key known" in checked.stdout, show(checked)
        assert f"{OK} {where}: key accepted" in checked.stdout, show(checked)

    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)
    assert no_leftovers(lab) == []


def test_changed_host_key_on_the_second_is_refused(lab: Lab, first: First) -> None:
    """The first down, the second presenting a key other than known_hosts holds for it: the
    start fails naming the changed key, and nothing is left on either gateway."""
    first.stop()
    other = first.dir / "other_key"
    lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    changed = first.dir / "known_hosts.changed"
    changed.write_text("".join(
        f"{GW_B_WAN} {kind} {blob}\n" if line.split()[0] == GW_B_WAN else line + "\n"
        for line in first.known_hosts.read_text().splitlines()
    ))  # fmt: skip
    before = {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")}
    proc = pppssh(lab, "start", str(conf(lab, changed, "changed")))
    assert proc.returncode != 0, show(proc)
    hits = [
        line
        for line in proc.stderr.splitlines()
        if "every gateway failed" in line and f"HOST KEY CHANGED: {SECOND_AT}" in line
    ]
    assert hits, show(proc)
    assert {ns: lab.routes(ns) for ns in ("gw-a", "gw-b")} == before
    assert no_leftovers(lab) == []
    print(f"attack/refusal: changed host key on the second gateway -> {hits[0]}")


def test_remote_setup_applies_to_each_gateway(lab: Lab, first: First) -> None:
    """`remote-setup --apply` over an administrator's login: with the first gateway down, the
    second is still set up and the first is named as failed (exit non-zero); with both up,
    one `set-up done` line each, in order, exit 0. Each login checks its own host key."""
    admin, admin_key = lab.make_admin()
    path = conf(lab, first.known_hosts, "apply")
    argv = ["remote-setup", "--apply", "--admin", admin, "--admin-identity", str(admin_key)]
    first.stop()
    proc = pppssh(lab, *argv, str(path))
    assert proc.returncode != 0, show(proc)
    assert f"pppssh remote-setup: {SECOND_AT}: set-up done" in proc.stdout, show(proc)
    failed = [x for x in proc.stderr.splitlines() if ": set-up failed: " in x]
    assert len(failed) == 1 and failed[0].startswith(
        f"pppssh remote-setup: {FIRST_AT}: set-up failed: cannot connect to {FIRST}:22"
    ), show(proc)
    first.start()
    try:
        proc = pppssh(lab, *argv, str(path))
        assert proc.returncode == 0, show(proc)
        done = [x for x in proc.stdout.splitlines() if x.endswith(": set-up done")]
        assert done == [f"pppssh remote-setup: {where}: set-up done"
                        for where in (FIRST_AT, SECOND_AT)], show(proc)  # fmt: skip
    finally:
        first.stop()
