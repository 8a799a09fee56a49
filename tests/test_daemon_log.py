"""The daemon's log: every line stamped, what `start` showed first, removed after a clean stop."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest

from pppssh import cli, system
from pppssh.adapters import PipeReadiness, daemon_logger
from pppssh.events import (
    STAMP,
    Connecting,
    LogReporter,
    Note,
    Reporters,
    SignalReceived,
    TerminalReporter,
    log_stamp,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")


def test_stamp_is_iso_8601_local_time_with_offset() -> None:
    assert ISO.match(log_stamp()), log_stamp()


def test_log_starts_with_what_start_showed_then_stamps_every_line(tmp_path: Path) -> None:
    """Run in a child: fds 1 and 2 and sys.stdout/err are the process's own. Before READY the
    terminal shows the lines (unstamped) and the log's logger holds them; after it, the log
    file has them first, then everything the daemon says or prints, each line stamped."""
    log = tmp_path / "site-b.log"
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(r)
            os.close(ready_r)
            os.dup2(w, 1)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
            daemon_log = daemon_logger()
            reporters = Reporters(TerminalReporter(), LogReporter(daemon_log[0]))
            readiness = PipeReadiness(ready_w, log, reporters, daemon_log)
            reporters.report(Connecting("vpn@gw:22", "/etc/kh"))
            reporters.report(Note("link up: ppp0\n  remote ppp3"))
            readiness.ready()
            reporters.report(SignalReceived("SIGTERM"))
            print("oops", file=sys.stderr, flush=True)
            print("half", end="", flush=True)
            print(" a line", flush=True)
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    os.close(ready_w)
    with os.fdopen(r) as terminal:
        shown = terminal.read()
    with os.fdopen(ready_r, "rb") as ready:
        assert ready.read() == b"READY\n"
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert shown == (
        "connecting to vpn@gw:22 (host key checked against /etc/kh)\nlink up: ppp0\n  remote ppp3\n"
    )
    lines = log.read_text().splitlines()
    assert [STAMP.sub("", line) for line in lines] == [
        "connecting to vpn@gw:22 (host key checked against /etc/kh)",
        "link up: ppp0",
        "  remote ppp3",
        "received SIGTERM",
        "oops",
        "half a line",
    ]
    assert all(STAMP.match(line) for line in lines), lines
    assert log.stat().st_mode & 0o777 == 0o640


def test_relay_shows_lines_without_their_stamps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "x.log"
    log.write_text(f"{log_stamp()} stopping\n{log_stamp()} [#] ip route del 10.2.0.0/24\npart")
    end = cli._relay(log, 0)
    assert capsys.readouterr().out == "stopping\n[#] ip route del 10.2.0.0/24\n"
    assert end == len(log.read_bytes()) - len("part")


def test_clean_stop_removes_the_log_a_failed_one_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system, "run_dir", lambda: tmp_path)
    monkeypatch.setattr(cli, "read_state", lambda site: None)  # the daemon removed its state
    log = tmp_path / "site-b.log"
    log.write_text(f"{log_stamp()} pppssh: site-b stopped\n")
    dead = 2**22 + 12345  # no such pid: the daemon has exited
    assert cli._finish_stop(cli._Stopping("site-b", dead, log, 0), 1e18, 60) == 0
    assert not log.exists()
    log.write_text(f"{log_stamp()} tearing down\n")
    monkeypatch.setattr(cli, "read_state", lambda site: object())  # state left: not clean
    monkeypatch.setattr(cli, "remove_state", lambda site: None)
    with pytest.raises(cli.Fail, match="exited without finishing its teardown"):
        cli._finish_stop(cli._Stopping("site-b", dead, log, 0), 1e18, 60)
    assert log.exists()
