"""The pppssh command: no ssl module (__main__.py), and how failures are reported (cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CODE = """
import sys
import pppssh.__main__ as main
main.without_tls()
import asyncio
import pppssh.adapters, pppssh.supervisor, pppssh.check, pppssh.remote_setup

async def echo_once():
    async def serve(reader, writer):
        writer.write(await reader.read(5))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"hello")
    got = await reader.read(5)
    writer.close()
    server.close()
    return got

print(asyncio.run(echo_once()).decode(), sys.modules.get("ssl"),
      any("libssl" in line for line in open("/proc/self/maps")))
"""


def test_command_line_runs_asyncio_without_ssl() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    ).stdout.split()  # fmt: skip
    assert out == ["hello", "None", "False"]


def test_ssl_is_there_without_it() -> None:
    """The contrast: imported as usual, asyncio loads ssl (and libssl) here."""
    code = "import asyncio, sys; print(sys.modules.get('ssl') is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()  # fmt: skip
    assert out == ["True"]


def test_failures_are_reported_one_line_or_with_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """How main() and the forked daemon report a failure: a PppsshError as its own line and
    its exit status (with -v its traceback first); Ctrl-C is 130; anything else is a bug and
    is not caught (Python prints its traceback)."""
    from pppssh.cli import _reported
    from pppssh.errors import ConfigError, Fail

    def boom() -> int:
        raise ValueError("no such thing")

    def refused() -> int:
        raise Fail("site 'x' is already running")

    def bad_file() -> int:
        raise ConfigError("/etc/pppssh/x.conf", 3, "mtu", "not a number")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert _reported(lambda: 7, verbose=False) == 7
    assert _reported(refused, verbose=False) == 1
    assert capsys.readouterr().err == "pppssh: site 'x' is already running\n"
    assert _reported(bad_file, verbose=False) == 2
    assert capsys.readouterr().err == "pppssh: /etc/pppssh/x.conf:3: mtu: not a number\n"
    assert _reported(refused, verbose=True) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith(
        "Fail: site 'x' is already running\npppssh: site 'x' is already running\n"
    )
    with pytest.raises(ValueError, match="no such thing"):
        _reported(boom, verbose=False)
    assert capsys.readouterr().err == ""
    assert _reported(interrupted, verbose=False) == 130


DAEMON = """
import os, signal, sys, time
from pathlib import Path
from pppssh.adapters import ReloadOutcome
from pppssh.events import Reloaded, ReloadRefused
outcome = ReloadOutcome("site-b", os.getpid())
serial = 0
def reload(*_):
    global serial
    serial += 1
    if serial == 1:
        outcome.report(Reloaded("site-b", serial, ("added local route x",)))
    else:
        outcome.report(ReloadRefused("site-b", serial, "[ppp] mtu changed"))
signal.signal(signal.SIGHUP, reload)
signal.signal(signal.SIGUSR1, lambda *_: Path(sys.argv[1]).write_text("x"))
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_reload_and_reconnect_talk_to_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pppssh reload` sends SIGHUP and relays the outcome the daemon's ReloadOutcome wrote:
    0 when applied, 1 with its line when refused (an older outcome is not taken for the new
    one); `reconnect` sends SIGUSR1; a site that does not run is said so."""
    from pppssh.cli import main
    from pppssh.system import State, write_state

    monkeypatch.setenv("PPPSSH_RUN_DIR", str(tmp_path))
    assert main(["reload", "site-b"]) == 1
    assert capsys.readouterr().err == "pppssh: site 'site-b' is not running\n"
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(tmp_path / "usr1")], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        write_state(State(site="site-b", config="/etc/pppssh/site-b.conf", pid=daemon.pid))
        assert main(["reload", "site-b"]) == 0
        assert capsys.readouterr().out == "pppssh: site-b: reload 1: done: added local route x\n"
        assert main(["reload", "site-b"]) == 1
        assert capsys.readouterr().err == "pppssh: site-b: reload 2: refused: [ppp] mtu changed\n"
        assert main(["reconnect", "site-b"]) == 0
        assert "reconnecting now" in capsys.readouterr().out
        for _ in range(200):  # the signal is delivered at once; its handler runs soon
            if (tmp_path / "usr1").exists():
                break
            time.sleep(0.05)
        assert (tmp_path / "usr1").exists()
    finally:
        daemon.kill()
        daemon.wait()
