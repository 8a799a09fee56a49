"""The seams of the lifecycle: what it needs from the world, as typing.Protocol ports.

The lifecycle (lifecycle.py) and the supervisor (supervisor.py) talk only to these; the real
implementations are in adapters.py (asyncssh, ptyprocess, subprocess, /run, sd_notify, the
fork's readiness pipe), the fast tests' fakes in tests/fakes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import SiteConfig
from .errors import CommandFailed
from .localppp import LinkInfo
from .plan import Command
from .system import State

__all__ = [
    "Clock",
    "HookResult",
    "LocalPppd",
    "Ports",
    "Readiness",
    "Runner",
    "SshTransport",
    "StateStore",
]


class SshTransport(Protocol):
    """The SSH connection to the remote gateway and the channel of the remote pppd."""

    async def connect(self) -> str:
        """Open the connection (host key checked); return the server's version string."""
        ...

    def peer_address(self) -> str:
        """The address of the SSH server as connected (for the full tunnel's pinned route)."""
        ...

    async def run(self, command: Command, timeout: float = 60.0) -> str:
        """Run one remote request (no pty); its stdout, or RemoteFailed."""
        ...

    async def open_pppd(self, command: str) -> None:
        """Start the remote pppd on a raw pty in a channel of its own."""
        ...

    async def first_frame(self) -> None:
        """Return once the first PPP frame came from the remote pppd."""
        ...

    def attach(self, master: int) -> None:
        """Start pumping between the channel and the local pppd's pty master."""
        ...

    def detach(self) -> None:
        """Stop pumping (the local pppd is gone)."""
        ...

    def failures(self) -> list[asyncio.Future[Any]]:
        """Futures that complete when the connection or the channel dies."""
        ...

    def connection_lost(self) -> bool:
        """True once the SSH connection is gone (a remote undo cannot run any more)."""
        ...

    def why_lost(self) -> str | None:
        """Which of connection and channel died and how (raw text), or None."""
        ...

    def pppd_open(self) -> bool:
        """True while the remote pppd's channel is open."""
        ...

    async def wait_pppd_end(self, timeout: float) -> bool:
        """Wait up to timeout for the remote pppd's channel to close; True if it did."""
        ...

    def hang_up(self) -> None:
        """Close the channel: the remote pppd gets SIGHUP."""
        ...

    def pppd_end(self) -> str:
        """How the remote pppd ended (pppd's meaning of its exit status)."""
        ...

    async def close(self) -> None:
        """Close the SSH connection."""
        ...

    async def keepalive_rtt(self) -> float | None:
        """One SSH keepalive's round trip in seconds, or None (no answer: connection gone)."""
        ...


class LocalPppd(Protocol):
    """The local pppd on its pty (localppp.LocalPppd)."""

    @property
    def interface(self) -> str | None:
        """The pppN interface it named (once connected)."""
        ...

    @property
    def compression(self) -> str | None:
        """pppd's "... compression enabled" line, if CCP agreed on one."""
        ...

    @property
    def exited(self) -> asyncio.Future[int | None]:
        """Completes with its exit status when it ends."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id once started."""
        ...

    @property
    def master(self) -> int:
        """The pty master the pump reads and writes."""
        ...

    def start(self) -> list[str]:
        """Spawn it; the argv it ran."""
        ...

    async def wait_connected(self) -> None:
        """Return once its tty is in PPP mode."""
        ...

    async def wait_ipcp(self) -> LinkInfo:
        """Return what IPCP agreed on."""
        ...

    async def wait_ipv6cp(self) -> tuple[str, str]:
        """Return the link-local addresses IPV6CP agreed on (ours, peer)."""
        ...

    def last_lines(self) -> str:
        """Its last log lines, for error messages."""
        ...

    async def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if need be; its exit status."""
        ...


@dataclass(frozen=True)
class HookResult:
    """What an up or down command printed, and how it failed (None: it succeeded)."""

    output: list[str]
    failure: CommandFailed | None


class Runner(Protocol):
    """Local programs: commands (ip), the site's hooks, what a dead pppssh left."""

    async def run(self, command: Command) -> str:
        """Run a local argv; its stdout, or CommandFailed. Cancelled, it lets the command end
        before the CancelledError goes on (the change is made or not by then)."""
        ...

    async def hook(self, argv: tuple[str, ...], env: dict[str, str], timeout: float) -> HookResult:
        """Run an up/down command with env added, killed after timeout."""
        ...

    def rp_filter_all(self) -> int:
        """net.ipv4.conf.all.rp_filter (OSError or ValueError when unreadable)."""
        ...

    def leftover_pppd(self, state: State | None, linkname: str) -> list[int]:
        """Local pppds of a site whose pppssh died."""
        ...

    async def stop_process(self, pid: int) -> str:
        """SIGTERM, then SIGKILL; which one ended it."""
        ...


class StateStore(Protocol):
    """The state file of each site."""

    def write(self, state: State) -> None:
        """Write it whole (atomically)."""
        ...

    def read(self, site: str) -> State | None:
        """Read it, or None."""
        ...

    def remove(self, site: str) -> None:
        """Delete it."""
        ...


class Clock(Protocol):
    """Time: for deadlines, timestamps and waiting between attempts."""

    def monotonic(self) -> float:
        """Seconds for deadlines."""
        ...

    def time(self) -> float:
        """Wall clock seconds (up_since)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait."""
        ...


class Readiness(Protocol):
    """The waiting `pppssh start` (a pipe from the fork), or nobody."""

    def ready(self) -> None:
        """The site is up: `start` returns 0."""
        ...

    def retrying(self, why: str) -> None:
        """The first attempt failed and retry_start is on: `start` says so and returns."""
        ...


@dataclass
class Ports:
    """Everything the lifecycle and the supervisor use of the world."""

    ssh: Callable[[SiteConfig], SshTransport]  # a fresh transport per attempt, to cfg.host
    pppd: Callable[[], LocalPppd]  # a fresh local pppd per attempt
    runner: Runner
    store: StateStore
    clock: Clock
