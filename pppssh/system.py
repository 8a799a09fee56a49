"""The system edge: running local programs, the run directory, state files, sd_notify."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import trust
from .errors import CommandFailed, Missing, Untrusted
from .plan import Command, shell_join

__all__ = [
    "FILE_MODE",
    "RUN_DIR_MODE",
    "CommandFailed",
    "SiteLock",
    "State",
    "create_file",
    "echo",
    "interface_counters",
    "leftover_pppd",
    "make_run_dir",
    "pid_alive",
    "plain_env",
    "pppd_of_site",
    "probe",
    "read_state",
    "read_states",
    "redirect_output",
    "remove_state",
    "run_dir",
    "run_hook",
    "run_local",
    "sd_notify",
    "stop_process",
    "write_state",
]


def echo(prefix: str, text: str, out: TextIO | None = None) -> None:
    """Print one progress line and flush it (the daemon's stdout may be a pipe)."""
    stream = out or sys.stdout
    print(f"{prefix} {text}" if prefix else text, file=stream, flush=True)


def run_local(command: Command, show: bool = True) -> str:
    """Echo `[#] cmd` (unless show is False), run it, return stdout; raise CommandFailed.

    subprocess (vfork and exec) rather than a fork of this process: on a small gateway a
    fork of the daemon costs more than the command (0.26 s against 0.07 s in the lab kernel)
    and holds up the event loop, and with it the link, while it runs.
    """
    if show:
        echo("[#]", command.shown)
    try:
        result = subprocess.run(
            command.argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", env=plain_env(), check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise CommandFailed(command.shown, None, f"{command.argv[0]}: not found") from None
    except OSError as exc:
        raise CommandFailed(command.shown, None, f"{command.argv[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        raise CommandFailed(command.shown, result.returncode, result.stderr)
    return result.stdout


def run_hook(
    argv: tuple[str, ...],
    env: dict[str, str],
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> None:
    """Echo `[#] cmd`, run a site's up/down command with env added, relay its output (to
    on_line instead, without the echo, when given). on_start learns its pid, which is also
    its process group's id.

    Raises CommandFailed when it exits non-zero, is missing, or runs past timeout (killed).
    """
    shown = " ".join(shlex.quote(word) for word in argv)
    if on_line is None:
        echo("[#]", shown)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", env={**plain_env(), **env}, start_new_session=True,
        )  # fmt: skip
    except (FileNotFoundError, PermissionError) as exc:
        raise CommandFailed(shown, None, f"{argv[0]}: {exc.strerror}") from None
    if on_start is not None:
        on_start(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: children go too
        proc.communicate()
        raise CommandFailed(shown, None, f"still running after {timeout:g}s; killed") from None
    for line in out.splitlines():
        if on_line is None:
            echo("", f"  {line}")
        else:
            on_line(line)
    if proc.returncode != 0:
        last = out.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise CommandFailed(shown, proc.returncode, last[0])


def probe(argv: list[str], timeout: float = 10.0) -> tuple[int | None, str]:
    """Run a read-only program quietly (no echo); return its exit status and all output.

    The status is None when the program is missing or did not finish in time.
    """
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout,
            stdin=subprocess.DEVNULL, env=plain_env(),
        )  # fmt: skip
    except FileNotFoundError:
        return None, f"{argv[0]}: not found"
    except PermissionError:
        return None, f"{argv[0]}: permission denied"
    except subprocess.TimeoutExpired:
        return None, f"{argv[0]}: no answer within {timeout:g}s"
    return done.returncode, (done.stdout + done.stderr).strip()


def plain_env() -> dict[str, str]:
    """A predictable environment for helper programs."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run_dir() -> Path:
    """Where state files live: $PPPSSH_RUN_DIR or /run/pppssh."""
    return Path(os.environ.get("PPPSSH_RUN_DIR", "/run/pppssh"))


# The run directory is root's alone (0750); its state files, logs and locks are 0640: they
# name the site's peers, networks and errors, which other local users have no need to read.
# Each is created with its mode in the same call (mkdir, os.open), never opened wider first
# and narrowed after; the umask can only narrow them further.
RUN_DIR_MODE = 0o750
FILE_MODE = 0o640


def make_run_dir() -> Path:
    """Create the run directory (mode 0750) if it is missing; return it."""
    path = run_dir()
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, RUN_DIR_MODE)
    return path


def create_file(path: Path, flags: int = 0) -> int:
    """Open path for writing, created with mode 0640 (never through a symbolic link)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | flags, FILE_MODE)


@dataclass
class State:
    """What a running site has changed, as recorded in /run/pppssh/<site>.json."""

    site: str
    config: str
    pid: int
    state: str = "starting"
    started: float = field(default_factory=time.time)
    up_since: float | None = None
    interface: str | None = None
    remote_interface: str | None = None
    local_address: str | None = None
    remote_address: str | None = None
    local_routes: list[str] = field(default_factory=list)
    remote_routes: list[str] = field(default_factory=list)
    local_filter: list[str] = field(default_factory=list)  # linkfilter's rules, as routes
    local_pppd_pid: int | None = None
    reconnects: int = 0
    last_error: str | None = None
    state_since: float | None = None  # when `state` last changed (None: since `started`)
    ssh_rtt: float | None = None  # seconds, the last SSH keepalive's round trip on this link
    log: str | None = None
    server: str | None = None  # the gateway (host:port) the link is on, or being dialled
    servers: list[str] = field(default_factory=list)  # every gateway of host, in order
    # The ledger (ledger.Entry.to_json() each): what is applied, with its undo. The three
    # lists above are views of it for people and scripts, written from it, never read back.
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def set_ledger(self, entries: list[dict[str, Any]]) -> None:
        """Record the ledger and refresh its views (the apply commands, as shown)."""
        self.ledger = entries

        def shown(side: str, kinds: tuple[str, ...]) -> list[str]:
            """The apply commands of entries on side of one of kinds (with an undo)."""
            return [
                shell_join(e["apply"])
                for e in entries
                if e["side"] == side and e["kind"] in kinds and e.get("undo") is not None
            ]

        self.local_routes = shown("local", ("route", "server-route"))
        self.remote_routes = shown("remote", ("route",))
        self.local_filter = shown("local", ("filter",))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Build from a decoded state file, ignoring keys this version does not know."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def state_path(site: str) -> Path:
    """The state file of a site."""
    return run_dir() / f"{site}.json"


def write_state(state: State) -> None:
    """Write the state file atomically (readers never see half a file)."""
    make_run_dir()
    path = state_path(state.site)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a fresh file, so that it has FILE_MODE whatever a leftover had
    with os.fdopen(create_file(tmp, os.O_EXCL), "w") as f:
        f.write(json.dumps(asdict(state), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def remove_state(site: str) -> None:
    """Delete the state file of a site, if any."""
    with contextlib.suppress(FileNotFoundError):
        state_path(site).unlink()


STATE_LIMIT = 1024 * 1024  # a state file is a few KiB; the ledger of many networks more


def read_state(site: str) -> State | None:
    """The recorded state of one site, read through the trust check (by descriptor: root's,
    no symbolic link, not writable by others), or None when there is none or it is not a
    state file. PermissionError for a user who is not root; Untrusted for a file root must
    not act on (stop and recovery kill the pids it names), or one that names another site."""
    path = state_path(site)
    try:
        os.stat(path)  # PermissionError here for a user the 0750 directory keeps out
        data = trust.read_trusted(path, "state file", limit=STATE_LIMIT).data
    except (FileNotFoundError, Missing):
        return None
    try:
        decoded = json.loads(data)
        state = State.from_json(decoded) if isinstance(decoded, dict) else None
    except (ValueError, TypeError):
        return None
    if state is not None and state.site != site:
        raise Untrusted(f"state file {path} records site {json.dumps(state.site)}: not its own")
    return state


def read_states() -> list[State]:
    """All recorded sites, sorted by name; PermissionError for a user who is not root (the
    run directory is root's alone), never an empty list that would look like nothing runs."""
    states = []
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    for name in sorted(names):
        if name.endswith(".json"):
            state = read_state(name.removesuffix(".json"))
            if state is not None:
                states.append(state)
    return states


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class SiteLock:
    """An exclusive flock on /run/pppssh/<site>.lock, held while the site runs."""

    def __init__(self, site: str) -> None:
        """Prepare the lock for one site."""
        self.path = run_dir() / f"{site}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        make_run_dir()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """True when some process holds the lock now."""
        if not self.path.exists():
            return False
        if self.acquire():
            self.release(unlink=False)
            return False
        return True

    def release(self, unlink: bool = True) -> None:
        """Drop the lock (and its file)."""
        if self.fd is not None:
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            os.close(self.fd)
            self.fd = None


def pppd_of_site(pid: int, linkname: str) -> bool:
    """True if pid is a live pppd started for this linkname (not a reused pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return comm == "pppd" and linkname.encode() in argv


def leftover_pppd(state: State | None, linkname: str) -> list[int]:
    """Local pppds of a site whose pppssh died: from its state file and pppd's pid file."""
    pids = set()
    if state is not None and state.local_pppd_pid:
        pids.add(state.local_pppd_pid)
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids.add(int(Path(f"/run/ppp-{linkname}.pid").read_text().split()[0]))
    return sorted(pid for pid in pids if pppd_of_site(pid, linkname))


def stop_process(pid: int, grace: float = 5.0) -> str:
    """SIGTERM, then SIGKILL after grace seconds; say which one ended it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return "gone"
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return sig.name
            time.sleep(0.05)
    return "still running"


def interface_counters(ifname: str) -> tuple[int, int] | None:
    """(rx_bytes, tx_bytes) of an interface from sysfs, or None if it is gone."""
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None


def sd_notify(*lines: str) -> bool:
    """Send lines like READY=1 to systemd when run as a Type=notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(lines).encode(), address)
        except OSError:
            return False
    return True


def redirect_output(path: Path) -> None:
    """Point fds 1 and 2 at a log file (the daemon, once `start` has returned)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # one log per start, created afresh with FILE_MODE
    fd = create_file(path, os.O_EXCL | os.O_APPEND)  # what this run does from now on
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
