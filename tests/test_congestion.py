"""pppssh-congestion, the remote program that sets the way down's congestion control: its
refusals, the ancestor it trusts, and the one socket it picks (on real processes of this
host; the lab runs it under sshd and sudo, tests/lab/test_attack_key.py)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PROGRAM = Path(__file__).parent.parent / "pppssh" / "data" / "pppssh-congestion"


def load() -> ModuleType:
    """The program as a module (its file has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("pppssh_congestion", str(PROGRAM))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


cc = load()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the program as a command (python3 -I, as its #! line says)."""
    return subprocess.run(
        [sys.executable, "-I", str(PROGRAM), *args],
        capture_output=True, text=True, timeout=30, env=env or {"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "args", [(), ("bbr", "cubic"), ("BBR",), ("bbr;id",), ("../x",), ("a" * 16,), ("",)]
)
def test_anything_but_one_name_is_refused(args: tuple[str, ...]) -> None:
    proc = run(*args, env={"PATH": "/usr/bin:/bin", "SUDO_UID": "0"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("pppssh-congestion: usage: pppssh-congestion NAME")


def test_only_through_sudo() -> None:
    if os.geteuid() != 0:
        proc = run("bbr", env={"PATH": "/usr/bin:/bin", "SUDO_UID": "0"})
        assert "run by root only" in proc.stderr
        return
    proc = run("bbr")  # root, but no SUDO_UID: not through sudo
    assert proc.returncode == 1 and "run through sudo only" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="reads other processes' descriptors as root")
def test_no_sshd_above_changes_nothing() -> None:
    """Run from here (pytest, no sshd among its ancestors): refused before any socket."""
    proc = run("bbr", env={"PATH": "/usr/bin:/bin", "SUDO_UID": str(os.getuid())})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "pppssh-congestion: no sshd session of the calling user above this process"
    )


def test_parent_pid_is_read_past_any_name(tmp_path: Path) -> None:
    """/proc/PID/stat's name may hold spaces and ')': the fields after the last ')' count."""
    odd = tmp_path / "a) 1 2 (b"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        assert cc._stat_ppid(child.pid) == os.getpid()
        assert cc._real_uid(child.pid) == os.getuid()
    finally:
        child.kill()
        child.wait()


def _running(program: Path) -> subprocess.Popen[bytes]:
    """program (a copy of sleep) running, as the process whose program is judged."""
    return subprocess.Popen([str(program), "30"])


@pytest.mark.skipif(os.geteuid() != 0, reason="makes root's and another user's programs")
def test_only_a_root_owned_sshd_program_is_trusted(tmp_path: Path) -> None:
    """Judged on the file the process runs (opened through /proc/PID/exe), not on a path."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    assert not cc._trusted_program(os.getpid())  # root's, but not sshd
    assert not cc._trusted_program(2**22 + 1)  # no such process
    procs = []
    try:
        for owner, name in [(65534, "sshd"), (0, "sshd"), (0, "sshd-session")]:
            program = tmp_path / str(owner) / name
            program.parent.mkdir(exist_ok=True)
            shutil.copy(sleep, program)
            program.chmod(0o755)
            os.chown(program, owner, 0)
            proc = _running(program)
            procs.append(proc)
            assert wait_exec(proc.pid, program)
            assert cc._trusted_program(proc.pid) == (owner == 0), (owner, name)
            if owner:
                continue
            program.chmod(0o775)  # group-writable: another could have changed it
            assert not cc._trusted_program(proc.pid)
            program.chmod(0o755)
            program.unlink()  # replaced by an upgrade: "(deleted)", still root's own file
            assert os.readlink(f"/proc/{proc.pid}/exe").endswith(" (deleted)")
            assert cc._trusted_program(proc.pid)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def wait_exec(pid: int, program: Path) -> bool:
    """Whether pid runs program within a few seconds (a bound, not a pass condition)."""
    for _ in range(200):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == str(program):
                return True
        time.sleep(0.02)
    return False


HOLDER = """
import socket, sys, time
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
conns = []
for _ in range(int(sys.argv[1])):
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    conns += [client, server]
keep = [socket.socketpair(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
held = conns[1::2]  # the accepted ends: what this process holds as "its connections"
for c in conns[0::2]:
    c.close()  # the peers stay only in this process if they are not closed; close them
print(" ".join(str(s.fileno()) for s in held), flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[str]]:
    procs: list[subprocess.Popen[str]] = []

    def start(connections: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(connections)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc

    yield start  # type: ignore[misc]
    for proc in procs:
        proc.kill()
        proc.wait()


def taken(pid: int) -> socket.socket:
    """The program's pick among pid's sockets (a duplicate of it)."""
    pidfd = os.pidfd_open(pid)
    try:
        sock: socket.socket = cc.connection(pid, pidfd)
        return sock
    finally:
        os.close(pidfd)


@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd of another process needs root")
def test_the_one_connection_is_picked_past_listeners_and_other_sockets(holder) -> None:  # type: ignore[no-untyped-def]
    """A listener, a UNIX pair and a UDP socket are passed over; the one connected TCP
    socket is taken, and the setting made on the duplicate is the process's socket's."""
    proc = holder(1)
    with taken(proc.pid) as sock:
        assert sock.type == socket.SOCK_STREAM and sock.getpeername()[0] == "127.0.0.1"
        sock.setsockopt(socket.IPPROTO_TCP, cc.TCP_CONGESTION, b"reno")
    with taken(proc.pid) as again:
        assert cc._current(again) == "reno"


@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd of another process needs root")
def test_two_connections_are_refused(holder) -> None:  # type: ignore[no-untyped-def]
    proc = holder(2)
    with pytest.raises(cc.Refused, match=r"holds 2 TCP connections, not one"):
        taken(proc.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes root's programs, takes another's socket")
def test_only_a_session_that_roots_sshd_started_counts(tmp_path: Path) -> None:
    """End to end on real processes, with root-owned copies of bash as the sshd programs: the
    nearest sshd, holding one TCP connection, gets the name when its parent is an sshd of
    root's (the session's privileged monitor); without one (an sshd the user ran itself, on
    a socket of its own, under its shell) the program refuses before it takes any socket."""
    bash = shutil.which("bash")
    assert bash is not None
    monitor, session = tmp_path / "m" / "sshd", tmp_path / "s" / "sshd-session"
    for program in (monitor, session):
        program.parent.mkdir()
        shutil.copy(bash, program)
        os.chown(program, 0, 0)
        program.chmod(0o755)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        inner = f"exec 3<>/dev/tcp/127.0.0.1/{port}; {sys.executable} -I {PROGRAM} reno; :"
        env = {"PATH": "/usr/bin:/bin", "SUDO_UID": "0"}
        alone = subprocess.run(
            [str(session), "-c", inner], capture_output=True, text=True, timeout=30, env=env
        )
        assert (alone.returncode, alone.stdout) == (0, ""), alone
        assert re.fullmatch(
            r"pppssh-congestion: sshd \d+ above this process was not started by the system's "
            r"sshd \(its parent \d+ is no sshd of root's\)\n",
            alone.stderr,
        ), alone.stderr
        nested = f"{session} -c {shlex.quote(inner)}; :"
        under = subprocess.run(
            [str(monitor), "-c", nested], capture_output=True, text=True, timeout=30, env=env
        )
        assert under.stderr == "" and under.stdout.startswith(
            "the SSH connection sends with reno (was "
        ), under
