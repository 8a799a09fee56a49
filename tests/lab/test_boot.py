"""Starting at boot: the systemd notify protocol of --foreground, and the LSB init script."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.lab.netlab import WS_B, Lab
from tests.lab.test_tunnel import REPO, no_leftovers, pppssh

pytestmark = pytest.mark.lab


def test_foreground_speaks_sd_notify(lab: Lab) -> None:
    """READY=1 only once routes are in place; SIGTERM (systemctl stop) undoes everything."""
    conf = lab.write_site_conf("site-b")
    path = lab.dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(120)
    proc = lab.spawn(
        "gw-a",
        ["env", f"NOTIFY_SOCKET={path}", f"PYTHONPATH={REPO}",
         sys.executable, "-m", "pppssh", "start", "--foreground", str(conf)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        connecting = sock.recv(4096).decode()
        assert connecting == "STATUS=connecting to vpn@198.51.100.2:22", connecting
        assert not [r for r in lab.routes("gw-a") if r.startswith("10.2.0.0/24")]
        ready = sock.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1", ready
        assert "STATUS=up: ppp" in ready
        # READY means routes are there already, on both sides
        assert any(r.startswith("10.2.0.0/24 via 192.168.77.2 dev ppp") for r in lab.routes("gw-a"))
        assert any(r.startswith("10.1.0.0/24 via 192.168.77.1 dev ppp") for r in lab.routes("gw-b"))
        assert lab.ping("ws-a", WS_B)
        assert proc.poll() is None, "--foreground must stay attached"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "pppssh: site-b stopped" in out.decode()
        assert no_leftovers(lab) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_foreground_bad_config_exit_2(lab: Lab) -> None:
    """A bad site file exits 2, which the unit's RestartPreventExitStatus= does not retry."""
    conf = lab.write_site_conf("site-b", ppp_proxyarp="sometimes")
    proc = pppssh(lab, "start", "--foreground", str(conf))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"pppssh: {conf}:") and "proxyarp: 'sometimes'" in proc.stderr
    unit = (REPO / "systemd" / "pppssh@.service").read_text()
    assert "RestartPreventExitStatus=2" in unit and "Type=notify" in unit


def test_init_script(lab: Lab) -> None:
    """scripts/pppssh.init start, status, stop for the sites in its config folder."""
    lab.write_site_conf("site-b")
    env = {
        "CONFDIR": str(lab.dir),
        "SITES": "site-b",
        "PPPSSH": f"{sys.executable} -m pppssh",
        "PYTHONPATH": str(REPO),
    }
    init = ["sh", str(REPO / "scripts" / "pppssh.init")]

    def run(verb: str) -> subprocess.CompletedProcess[str]:
        """One init script verb in gw-a."""
        return lab.run("gw-a", [*init, verb], check=False, timeout=180, env=env)

    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Starting pppssh link site-b" in started.stdout
        assert run("status").returncode == 0
        assert lab.ping("ws-a", WS_B)
        again = run("start")
        assert again.returncode == 0 and "already up" in again.stdout
        stopped = run("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert run("status").returncode == 3
        assert no_leftovers(lab) == []
    finally:
        pppssh(lab, "stop", "--all")


def test_start_survives_the_terminal_closing(lab: Lab) -> None:
    """The background process outlives the shell that ran `start` (own session, no tty)."""
    conf = lab.write_site_conf("site-b")
    try:
        shell = lab.run(
            "gw-a",
            ["setsid", "sh", "-c", f"{sys.executable} -m pppssh start {conf}; kill -HUP 0"],
            check=False, timeout=180, env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert "is up" in shell.stdout, shell.stdout + shell.stderr
        status = pppssh(lab, "status", "site-b")
        assert status.returncode == 0, status.stdout
        assert lab.ping("ws-a", WS_B)
    finally:
        stopped = pppssh(lab, "stop", "site-b")
    assert stopped.returncode == 0
    assert os.path.exists("/run/pppssh/site-b.json") is False
