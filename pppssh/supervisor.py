"""Holding a site: attempts one after another (retry_start, reconnect with backoff, give-up
after reconnect_tries), stop on a signal, readiness for the waiting `pppssh start`; a reload
of the site file by diff and a reconnect at once, on request; with several gateways in
`host`, the next one after a failure and the failback to the first.

Several gateways: after a failed attempt or a lost link, the first gateway of the list not
tried since the link was last up is dialled at once; once every one has failed, the backoff
wait, then the list again from the top. On a later gateway, every `failback` seconds the
first is probed with a full SSH login (host key checked, key accepted, nothing run) while
the link stays up; only when that succeeds is the link moved back (its teardown, then an
attempt at the first; if that fails, the list goes on from there).

Talks only to ports (clock, readiness, the lifecycle's ports) and reporters, so that every
path runs against fakes in the fast tests, with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from .backoff import delays
from .config import SCHEMA, ConfigError, SiteConfig, server_text
from .errors import PppsshError, TunnelError
from .events import (
    Failback,
    Failed,
    NextServer,
    Note,
    Ready,
    Reconnecting,
    Reloaded,
    ReloadRefused,
    Reporter,
    ServerChosen,
    SignalReceived,
    Starting,
    Stopped,
)
from .lifecycle import SETTLE, Attempt
from .ports import Ports, Readiness
from .sanitize import printable

__all__ = ["RELOADABLE", "Supervisor", "needs_new_link"]

T = TypeVar("T")

# What a reload applies to a running link (by diff); every other key needs a new link.
RELOADABLE = frozenset({
    "local_networks", "remote_networks", "remote_networks6", "local_lan_gateways",
    "remote_lan_gateways", "up_command", "down_command", "up_failure_aborts", "hook_timeout",
    "reconnect", "reconnect_delay", "reconnect_delay_max", "reconnect_tries", "retry_start",
    "dns_servers", "dns_domains", "failback",
})  # fmt: skip


def needs_new_link(old: SiteConfig, new: SiteConfig) -> list[str]:
    """The keys (`[section] key`) whose change a running link cannot take."""
    names = {key.attr: f"[{key.section}] {key.name}" for key in reversed(SCHEMA)}
    names["secondaries"] = names["host"]
    changed = [
        f.name for f in dataclasses.fields(SiteConfig)
        if f.compare and f.name not in RELOADABLE | {"path"}
        and getattr(old, f.name) != getattr(new, f.name)
    ]  # fmt: skip
    keys = [names.get(name, name) for name in changed]
    return list(dict.fromkeys(keys))


def _give_up(cfg: SiteConfig, exc: TunnelError, failures: int) -> None:
    """Raise the site's last error once reconnect_tries failed attempts in a row are reached."""
    if cfg.reconnect_tries and failures > cfg.reconnect_tries:
        raise TunnelError(
            f"{exc} (giving up after {cfg.reconnect_tries} failed attempts in a row: "
            "reconnect_tries)"
        ) from None


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
        self.server = 0  # which of cfg.servers the attempt dials (or the link is on)
        self._tried: dict[int, str] = {}  # gateways failed since the link was last up: why
        self._failback: asyncio.Task[None] | None = None

    def _ready(self, attempt: Attempt) -> None:
        """Routes are in place: tell systemd and the waiting `pppssh start` (once)."""
        assert attempt.link is not None
        link = attempt.link
        self.live = attempt
        text = f"{link.interface} {link.local} -> {link.remote}"
        if len(self.cfg.servers) > 1:
            text += f" via {self._shown(self.server)}"
        self.reporter.report(Ready(self.cfg.name, text, self.pid, again=self.announced))
        self.announced = True
        if not self.told:
            self.told = True
            self.readiness.ready()
        if self.server and self.cfg.failback and self._failback is None:
            self._failback = asyncio.ensure_future(self._failback_loop(attempt))

    def _shown(self, index: int) -> str:
        """Gateway index of the site's list, as host:port."""
        return server_text(self.cfg.servers[index])

    def _from_top(self) -> None:
        """Dial the list again from its first gateway, none tried yet."""
        self.server, self._tried = 0, {}

    async def _end_failback(self) -> None:
        """The link this failback watched is gone: stop probing."""
        task, self._failback = self._failback, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _failback_loop(self, attempt: Attempt) -> None:
        """On a later gateway: every `failback` seconds, probe the first; move back once it
        accepts the login, else keep the link where it is (a reload may set failback = 0)."""
        while self.cfg.failback:
            await self.ports.clock.sleep(self.cfg.failback)
            if self.live is not attempt or self.stopping or not self.cfg.failback:
                return
            ok, detail = await self._probe(self.cfg.at_server(0))
            if self.live is not attempt or self.stopping:
                return
            self.reporter.report(Failback(self.cfg.name, self._shown(0), ok, detail,
                                          self._shown(self.server), self.cfg.failback))  # fmt: skip
            if ok:
                self._redial_now(f"failback to {self._shown(0)}")
                return

    async def _probe(self, cfg: SiteConfig) -> tuple[bool, str]:
        """A full SSH login to cfg's gateway (its host key checked against known_hosts, the
        key accepted), nothing run there, then closed: (succeeded, what it said)."""
        ssh = self.ports.ssh(cfg)
        try:
            said = await asyncio.wait_for(ssh.connect(), 2 * cfg.connect_timeout + 10)
        except (PppsshError, OSError, TimeoutError) as exc:
            return False, printable(str(exc) or type(exc).__name__, 300)
        finally:
            with contextlib.suppress(PppsshError, OSError, TimeoutError):
                await ssh.close()
        return True, f"host key known, server {printable(said, 80)}"

    async def hold(self) -> None:
        """Attempts until one ends by cancellation; TunnelError when the site gives up."""
        cfg = self.cfg
        waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
        failures = 0
        while True:
            cfg = self.cfg  # a reload may have changed it
            shown = tuple(server_text(s) for s in cfg.servers)
            self.reporter.report(ServerChosen(cfg.name, self.server, shown))
            attempt = Attempt(cfg.at_server(self.server), self.ports, self.reporter, self.settle)
            self.current = attempt
            self.attempts += 1
            try:
                try:
                    await self._interruptible(attempt.run(self._ready))
                finally:
                    self.live = None
                    await self._end_failback()
                return
            except asyncio.CancelledError:
                if not self._redialing():
                    raise
                waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
                failures = 0
                self._from_top()
                continue
            except TunnelError as exc:
                if self._redial and not self.stopping:  # the teardown of a reconnect failed
                    self._redial = False
                    self.reporter.report(Note(f"note: {exc}"))
                    self._from_top()
                    continue
                if attempt.came_up:  # this attempt had come up: start over
                    waits = self.backoff(cfg.reconnect_delay, cfg.reconnect_delay_max)
                    failures = 0
                    self._tried = {}
                self._tried[self.server] = str(exc)
                untried = [i for i in range(len(shown)) if i not in self._tried]
                if untried and (cfg.reconnect or not self.announced):
                    failures += 1
                    _give_up(cfg, exc, failures)
                    self.server = untried[0]
                    self.reporter.report(NextServer(cfg.name, str(exc), shown[self.server]))
                    continue
                if len(shown) > 1 and not untried:  # every gateway failed: each one's reason
                    why = "; ".join(f"{shown[i]}: {self._tried[i]}" for i in sorted(self._tried))
                    exc = TunnelError(f"every gateway failed: {why}")
                if not (cfg.reconnect if self.announced else cfg.retry_start):
                    raise exc
                self._from_top()
                failures += 1
                _give_up(cfg, exc, failures)
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
        """Drop the link (its teardown runs) and dial again at once, skipping a backoff wait
        (from the first gateway of the list)."""
        self._redial_now("reconnect requested" + (f" ({signame})" if signame else ""))

    def _redial_now(self, why: str) -> None:
        """End the attempt or the backoff wait under way and dial the list from the top."""
        if self.stopping or self._inner is None or self._inner.done():
            return
        self.reporter.report(Reconnecting(self.cfg.name, 0.0, why))
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
                    changes = await self.live.reload(new.at_server(self.server))
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
