"""Holding a site: attempts one after another (retry_start, reconnect with backoff, give-up
after reconnect_tries), stop on a signal, readiness for the waiting `pppssh start`.

Talks only to ports (clock, readiness, the lifecycle's ports) and reporters, so that every
path runs against fakes in the fast tests, with a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from .backoff import delays
from .config import SiteConfig
from .errors import TunnelError
from .events import (
    Failed,
    Ready,
    Reconnecting,
    Reporter,
    SignalReceived,
    Starting,
    Stopped,
)
from .lifecycle import SETTLE, Attempt
from .ports import Ports, Readiness

__all__ = ["Supervisor"]


class Supervisor:
    """Runs attempts for one site until it is stopped or gives up."""

    def __init__(
        self,
        cfg: SiteConfig,
        ports: Ports,
        reporter: Reporter,
        readiness: Readiness,
        pid: int,
        settle: float = SETTLE,
        backoff: Callable[[float, float], Iterator[float]] = delays,
    ) -> None:
        """Prepare; run() holds the site."""
        self.cfg = cfg
        self.ports = ports
        self.reporter = reporter
        self.readiness = readiness
        self.pid = pid
        self.settle = settle
        self.backoff = backoff
        self.announced = False
        self.told = False  # the waiting `pppssh start` has had its one answer
        self.stopping = False
        self.attempts = 0
        self.current: Attempt | None = None
        self._task: asyncio.Task[object] | None = None

    def _ready(self, attempt: Attempt) -> None:
        """Routes are in place: tell systemd and the waiting `pppssh start` (once)."""
        assert attempt.link is not None
        link = attempt.link
        text = f"{link.interface} {link.local} -> {link.remote}"
        self.reporter.report(Ready(self.cfg.name, text, self.pid, again=self.announced))
        self.announced = True
        if not self.told:
            self.told = True
            self.readiness.ready()

    async def hold(self) -> None:
        """Attempts until one ends by cancellation; TunnelError when the site gives up."""
        cfg = self.cfg
        waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
        failures = 0
        while True:
            attempt = Attempt(cfg, self.ports, self.reporter, self.settle)
            self.current = attempt
            self.attempts += 1
            try:
                await attempt.run(self._ready)
                return
            except TunnelError as exc:
                if not (cfg.reconnect if self.announced else cfg.retry_start):
                    raise
                if attempt.came_up:  # this attempt had come up: start over
                    waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
                    failures = 0
                failures += 1
                if cfg.reconnect_tries and failures > cfg.reconnect_tries:
                    raise TunnelError(
                        f"{exc} (giving up after {cfg.reconnect_tries} failed attempts in a "
                        "row: reconnect_tries)"
                    ) from None
                delay = next(waits)
                self.reporter.report(Reconnecting(cfg.name, delay, str(exc)))
                if not self.told:  # `pppssh start` waits for the first outcome
                    self.told = True
                    self.readiness.retrying(str(exc))
                await self.ports.clock.sleep(delay)

    def stop(self, signame: str) -> None:
        """A signal: the first stops the site (its teardown runs); later ones are ignored."""
        if self.stopping or self._task is None:
            return
        self.stopping = True
        self.reporter.report(SignalReceived(signame))
        self._task.cancel()

    async def run(self) -> int:
        """Hold the site; 0 when stopped by a signal, 1 when it gave up (said on stderr)."""
        self._task = asyncio.current_task()
        self.reporter.report(Starting(self.cfg.name))
        try:
            await self.hold()
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            self.reporter.report(Stopped(self.cfg.name))
            return 0
        except TunnelError as exc:
            self.reporter.report(Failed(self.cfg.name, str(exc)))
            return 1
        return 0
