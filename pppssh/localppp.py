"""The local pppd: spawned on a pseudo-terminal with ptyprocess, watched through its logfd."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ptyprocess import PtyProcess

from .commands import pppd_version
from .config import SiteConfig
from .plan import local_pppd_argv
from .sanitize import valid_ifname
from .system import plain_env, probe

__all__ = ["EXIT_CODES", "LinkInfo", "LocalPppd", "describe_exit"]

# pppd(8) EXIT STATUS
EXIT_CODES = {
    0: "ok",
    1: "fatal error",
    2: "option error",
    3: "not run as root",
    4: "no PPP in this kernel",
    5: "terminated by a signal",
    6: "serial port could not be locked",
    7: "serial port could not be opened",
    8: "connect script failed",
    9: "pty command failed",
    10: "PPP negotiation failed",
    11: "peer failed to authenticate",
    12: "link idle",
    13: "connect time limit",
    14: "callback negotiated",
    15: "peer not responding to LCP echo",
    16: "modem hung up",
    17: "serial line looped back",
    18: "init script failed",
    19: "failed to authenticate to the peer",
}


def describe_exit(status: int | None) -> str:
    """A pppd exit status with its meaning."""
    if status is None:
        return "unknown exit status"
    if status < 0:
        return f"killed by {_signame(-status)}"
    if 128 < status <= 128 + 64:  # a shell reporting a signal death
        return f"exit status {status} (killed by {_signame(status - 128)})"
    return f"exit status {status} ({EXIT_CODES.get(status, 'unknown')})"


def _signame(number: int) -> str:
    """SIGKILL for 9."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_IFACE = re.compile(r"Using interface (\S+)")
_LOCAL = re.compile(r"local\s+IP address (\S+)")
_REMOTE = re.compile(r"remote IP address (\S+)")
_LOCAL_LL = re.compile(r"local\s+LL address (\S+)")
_REMOTE_LL = re.compile(r"remote LL address (\S+)")


def _compact(address: str) -> str:
    """fe80::1 for pppd's fe80::0000:0000:0000:0001 (unchanged if it is no address)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


@dataclass
class LinkInfo:
    """What IPCP negotiated on the local side."""

    interface: str
    local: str
    remote: str


class LocalPppd:
    """One local pppd on a pty; its log lines arrive through a pipe passed as `logfd`."""

    def __init__(self, cfg: SiteConfig, on_line: Callable[[str], None] | None = None) -> None:
        """Prepare, but do not start."""
        self.cfg = cfg
        self.on_line = on_line
        self.proc: PtyProcess | None = None
        self.log: deque[str] = deque(maxlen=40)
        self.interface: str | None = None
        self.local: str | None = None
        self.remote: str | None = None
        self.compression: str | None = None  # pppd's "... compression enabled" line
        loop = asyncio.get_event_loop()
        self._loop = loop
        self.connected = asyncio.Event()  # the tty is in PPP mode: safe to feed it
        self.ipcp_up: asyncio.Future[LinkInfo] = loop.create_future()
        self.ipv6cp_up: asyncio.Future[tuple[str, str]] = loop.create_future()  # (ours, peer)
        self._local_ll: str | None = None
        self.version: tuple[int, int, int] | None = None  # what `pppd --version` said
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self._logr: int | None = None
        self._pidfd: int | None = None
        self._partial = b""

    @property
    def pid(self) -> int | None:
        """The pppd process id."""
        return self.proc.pid if self.proc is not None else None

    @property
    def master(self) -> int:
        """The pty master fd."""
        assert self.proc is not None
        return int(self.proc.fd)

    def start(self) -> list[str]:
        """Spawn pppd on a fresh pty; returns the argv it ran (its LCP echo options follow
        the version the same program reports: ppp-project #323)."""
        # the very program (path checked by config.check_files) that runs next; asked on each
        # start, as an upgrade of pppd between two links is taken into account
        _, said = probe([self.cfg.local_pppd, "--version"], timeout=5.0)
        self.version = pppd_version(said)
        logr, logw = os.pipe()
        os.set_inheritable(logw, True)  # pass_fds alone does not clear close-on-exec
        argv = local_pppd_argv(self.cfg, logw, self.version)
        try:
            self.proc = PtyProcess.spawn(argv, env=plain_env(), echo=False, pass_fds=(logw,))
        finally:
            os.close(logw)
        self._logr = logr
        os.set_blocking(logr, False)
        self._loop.add_reader(logr, self._read_log)
        self._pidfd = os.pidfd_open(self.proc.pid)
        self._loop.add_reader(self._pidfd, self._reap)
        return argv

    def _read_log(self) -> None:
        """Take whatever pppd logged; on EOF stop watching."""
        assert self._logr is not None
        try:
            data = os.read(self._logr, 65536)
        except BlockingIOError:
            return
        if not data:
            self._loop.remove_reader(self._logr)
            if self._partial:
                self._line(self._partial.decode(errors="replace"))
                self._partial = b""
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode(errors="replace").rstrip())

    def _line(self, line: str) -> None:
        """Interpret one pppd log line."""
        if not line:
            return
        self.log.append(line)
        if self.on_line is not None:
            self.on_line(line)
        if m := _IFACE.search(line):
            self.interface = m.group(1) if valid_ifname(m.group(1)) else None
        elif line.startswith("Connect:"):
            self.connected.set()
        elif "compression enabled" in line:
            self.compression = line
        elif m := _LOCAL_LL.search(line):
            self._local_ll = _compact(m.group(1))
        elif (m := _REMOTE_LL.search(line)) and self._local_ll and not self.ipv6cp_up.done():
            self.ipv6cp_up.set_result((self._local_ll, _compact(m.group(1))))
        elif m := _LOCAL.search(line):
            self.local = m.group(1)
        elif m := _REMOTE.search(line):
            self.remote = m.group(1)
            if self.interface and self.local and not self.ipcp_up.done():
                self.ipcp_up.set_result(LinkInfo(self.interface, self.local, self.remote))

    def _reap(self) -> None:
        """pppd has exited: collect its status."""
        assert self._pidfd is not None and self.proc is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        status: int | None
        try:
            _, raw = os.waitpid(self.proc.pid, 0)
            status = os.waitstatus_to_exitcode(raw)
        except ChildProcessError:
            status = None
        self.proc.terminated = True
        self.proc.exitstatus = status
        if self._logr is not None:  # read the last lines pppd wrote
            with contextlib.suppress(OSError):
                self._read_log()
        if not self.exited.done():
            self.exited.set_result(status)

    def last_lines(self, n: int = 3) -> str:
        """The last few log lines, for error messages."""
        return " | ".join(list(self.log)[-n:])

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (not SIGHUP: that means 'reconnect'), wait, then SIGKILL if need be."""
        if self.proc is None:
            return None
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.exited
        self.close()
        return self.exited.result()

    def close(self) -> None:
        """Release the pty master and the log pipe."""
        if self._logr is not None:
            self._loop.remove_reader(self._logr)
            os.close(self._logr)
            self._logr = None
        if self.proc is not None and not self.proc.closed:
            # Not proc.close(): that sleeps and sends SIGHUP; pppd was stopped above.
            with contextlib.suppress(OSError):
                self.proc.fileobj.close()
            self.proc.closed = True
            self.proc.fd = -1
