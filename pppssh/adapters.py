"""The real ports: asyncssh (ssh.py, bridge.py), the local pppd on a pty (localppp.py),
subprocess (system.py), the state files in /run/pppssh, the clock, the fork's readiness pipe."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import asyncssh_compat, system
from .asyncssh_compat import asyncssh
from .bridge import Bridge
from .config import SiteConfig, load
from .errors import CommandFailed, TunnelError
from .events import (
    Event,
    LogReporter,
    NotifyReporter,
    Reloaded,
    ReloadRefused,
    Reporter,
    Reporters,
    StampedFormatter,
    StateReporter,
    TerminalReporter,
)
from .lifecycle import recover
from .localppp import LinkInfo, describe_exit
from .localppp import LocalPppd as PtyProcessPppd
from .plan import Command
from .ports import HookResult, Ports
from .sanitize import printable
from .ssh import close_connection, connect, open_bridge, pin_address, run_remote
from .supervisor import Supervisor
from .system import State

__all__ = [
    "AsyncsshTransport",
    "PipeReadiness",
    "PtyPppd",
    "ReloadOutcome",
    "RunDirStore",
    "SubprocessRunner",
    "SystemClock",
    "hold_site",
    "real_ports",
    "recover_site",
    "reload_outcome_path",
]

RP_FILTER_ALL = "/proc/sys/net/ipv4/conf/all/rp_filter"


class AsyncsshTransport:
    """SshTransport over ssh.py's strict connection and bridge.Bridge (the byte pump)."""

    def __init__(self, cfg: SiteConfig) -> None:
        """Prepare; nothing is opened until connect()."""
        self.cfg = cfg
        self.conn: asyncssh.SSHClientConnection | None = None
        self.client: Any = None
        self.bridge: Bridge | None = None

    async def connect(self) -> str:
        """Open the connection; the server's version string."""
        self.conn, self.client = await connect(self.cfg)
        return str(self.conn.get_extra_info("server_version"))

    def peer_address(self) -> str:
        """The address of the path's TCP peer as connected (the proxy, the first jump host or
        the gateway): what the full tunnel must keep routed where it is."""
        assert self.conn is not None
        address = pin_address(self.client)
        if address is None:  # config refuses full_tunnel with proxy_command; never a guess
            raise TunnelError("full tunnel: a proxy command carries the SSH connection")
        return address

    async def run(self, command: Command, timeout: float = 60.0) -> str:
        """One remote request."""
        assert self.conn is not None
        return await run_remote(self.conn, command, timeout=timeout)

    async def open_pppd(self, command: str) -> None:
        """The remote pppd on a raw pty, pumped by a Bridge; a refused or lost channel is a
        TunnelError (the supervisor then tries again, as for any other failed step)."""
        assert self.conn is not None
        try:
            self.bridge = await open_bridge(self.conn, command, cfg=self.cfg)
        except (asyncssh.Error, OSError) as exc:
            reason = printable(str(exc) or type(exc).__name__)
            raise TunnelError(f"cannot open the remote pppd's channel: {reason}") from None

    async def first_frame(self) -> None:
        """The first PPP frame from the remote pppd."""
        assert self.bridge is not None
        await self.bridge.first_frame.wait()

    def attach(self, master: int) -> None:
        """Pump to and from the local pty master."""
        assert self.bridge is not None
        self.bridge.attach(master)

    def detach(self) -> None:
        """Stop pumping."""
        if self.bridge is not None:
            self.bridge.detach()

    def failures(self) -> list[asyncio.Future[Any]]:
        """The connection's and the channel's end."""
        futures: list[asyncio.Future[Any]] = []
        if self.client is not None:
            futures.append(self.client.lost)
        if self.bridge is not None:
            futures += [self.bridge.closed, self.bridge.master_closed]
        return futures

    def connection_lost(self) -> bool:
        """The connection is gone."""
        return self.conn is None or (self.client is not None and self.client.lost.done())

    def _pppd_end(self) -> str:
        """How the remote pppd ended."""
        assert self.bridge is not None
        if self.bridge.exit_status is not None:
            return describe_exit(self.bridge.exit_status)
        return self.bridge.describe_end()

    def why_lost(self) -> str | None:
        """Which part died and how (raw text), or None."""
        lost = self.client.lost if self.client is not None else None
        if lost is not None and lost.done() and lost.result():
            return f"SSH connection lost: {lost.result()}"
        if self.bridge is not None and self.bridge.closed.done():
            text = self.bridge.preamble_text()
            status = f"remote pppd ended, {self._pppd_end()}"
            return status + (f": {text}" if text else "")
        if lost is not None and lost.done():
            return "SSH connection closed"
        if self.bridge is not None and self.bridge.master_closed.done():
            return "local pppd closed its terminal"
        return None

    def pppd_open(self) -> bool:
        """The channel is open."""
        return self.bridge is not None and not self.bridge.closed.done()

    async def wait_pppd_end(self, timeout: float) -> bool:
        """Wait for the channel to close."""
        if self.bridge is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.bridge.closed), timeout)
        return self.bridge.closed.done()

    def hang_up(self) -> None:
        """Close the channel (SIGHUP for the remote pppd)."""
        if self.bridge is not None:
            self.bridge.close()

    def pppd_end(self) -> str:
        """How the remote pppd ended."""
        return self._pppd_end() if self.bridge is not None else "never started"

    async def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            await close_connection(self.conn)

    async def keepalive_rtt(self) -> float | None:
        """A keepalive request's round trip through asyncssh (asyncssh_compat); None when
        the connection is gone or asyncssh cannot tell."""
        if self.conn is None or self.connection_lost():
            return None
        try:
            return await asyncssh_compat.global_request_round_trip(self.conn)
        except (asyncssh.Error, OSError):
            return None


class PtyPppd:
    """LocalPppd port over localppp.LocalPppd (ptyprocess, logfd, pidfd)."""

    def __init__(self, cfg: SiteConfig) -> None:
        """Prepare (inside the event loop); nothing runs until start()."""
        self.pppd = PtyProcessPppd(cfg)

    @property
    def exited(self) -> asyncio.Future[int | None]:
        """Its end."""
        return self.pppd.exited

    @property
    def interface(self) -> str | None:
        """The pppN interface pppd named."""
        return self.pppd.interface

    @property
    def compression(self) -> str | None:
        """pppd's compression line."""
        return self.pppd.compression

    @property
    def pid(self) -> int | None:
        """Its process id."""
        return self.pppd.pid

    @property
    def master(self) -> int:
        """The pty master."""
        return self.pppd.master

    def start(self) -> list[str]:
        """Spawn it."""
        return self.pppd.start()

    async def wait_connected(self) -> None:
        """Its tty is in PPP mode."""
        await self.pppd.connected.wait()

    async def wait_ipcp(self) -> LinkInfo:
        """IPCP is up."""
        return await asyncio.shield(self.pppd.ipcp_up)

    async def wait_ipv6cp(self) -> tuple[str, str]:
        """IPV6CP is up."""
        return await asyncio.shield(self.pppd.ipv6cp_up)

    def last_lines(self) -> str:
        """Its last log lines."""
        return self.pppd.last_lines()

    async def stop(self) -> int | None:
        """Stop it."""
        return await self.pppd.stop()


HOOK_GRACE = 5.0  # seconds a cancelled up/down command has between SIGTERM and SIGKILL


class SubprocessRunner:
    """Runner over system.run_local/run_hook, each in a thread (the loop keeps pumping)."""

    async def run(self, command: Command) -> str:
        """Run a local argv (the lifecycle has shown it already). A thread cannot be stopped:
        cancelled, this waits for the command's end before the CancelledError goes on, so
        that the teardown's undo comes after the change it undoes, never before it."""
        job = asyncio.ensure_future(asyncio.to_thread(system.run_local, command, False))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            await _outlast(job)
            raise

    async def hook(self, argv: tuple[str, ...], env: dict[str, str], timeout: float) -> HookResult:
        """Run an up/down command; its output and failure. Cancelled while it runs (`stop`
        during the up command), its process group gets SIGTERM, SIGKILL after HOOK_GRACE,
        and the CancelledError goes on once it has ended: no command outlives its link, and
        the down command never runs beside the up command."""
        lines: list[str] = []
        started: list[int] = []
        job = asyncio.ensure_future(
            asyncio.to_thread(system.run_hook, argv, env, timeout, lines.append, started.append)
        )
        try:
            await asyncio.shield(job)
        except CommandFailed as exc:
            return HookResult(lines, exc)
        except asyncio.CancelledError:
            await _outlast(job, _stopper(started))
            raise
        return HookResult(lines, None)

    def rp_filter_all(self) -> int:
        """net.ipv4.conf.all.rp_filter."""
        with open(RP_FILTER_ALL) as f:
            return int(f.read())

    def leftover_pppd(self, state: State | None, linkname: str) -> list[int]:
        """Local pppds of a dead pppssh (state file and pppd's pid file)."""
        return system.leftover_pppd(state, linkname)

    async def stop_process(self, pid: int) -> str:
        """SIGTERM, then SIGKILL."""
        return await asyncio.to_thread(system.stop_process, pid)


async def _outlast(job: asyncio.Future[Any], tick: Callable[[], None] | None = None) -> None:
    """Wait for a cancelled thread's job to end (tick() every 50 ms meanwhile, when given);
    a second cancellation does not cut that short, and its failure is not reported."""
    while not job.done():
        if tick is not None:
            tick()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([job], timeout=None if tick is None else 0.05)
    if not job.cancelled():
        job.exception()  # retrieved


def _stopper(started: list[int]) -> Callable[[], None]:
    """A tick that stops a cancelled hook's process group, once its pid is in started:
    SIGTERM, then SIGKILL HOOK_GRACE seconds later."""
    signals = [signal.SIGTERM, signal.SIGKILL]
    deadline = 0.0

    def tick() -> None:
        nonlocal deadline
        if started and signals and time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started[0], signals.pop(0))
            deadline = time.monotonic() + HOOK_GRACE

    return tick


class RunDirStore:
    """StateStore over /run/pppssh (system.write_state & co.)."""

    def write(self, state: State) -> None:
        """Write atomically."""
        system.write_state(state)

    def read(self, site: str) -> State | None:
        """Read, or None."""
        return system.read_state(site)

    def remove(self, site: str) -> None:
        """Delete."""
        system.remove_state(site)


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def time(self) -> float:
        """time.time()."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep()."""
        await asyncio.sleep(seconds)


class _LogStream(io.TextIOBase):
    """sys.stdout/sys.stderr of the daemon once its log is open: each whole line through the
    log's logger, so that it is stamped like the reporters' lines."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        """Log completed lines at level."""
        super().__init__()
        self.logger = logger
        self.level = level
        self.partial = ""
        self.busy = False  # a failing handler reports on stderr: never back into it

    def writable(self) -> bool:
        """Always."""
        return True

    def write(self, text: str) -> int:
        """Keep the unfinished line; log each finished one."""
        *lines, self.partial = (self.partial + text).split("\n")
        if not self.busy:
            self.busy = True
            try:
                for line in lines:
                    self.logger.log(self.level, line)
            finally:
                self.busy = False
        return len(text)


def daemon_logger() -> tuple[logging.Logger, logging.handlers.MemoryHandler]:
    """The daemon log's logger, holding its records (with their times) until the log file
    opens, so that the log begins with what `start` showed."""
    logger = logging.getLogger("pppssh.daemon")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    held = logging.handlers.MemoryHandler(1_000_000, flushLevel=logging.CRITICAL + 1)
    logger.addHandler(held)
    return logger, held


class PipeReadiness:
    """The waiting `pppssh start`: READY or RETRYING on the pipe from the fork; then the
    daemon's output goes to its log file (stdout and stderr, and the reporters' lines), every
    line stamped, beginning with the lines held since the start."""

    def __init__(
        self,
        fd: int | None,
        log: Path,
        reporters: Reporters,
        daemon_log: tuple[logging.Logger, logging.handlers.MemoryHandler] | None = None,
    ) -> None:
        """fd: the pipe's write end (None when nobody waits: --foreground); daemon_log: the
        logger whose LogReporter is already among reporters, and the handler holding its
        records so far (daemon_logger(); made here if not given)."""
        self.fd = fd
        self.log = log
        self.reporters = reporters
        if daemon_log is None and fd is not None:
            daemon_log = daemon_logger()
            reporters.reporters.append(LogReporter(daemon_log[0]))
        self.daemon_log = daemon_log

    def ready(self) -> None:
        """Up: `start` returns 0."""
        self._say(b"READY\n")

    def retrying(self, why: str) -> None:
        """Not up yet, retrying: `start` says so and returns 0."""
        self._say(f"RETRYING {why}\n".encode())

    def _say(self, message: bytes) -> None:
        """Move the output to the log, tell the waiting `start`, close the pipe (once)."""
        if self.fd is None:
            return
        system.redirect_output(self.log)
        self._log_through_logging()
        os.write(self.fd, message)
        os.close(self.fd)
        self.fd = None

    def _log_through_logging(self) -> None:
        """From now on the reporters' lines (and stdout, stderr) go to the log file through
        Python logging, stamped; the lines held since the start are written first."""
        assert self.daemon_log is not None
        logger, held = self.daemon_log
        handler = logging.FileHandler(self.log, mode="a")
        handler.setFormatter(StampedFormatter("%(message)s"))
        held.setTarget(handler)
        held.flush()  # each record keeps its own time
        logger.removeHandler(held)
        held.close()
        logger.addHandler(handler)
        self.reporters.reporters = [
            r for r in self.reporters.reporters if not isinstance(r, TerminalReporter)
        ]
        sys.stdout = _LogStream(logger, logging.INFO)
        sys.stderr = _LogStream(logger, logging.WARNING)


def reload_outcome_path(site: str) -> Path:
    """Where a daemon leaves the outcome of its last reload, for `pppssh reload`."""
    return system.run_dir() / f"{site}.reload"


class ReloadOutcome(Reporter):
    """Writes each reload's outcome (pid, serial, applied or not, its line) to the site's
    .reload file in the run directory, atomically, where `pppssh reload` waits for it."""

    def __init__(self, site: str, pid: int) -> None:
        """The daemon of site, process pid."""
        self.path = reload_outcome_path(site)
        self.pid = pid

    def report(self, event: Event) -> None:
        """Write the outcome of a reload."""
        if not isinstance(event, Reloaded | ReloadRefused):
            return
        data = {"pid": self.pid, "serial": event.serial, "applied": isinstance(event, Reloaded),
                "line": event.line()}  # fmt: skip
        system.make_run_dir()
        tmp = self.path.with_suffix(".reload-tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with os.fdopen(system.create_file(tmp, os.O_EXCL), "w") as f:
            f.write(json.dumps(data) + "\n")
        os.replace(tmp, self.path)


def recover_site(site: str) -> bool:
    """Undo what a pppssh of site that died without its teardown left (its ledger)."""
    return asyncio.run(recover(site, SubprocessRunner(), RunDirStore(), TerminalReporter()))


def hold_site(cfg: SiteConfig, ready_fd: int | None) -> int:
    """Hold a site in this process (its lock taken): undo what a dead predecessor left, then
    the supervisor over the real ports, SIGTERM/SIGINT stopping it, SIGHUP reloading the site
    file, SIGUSR1 reconnecting at once; the exit status.
    The state file is gone afterwards, whatever happened."""
    log = system.run_dir() / f"{cfg.name}.log"
    ports = real_ports(cfg)
    state = State(site=cfg.name, config=str(cfg.path.absolute()), pid=os.getpid(), log=str(log))
    terminal = TerminalReporter()
    reporters = Reporters(
        terminal, NotifyReporter(system.sd_notify), ReloadOutcome(cfg.name, os.getpid())
    )
    shown: Reporter = terminal
    daemon_log = None
    if ready_fd is not None:  # a log file once `start` returns: it begins with what it showed
        daemon_log = daemon_logger()
        shown = Reporters(terminal, LogReporter(daemon_log[0]))
        reporters.reporters.append(LogReporter(daemon_log[0]))

    async def main() -> int:
        """Recover, then hold the site until a signal or the end."""
        await recover(cfg.name, ports.runner, ports.store, shown)
        reporters.reporters.append(StateReporter(state, ports.store.write, ports.clock.time))
        readiness = PipeReadiness(ready_fd, log, reporters, daemon_log)
        supervisor = Supervisor(cfg, ports, reporters, readiness, os.getpid())
        loop = asyncio.get_running_loop()
        path = cfg.path.absolute()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop, sig.name)
        reloads: set[asyncio.Task[bool]] = set()

        def reload() -> None:
            """SIGHUP: re-read the site file (same checks as at start) and apply it by diff."""
            task = loop.create_task(supervisor.reload(lambda: load(path)))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGUSR1, supervisor.reconnect, "SIGUSR1")
        return await supervisor.run()

    try:
        return asyncio.run(main())
    finally:
        ports.store.remove(cfg.name)
        with contextlib.suppress(OSError):
            reload_outcome_path(cfg.name).unlink()


def real_ports(cfg: SiteConfig) -> Ports:
    """The ports of a real site."""
    return Ports(
        ssh=AsyncsshTransport,
        pppd=lambda: PtyPppd(cfg),
        runner=SubprocessRunner(),
        store=RunDirStore(),
        clock=SystemClock(),
    )
