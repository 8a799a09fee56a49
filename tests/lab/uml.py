"""Boot Debian's User-Mode Linux kernel over the host's files and run one command in it.

The host kernel has no PPP; Debian's linux.uml (a Linux kernel run as a normal program) has
it as modules. boot() starts linux.uml with the host's root file system through hostfs and
tests/lab/uml-init as PID 1. uml-init loads the PPP modules, mounts an overlay whose upper
layer is a tmpfs inside UML, binds the results folder (read-write) and the repository
(read-only) into it, remounts the host root read-only, pivots into the overlay and unmounts
the old root, runs the command from the repository and powers off. Users, keys, sudoers and
namespaces made inside vanish at power-off; only files written to the results folder reach
the host. UML gets no network device.

Two boot modes: "sh" (uml-init itself runs the command) and "systemd" (uml-init execs
systemd 252 as PID 1 and a unit, lab-run.service, runs the command; for the tests of the
systemd unit).

Files in the results folder: uml-run.sh (the command, written here), uml-status (its exit
status, written by uml-init), uml-init-error (why uml-init gave up, if it did).
Stdlib only: this module runs on the host before anything is known to work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
INIT = Path(__file__).resolve().with_name("uml-init")
LINUX_UML = "/usr/bin/linux.uml"
INSTALL_HINT = (
    "install Debian's User-Mode Linux kernel: apt-get install -y user-mode-linux "
    "(scripts/test.sh installs it)"
)
RUN_SCRIPT = "uml-run.sh"
STATUS_FILE = "uml-status"
INIT_ERROR = "uml-init-error"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MODES = ("sh", "systemd")

_KERNEL_WORD = re.compile(r"[A-Za-z0-9._/+,:@-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEM = re.compile(r"(\d+)([KMG]?)")


class UmlError(RuntimeError):
    """UML could not run the command to its end (missing kernel, crash, timeout)."""


def find_kernel() -> str | None:
    """Return the path of linux.uml ($PPPSSH_LINUX_UML if set), or None if it is missing."""
    chosen = os.environ.get("PPPSSH_LINUX_UML")
    if chosen is not None:
        return chosen if os.access(chosen, os.X_OK) else None
    if os.access(LINUX_UML, os.X_OK):
        return LINUX_UML
    return shutil.which("linux.uml")


def run_script(argv: list[str], env: dict[str, str] | None, results: Path) -> str:
    """Return the sh script that runs argv inside UML, from the repository, with env."""
    base = {
        "PATH": f"{Path(sys.executable).parent}:{BASE_PATH}",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": os.environ.get("TERM", "dumb"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PPPSSH_IN_UML": "1",
        "PPPSSH_LAB_RESULTS": str(results),
    }
    base.update(env or {})
    lines = ["# Written by tests/lab/uml.py: runs inside UML, in the overlay."]
    for name, value in base.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"bad environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(f"cd {shlex.quote(str(REPO))} || exit 125")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def _mem_bytes(mem: str) -> int:
    """Return the size in bytes of a UML mem= value such as 1G or 768M."""
    m = _MEM.fullmatch(mem)
    if not m:
        raise ValueError(f"bad UML memory size: {mem!r}")
    return int(m[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[2]]


def _tmp_base(mem: str) -> str:
    """Return a folder with room for UML's memory file: /dev/shm if it has room, else /tmp."""
    need = _mem_bytes(mem) + (256 << 20)
    for base in ("/dev/shm", tempfile.gettempdir()):
        ok = os.path.isdir(base) and os.access(base, os.W_OK)
        if ok and shutil.disk_usage(base).free >= need:
            return base
    raise UmlError(f"no temporary folder has {need >> 20} MiB free for UML's memory file")


def _kernel_word(path: Path) -> str:
    """Return path as one kernel command-line word, refusing characters that would split it."""
    word = str(path)
    if not _KERNEL_WORD.fullmatch(word):
        raise UmlError(f"path not usable on the UML kernel command line: {word!r}")
    return word


def _tail(path: Path | None, lines: int = 30) -> str:
    """Return the last lines of a text file, or '' when there is none."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _pump(src: IO[bytes], dst: IO[bytes]) -> None:
    """Copy UML's console to a log file and to our stdout until it closes."""
    out = sys.stdout.buffer
    while chunk := os.read(src.fileno(), 65536):
        dst.write(chunk)
        dst.flush()
        out.write(chunk)
        out.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill UML and its helper processes (its own process group) and wait until all are gone."""
    deadline = time.monotonic() + 10
    with contextlib.suppress(ProcessLookupError):
        # The leader is our unreaped child, and a group's id is not reused while a member
        # lives: the group is UML's until ProcessLookupError.
        while time.monotonic() < deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait()
            time.sleep(0.05)


def boot(
    argv: list[str],
    *,
    results: Path,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
    console: Path | None = None,
    mem: str = "1G",
    echo: bool = False,
    mode: str = "sh",
) -> int:
    """Run argv inside UML from the repository and return its exit status.

    mode "sh": uml-init runs argv; "systemd": systemd is PID 1 and a unit runs argv.
    """
    if not argv:
        raise ValueError("boot() needs a command")
    if mode not in MODES:
        raise ValueError(f"unknown UML boot mode {mode!r}; known: {', '.join(MODES)}")
    kernel = find_kernel()
    if kernel is None:
        raise UmlError(f"linux.uml not found: {INSTALL_HINT}")
    results = Path(results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    words = [_kernel_word(results), _kernel_word(REPO), mode]
    for name in (STATUS_FILE, INIT_ERROR):
        (results / name).unlink(missing_ok=True)
    (results / RUN_SCRIPT).write_text(run_script(argv, env, results))

    tmp = Path(tempfile.mkdtemp(prefix="pppssh-uml-", dir=_tmp_base(mem)))
    cmd = [
        kernel, f"mem={mem}", f"uml_dir={_kernel_word(tmp)}", "umid=lab",
        "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", "quiet",
        f"init={_kernel_word(INIT)}", "con=null", "con0=fd:0,fd:1", "--", *words,
    ]  # fmt: skip
    host_env = {"PATH": BASE_PATH, "TMPDIR": str(tmp), "HOME": str(tmp)}
    log = open(console, "wb") if console else None  # noqa: SIM115 (closed in finally)
    pump: threading.Thread | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if (echo and log) else log,
            stderr=subprocess.STDOUT if log else None,
            env=host_env,
            start_new_session=True,
        )
        if echo and log and proc.stdout:
            pump = threading.Thread(target=_pump, args=(proc.stdout, log), daemon=True)
            pump.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise UmlError(
                f"UML did not finish within {timeout:.0f} s and was killed"
                + (f"\nconsole: {console}\n{_tail(console)}" if console else "")
            ) from None
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)
        if pump is not None:
            pump.join(5)
        if log:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    status = results / STATUS_FILE
    if not status.exists():
        why = (results / INIT_ERROR).read_text().strip() if (results / INIT_ERROR).exists() else ""
        raise UmlError(
            f"UML exited ({rc}) without writing {status}"
            + (f": {why}" if why else "")
            + (f"\nconsole: {console}\n{_tail(console)}" if console else "")
        )
    return int(status.read_text().strip())


def results_dir(kind: str, keep: int = 20, suffix: str = "") -> Path:
    """Make and return a fresh folder lab-results/<kind>-<time>-<pid><suffix> in the repository.

    lab-results/ is git-ignored; the oldest runs beyond `keep` are removed.
    """
    base = REPO / "lab-results"
    base.mkdir(exist_ok=True)
    for old in sorted(base.glob(f"{kind}-*"))[: -keep if keep else None]:
        shutil.rmtree(old, ignore_errors=True)
    path = base / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{suffix}"
    path.mkdir()
    return path
