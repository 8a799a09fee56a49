"""Holding a site: attempts one after another (retry_start, reconnect with backoff, give-up
after reconnect_tries), stop on a signal, readiness for the waiting `pppssh start`; a reload
of the site file by diff and a reconnect at once, on request.

Talks only to ports (clock, readiness, the lifecycle's ports) and reporters, so that every
path runs against fakes in the fast tests, with a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from .backoff import delays
from .config import SCHEMA, ConfigError, SiteConfig
from .errors import TunnelError
from .events import (
    Failed,
    Note,
    Ready,
    Reconnecting,
    Reloaded,
    ReloadRefused,
    Reporter,
    SignalReceived,
    Starting,
    Stopped,
)
from .lifecycle import SETTLE, Attempt
from .ports import Ports, Readiness

__all__ = ["RELOADABLE", "Supervisor", "needs_new_link"]

T = TypeVar("T")

# What a reload applies to a running link (by diff); every other key needs a new link.
RELOADABLE = frozenset({
    "local_networks", "remote_networks", "remote_networks6", "local_lan_gateways",
    "remote_lan_gateways", "up_command", "down_command", "up_failure_aborts", "hook_timeout",
    "reconnect", "reconnect_delay", "reconnect_delay_max", "reconnect_tries", "retry_start",
    "dns_servers", "dns_domains",
})  # fmt: skip


def needs_new_link(old: SiteConfig, new: SiteConfig) -> list[str]:
    """The keys (`[section] key`) whose change a running link cannot take."""
    names = {key.attr: f"[{key.section}] {key.name}" for key in reversed(SCHEMA)}
    changed = [
        f.name for f in dataclasses.fields(SiteConfig)
        if f.compare and f.name not in RELOADABLE | {"path"}
        and getattr(old, f.name) != getattr(new, f.name)
    ]  # fmt: skip
    keys = [names.get(name, name) for name in changed]
    return list(dict.fromkeys(keys))


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
        self._inner: asyncio.Future[object] | None = None  # the attempt or the backoff wait
        self._redial = False  # reconnect(): the inner step was cancelled to dial again
        self._reload_lock = asyncio.Lock()
        self.live: Attempt | None = None  # the attempt whose link is up now
        self.waiting = False  # in a backoff wait between attempts
        self.reloads = 0

    def _ready(self, attempt: Attempt) -> None:
        """Routes are in place: tell systemd and the waiting `pppssh start` (once)."""
        assert attempt.link is not None
        link = attempt.link
        self.live = attempt
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
            cfg = self.cfg  # a reload may have changed it
            attempt = Attempt(cfg, self.ports, self.reporter, self.settle)
            self.current = attempt
            self.attempts += 1
            try:
                try:
                    await self._interruptible(attempt.run(self._ready))
                finally:
                    self.live = None
                return
            except asyncio.CancelledError:
                if not self._redialing():
                    raise
                waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
                failures = 0
                continue
            except TunnelError as exc:
                if self._redial and not self.stopping:  # the teardown of a reconnect failed
                    self._redial = False
                    self.reporter.report(Note(f"note: {exc}"))
                    continue
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
                self.waiting = True
                try:
                    await self._interruptible(self.ports.clock.sleep(delay))
                except asyncio.CancelledError:
                    if not self._redialing():
                        raise
                    waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
                    failures = 0
                finally:
                    self.waiting = False

    def stop(self, signame: str) -> None:
        """A signal: the first stops the site (its teardown runs); later ones are ignored."""
        if self.stopping or self._task is None:
            return
        self.stopping = True
        self.reporter.report(SignalReceived(signame))
        self._task.cancel()

    # ------------------------------------------------------------------ reconnect, reload

    async def _interruptible(self, step: Awaitable[T]) -> T:
        """Run one step of hold() (an attempt, a backoff wait) so that reconnect() can end it."""
        inner: asyncio.Future[T] = asyncio.ensure_future(step)
        self._inner = inner  # type: ignore[assignment]
        try:
            return await inner
        finally:
            self._inner = None

    def _redialing(self) -> bool:
        """After a cancellation: whether it was reconnect() (dial again) rather than a stop."""
        redial, self._redial = self._redial, False
        if self.stopping or not redial:
            return False
        task = asyncio.current_task()
        return task is None or task.cancelling() == 0

    def reconnect(self, signame: str = "") -> None:
        """Drop the link (its teardown runs) and dial again at once, skipping a backoff wait."""
        if self.stopping or self._inner is None or self._inner.done():
            return
        self.reporter.report(Reconnecting(self.cfg.name, 0.0, "reconnect requested"
                                          + (f" ({signame})" if signame else "")))  # fmt: skip
        self._redial = True
        self._inner.cancel()

    async def reload(self, load: Callable[[], SiteConfig]) -> bool:
        """Re-read the site file (load: trust checks and validation) and apply what changed to
        the running site by diff; a bad file, a key that needs a new link or a refused change
        changes nothing. Reports Reloaded or ReloadRefused; True when applied."""
        async with self._reload_lock:
            self.reloads += 1
            serial = self.reloads
            try:
                new = load()
            except ConfigError as exc:
                return self._refused(serial, str(exc))
            if new.name != self.cfg.name:
                return self._refused(serial, f"{new.path}: the site's name changed")
            keys = needs_new_link(self.cfg, new)
            if keys:
                return self._refused(
                    serial, f"{', '.join(keys)} changed: that needs a new link "
                    "(restart the site: stop, then start); nothing was changed",
                )  # fmt: skip
            changes: list[str] = []
            if self.live is not None and not self.stopping:
                try:
                    changes = await self.live.reload(new)
                except TunnelError as exc:
                    return self._refused(serial, str(exc))
            elif self.current is not None and not self.waiting and not self.stopping:
                return self._refused(serial, "the link is coming up; reload once it is up")
            elif new != self.cfg:
                changes = ["the next attempt uses it"]
            self.cfg = new
            self.reporter.report(Reloaded(new.name, serial, tuple(changes)))
            return True

    def _refused(self, serial: int, why: str) -> bool:
        """Report a reload that changed nothing; False."""
        self.reporter.report(ReloadRefused(self.cfg.name, serial, why))
        return False

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
