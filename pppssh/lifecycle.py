"""One attempt at a site's link: up step by step, watch, down in exact reverse order.

Talks only to ports (ports.py) and the ledger (ledger.py), and tells what happens through
events (events.py). Every change that outlives this process (routes, filter rules) goes into
the ledger as it succeeds; the teardown undoes the ledger newest first, with the local pppd,
the remote pppd's channel and the connection in between, as they were brought up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import dns, mss
from .config import Compression, SiteConfig, server_address_error
from .errors import CommandFailed, RemoteFailed, TunnelError
from .events import (
    CommandRun,
    Connected,
    Connecting,
    ErrorRecorded,
    Event,
    HookOutput,
    IpcpUp,
    KeepaliveRtt,
    LedgerChanged,
    LinkDown,
    LinkUp,
    LocalPppdStarted,
    LocalPppdStopped,
    Note,
    RemotePppdEnded,
    RemotePppdStarted,
    Reporter,
    RouteAdded,
    Stopping,
    Up,
)
from .ledger import Entry, Ledger, already_gone, diff, filter_entry, route_entry
from .linkfilter import local_filter, loose_warning
from .localppp import LinkInfo, describe_exit
from .plan import (
    Command,
    RouteChange,
    full_tunnel_routes,
    local_routes,
    qdisc_argv,
    remote_congestion_command,
    remote_interface_command,
    remote_leftover_check,
    remote_leftover_kill,
    remote_pppd_argv,
    remote_routes,
    server_route,
    shell_join,
)
from .ports import LocalPppd, Ports, Runner, SshTransport, StateStore
from .sanitize import printable, valid_ifname
from .ssh import find_ppp_interface

__all__ = ["SETTLE", "Attempt", "recover"]

T = TypeVar("T")
SETTLE = 0.5  # seconds to let the other parts of a dying link report, for the right reason
RP_FILTER_ALL = "/proc/sys/net/ipv4/conf/all/rp_filter"
_warned_loose: set[str] = set()  # sites whose loose conf/all was reported (once per process)


class Attempt:
    """One attempt: SSH connection, remote pppd, local pppd, pump, filter, routes, hooks."""

    def __init__(self, cfg: SiteConfig, ports: Ports, reporter: Reporter,
                 settle: float = SETTLE) -> None:  # fmt: skip
        """Prepare; nothing is touched until run()."""
        self.cfg = cfg
        self.ports = ports
        self.reporter = reporter
        self.settle = settle
        self.remote_prefix = f"[{cfg.user}@{cfg.host}]"
        self.ledger = Ledger(on_change=lambda entries: self.emit(LedgerChanged(tuple(entries))))
        self.ssh: SshTransport | None = None
        self.connected = False
        self.channel = False
        self.local: LocalPppd | None = None
        self.link: LinkInfo | None = None
        self.remote_interface: str | None = None
        self.down_armed = False  # the down command runs once up has been reached
        self.came_up = False
        self._deadline = 0.0
        self._reloading: asyncio.Task[list[str]] | None = None  # a reload under way
        self._going_down = False  # down() has begun: no reload any more
        self.resolver: dns.Resolver | None = None  # how [dns] is set here (dns.detect)

    # ------------------------------------------------------------------ helpers

    def emit(self, event: Event) -> None:
        """Tell the reporters."""
        self.reporter.report(event)

    def _failures(self) -> list[asyncio.Future[Any]]:
        """Futures that complete when some part of the link has died."""
        futures: list[asyncio.Future[Any]] = []
        if self.ssh is not None and self.connected:
            futures += self.ssh.failures()
        if self.local is not None:
            futures.append(self.local.exited)
        return futures

    def why_down(self) -> str:
        """Which part died and how, remote text made safe to show."""
        if self.local is not None and self.local.exited.done():
            lines = self.local.last_lines()
            status = describe_exit(self.local.exited.result())
            text = f"local pppd exited, {status}" + (f": {lines}" if lines else "")
        else:
            lost = self.ssh.why_lost() if self.ssh is not None else None
            text = lost or "link lost"
        return printable(text, 600)

    async def _until(self, what: str, awaitable: Awaitable[T]) -> T:
        """Wait for one step, failing fast if any part dies or the up_timeout passes."""
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        remaining = max(0.0, self._deadline - self.ports.clock.monotonic())
        try:
            await asyncio.wait(
                [task, *self._failures()], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.done() and not task.cancelled():
            return task.result()
        if any(f.done() for f in self._failures()):
            raise TunnelError(f"{what} failed: {self.why_down()}")
        raise TunnelError(f"{what}: no result within up_timeout={self.cfg.up_timeout:g}s")

    async def _remote(self, command: Command, timeout: float = 60.0) -> str:
        """A remote request, with what the remote side wrote to stderr made safe to show."""
        assert self.ssh is not None
        try:
            return await self.ssh.run(command, timeout)
        except RemoteFailed as exc:
            raise RemoteFailed(exc.shown, exc.status, printable(exc.stderr)) from None

    async def _local(self, command: Command) -> str:
        """A local command, shown as `[#] ...` first."""
        self.emit(CommandRun("local", command.shown))
        return await self.ports.runner.run(command)

    async def _change(self, entry: Entry, at: int | None = None) -> None:
        """Make a local change, in the ledger (at its end, or at index at) before its command
        runs, taken out again when the command fails. A stop or a SIGKILL while it runs finds
        it there and undoes it (the command is not stopped half way: the runner lets it end);
        recorded after the command, a filter rule would outlive the site in no ledger, and
        the next start would fail on it with `File exists`."""
        if at is None:
            self.ledger.add(entry)
        else:
            self.ledger.insert(at, entry)
        try:
            await self._local(Command(entry.apply))
        except CommandFailed:
            self.ledger.remove(entry)
            raise

    # ------------------------------------------------------------------ bring-up

    async def up(self) -> None:
        """Connect, start both pppds, pump, wait for IPCP, add routes, run the up command."""
        cfg = self.cfg
        clock = self.ports.clock
        self._deadline = clock.monotonic() + cfg.up_timeout
        self.resolver = self._dns_resolver(cfg)  # before anything changes
        self.emit(Connecting(cfg.destination, str(cfg.known_hosts)))
        self.ssh = ssh = self.ports.ssh(cfg)
        server = await ssh.connect()
        self.connected = True
        self.emit(Connected(printable(server)))
        self._refuse_server_address()  # before anything changes

        await self._until("cleaning up after an earlier session", self._cleanup_remote())
        await self._until("setting the way down's congestion control", self._congestion())

        command = shell_join(remote_pppd_argv(cfg))
        self.emit(CommandRun("remote", command, self.remote_prefix))
        await ssh.open_pppd(command)
        self.channel = True
        await self._until("starting the remote pppd", ssh.first_frame())
        self.emit(RemotePppdStarted())

        local = self.ports.pppd()
        argv = local.start()
        self.local = local  # started: from here on it is stopped on the way down
        self.emit(LocalPppdStarted(local.pid, shell_join(argv)))
        await self._until("starting the local pppd", local.wait_connected())
        await self._apply_filter()  # before the first frame from the peer is passed on
        ssh.attach(local.master)

        self.link = link = await self._until("PPP negotiation", local.wait_ipcp())
        if (link.local, link.remote) != (str(cfg.local_address), str(cfg.remote_address)):
            raise TunnelError(
                f"IPCP agreed on {link.local} -> {link.remote}, not the configured "
                f"{cfg.local_address} -> {cfg.remote_address}"
            )
        self.emit(IpcpUp(link.interface, link.local, link.remote))
        if cfg.ipv6:
            ours, peer = await self._until("IPv6 negotiation (IPV6CP)", local.wait_ipv6cp())
            self.emit(Note(f"IPv6 up: {ours} -> {peer}"))
        self.remote_interface = await self._until("finding the remote interface", self._remote_if())
        self.emit(LinkUp(link.interface, link.local, link.remote, self.remote_interface))
        await self._clamp_mss(link.interface)  # before any route sends traffic through
        await self._set_qdisc(link.interface)

        if cfg.full_tunnel:
            await self._pin_server_route()
        await self._add_routes(
            local_routes(cfg, link.interface) + full_tunnel_routes(cfg, link.interface),
            remote_routes(cfg, self.remote_interface),
        )
        await self._set_dns()
        if cfg.compression is not Compression.NONE:
            self.emit(Note(f"compression: {local.compression or 'CCP agreed on none'}"))
        self.down_armed = bool(cfg.down_command)  # like pppd's ip-down: once up has run
        if cfg.up_command:
            await self._run_up()
        self.came_up = True
        self.emit(Up(clock.time()))

    async def _congestion(self) -> None:
        """Have the remote sshd send the way down with tcp_congestion_down (pppssh-congestion
        sets it on this connection's socket there). Where it cannot (a gateway set up before
        the key, a kernel without the algorithm) that is a note: the link comes up all the
        same, with the remote system's congestion control."""
        command = remote_congestion_command(self.cfg)
        if command is None:
            return
        self.emit(CommandRun("remote", command.shown, self.remote_prefix))
        try:
            said = await self._remote(command, timeout=30)
        except RemoteFailed as exc:
            # the program's own refusals (no bbr in that kernel, ...) need no new set-up; a
            # helper, sudo or gateway without it does
            setup = "" if exc.stderr.startswith("pppssh-congestion:") else (
                f" (`pppssh remote-setup {self.cfg.path}` sets it up there; "
                "`tcp_congestion_down = default` stops asking)"
            )  # fmt: skip
            self.emit(Note(f"note: the way down keeps the remote's congestion control: {exc}"
                           f"{setup}"))  # fmt: skip
            return
        if said.strip():
            self.emit(Note(printable(said.strip().splitlines()[0])[:200]))

    async def _cleanup_remote(self) -> None:
        """Stop a pppd an earlier, lost session of this site left on the remote gateway.

        After a WAN outage sshd may not have noticed yet that the old connection is dead, and
        its pppd still holds the old interface and routes; a new link beside it would clash.
        """
        cfg = self.cfg
        if cfg.helper:
            kill = remote_leftover_kill(cfg)
            self.emit(CommandRun("remote", kill.shown, self.remote_prefix))
            said = (await self._remote(kill, timeout=30)).strip()
            if said:
                self.emit(Note(printable(said)))
            return
        try:
            await self._remote(remote_leftover_check(cfg))
        except RemoteFailed:
            return  # no pppd of this site runs there (pgrep exit 1)
        for signal in ("TERM", "KILL"):
            kill = remote_leftover_kill(cfg, signal)
            shown = f"{kill.shown}  # left by an earlier session"
            self.emit(CommandRun("remote", shown, self.remote_prefix))
            try:
                await self._remote(kill)
            except RemoteFailed as exc:
                self.emit(Note(f"note: cannot stop it ({exc}); it ends by itself within "
                               "lcp_echo_interval x lcp_echo_failure seconds"))  # fmt: skip
                return
            for _ in range(20):
                await self.ports.clock.sleep(0.5)
                try:
                    await self._remote(remote_leftover_check(cfg))
                except RemoteFailed:
                    self.emit(
                        Note("stopped the pppd an earlier session left on the remote gateway")
                    )
                    return

    async def _apply_filter(self) -> None:
        """Anti-spoofing on our end of the link (linkfilter), each step into the ledger."""
        assert self.local is not None
        ifname = self.local.interface or ""
        if not valid_ifname(ifname):
            raise TunnelError(f"the local pppd names no pppN interface ('{printable(ifname, 40)}')")
        for step in local_filter(self.cfg, ifname):
            try:
                await self._change(filter_entry(step.why, step.apply, step.undo))
            except CommandFailed as exc:
                raise TunnelError(f"link filter ({step.why}): {exc}") from None
        self._check_loose(ifname)

    def _check_loose(self, ifname: str) -> None:
        """Warn (once per site and process, and in status) when conf/all makes rp_filter loose."""
        try:
            warning = loose_warning(self.ports.runner.rp_filter_all(), ifname)
        except (OSError, ValueError):
            warning = f"warning: cannot read {RP_FILTER_ALL}; the reverse-path filter is unchecked"
        if warning is None:
            return
        if self.cfg.name not in _warned_loose:
            _warned_loose.add(self.cfg.name)
            self.emit(Note(warning))
        self.emit(ErrorRecorded(warning, keep_first=True))

    async def _remote_if(self) -> str:
        """Ask the remote gateway which interface carries our link (no privilege needed)."""
        command = remote_interface_command(self.cfg)
        delay = 0.1
        while True:
            out = await self._remote(command)
            if self.cfg.helper:  # the helper answers with the name, or nothing yet
                words = out.split()
                name = words[0] if words else None
            else:
                name = find_ppp_interface(
                    out, str(self.cfg.remote_address), str(self.cfg.local_address)
                )
            if name:
                if not valid_ifname(name):
                    raise TunnelError(
                        f"the remote gateway names the link's interface "
                        f"'{printable(name, 40)}', not pppN: refused"
                    )
                return name
            await self.ports.clock.sleep(delay)  # remote IPCP finishes a moment after ours
            delay = min(delay * 2, 1.0)

    def _refuse_server_address(self) -> None:
        """A host name hid it from the parser: a PPP address that is the SSH connection's own
        peer would route that connection into the link it carries. Refused here."""
        assert self.ssh is not None
        if self.cfg.proxy_command:
            return  # no TCP peer of ours: a proxy command carries the connection
        error = server_address_error(self.cfg, self.ssh.peer_address())
        if error is not None:
            raise TunnelError(str(error))

    async def _pin_server_route(self) -> None:
        """Before the full tunnel takes all IPv4 traffic: keep the SSH server where it is."""
        assert self.ssh is not None
        server = self.ssh.peer_address()
        if ":" in server:
            return  # an IPv6 SSH connection is not affected by IPv4 routes
        try:
            out = await self._local(Command(("ip", "-4", "route", "get", server)))
            route = server_route(server, out)
        except (CommandFailed, ValueError) as exc:
            raise TunnelError(f"full tunnel: {exc}") from None
        await self._add_local(route, "server-route")

    async def _add_routes(self, local: list[RouteChange], remote: list[RouteChange]) -> None:
        """Both gateways at once, each in order: the slower side sets the time, not the sum.

        Both sides run to their end even when one fails, so every route that was added is in
        the ledger before the failure is raised.
        """

        async def side(add: Callable[[RouteChange], Awaitable[None]],
                       routes: list[RouteChange]) -> None:  # fmt: skip
            """Add one side's routes in order."""
            for route in routes:
                await add(route)

        results = await asyncio.gather(
            side(self._add_local, local), side(self._add_remote, remote), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _add_local(self, route: RouteChange, kind: str = "route") -> None:
        """Add one local route and record it."""
        entry = route_entry("local", route, "server-route" if kind == "server-route" else "route")
        try:
            await self._change(entry)
        except CommandFailed as exc:
            raise TunnelError(str(exc)) from None
        self.emit(RouteAdded(entry))

    async def _add_remote(self, route: RouteChange) -> None:
        """Add one remote route over the same SSH connection and record it."""
        self.emit(CommandRun("remote", route.add.shown, self.remote_prefix))
        await self._remote(route.add)
        entry = route_entry("remote", route)
        self.ledger.add(entry)
        self.emit(RouteAdded(entry))

    def _hook_env(self) -> dict[str, str]:
        """What the up and down commands learn about the link."""
        assert self.link is not None
        return {
            "SITE": self.cfg.name,
            "IFNAME": self.link.interface,
            "LOCAL_IP": self.link.local,
            "REMOTE_IP": self.link.remote,
            "REMOTE_IFNAME": self.remote_interface or "",
        }

    async def _hook(self, argv: tuple[str, ...]) -> CommandFailed | None:
        """Run an up/down command, its output shown; how it failed, or None."""
        self.emit(CommandRun("local", shell_join(argv)))
        result = await self.ports.runner.hook(argv, self._hook_env(), self.cfg.hook_timeout)
        for line in result.output:
            self.emit(HookOutput(line))
        return result.failure

    async def _run_up(self) -> None:
        """The site's up command; its failure aborts the start unless up_failure = continue."""
        assert self.cfg.up_command
        failure = await self._hook(self.cfg.up_command)
        if failure is None:
            return
        if self.cfg.up_failure_aborts:
            raise TunnelError(f"up command failed: {failure}")
        self.emit(Note(f"note: up command failed: {failure}; the link stays (up_failure = "
                       "continue)"))  # fmt: skip
        self.emit(ErrorRecorded(f"up command failed: {failure}"))

    # ------------------------------------------------------------------ MSS clamping

    async def _clamp_mss(self, ifname: str) -> None:
        """Clamp TCP's MSS through the link (mss.py) with the first backend that works; each
        step into the ledger. mss_clamp = yes fails the start when none does, auto warns."""
        if not mss.wanted(self.cfg):
            return
        why: list[tuple[str, str]] = []
        for tool, steps in mss.backends(self.cfg, ifname):
            done: list[Entry] = []
            try:
                for step in steps:
                    await self._change(entry := mss.entry(step))
                    done.append(entry)
            except CommandFailed as exc:
                why.append((tool, mss.reason(exc.stderr)))
                self.emit(Note(f"note: {tool}: {why[-1][1]}"))
                for entry in reversed(done):
                    self.ledger.remove(entry)
                    await self._undo_local(entry)
                continue
            sizes = ", ".join(f"{size} ({family})" for family, size in mss.clamp_sizes(self.cfg))
            self.emit(Note(f"TCP MSS clamped to {sizes} through {ifname} ({tool})"))
            return
        text = mss.failure(self.cfg, why)
        if self.cfg.mss_clamp:
            raise TunnelError(text)
        self.emit(Note(f"warning: {text}"))
        self.emit(ErrorRecorded(text, keep_first=True))

    async def _set_qdisc(self, ifname: str) -> None:
        """The ppp interface's qdisc (cfg.qdisc); it goes with the interface, so nothing
        to undo. One that cannot be set is a warning: the link works without it."""
        if not self.cfg.qdisc:
            return
        try:
            await self._local(Command(qdisc_argv(ifname, self.cfg.qdisc)))
        except CommandFailed as exc:
            text = f"qdisc {self.cfg.qdisc} on {ifname} not set: {mss.reason(exc.stderr)}"
            self.emit(Note(f"warning: {text}"))
            self.emit(ErrorRecorded(text, keep_first=True))

    # ------------------------------------------------------------------ watch

    async def watch(self) -> str:
        """Wait until some part of the link dies; return why."""
        rtt = asyncio.ensure_future(self._keepalive_rtt())  # metrics; never ends the watch
        try:
            await asyncio.wait(self._failures(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            rtt.cancel()
        # The first sign is often an echo of the cause: the pty closes a moment before the
        # pidfd says the local pppd was killed, the channel before the connection says why.
        await asyncio.wait(self._failures(), timeout=self.settle)
        return self.why_down()

    async def _keepalive_rtt(self) -> None:
        """Time an SSH keepalive's round trip now and every keepalive_interval (0: never),
        for status and metrics; a lost answer is the keepalive's own business, not this."""
        interval = self.cfg.keepalive_interval
        while interval and self.ssh is not None:
            seconds = await self.ssh.keepalive_rtt()
            if seconds is not None:
                self.emit(KeepaliveRtt(seconds))
            await self.ports.clock.sleep(interval)

    # ------------------------------------------------------------------ down

    async def down(self) -> None:
        """Undo everything in reverse: down command, routes, local pppd, filter, channel,
        connection. Each step runs even when one before it failed; the first failure is
        raised at the end."""
        await self._reload_finished()  # and none after this
        steps: list[Callable[[], Awaitable[None]]] = []
        if self.down_armed:
            steps.append(self._run_down)
        steps.append(lambda: self._undo_until("filter"))
        if self.local is not None:
            steps.append(self._stop_local)
        steps.append(lambda: self._undo_until(None))
        if self.channel:
            steps.append(self._close_channel)
        if self.connected:
            steps.append(self._close_connection)
        first: BaseException | None = None
        for step in steps:
            try:
                await step()
            except BaseException as exc:  # every undo runs, as in an exit stack
                first = first or exc
        if first is not None:
            raise first

    async def _run_down(self) -> None:
        """The site's down command, before routes go; a failure is only reported."""
        assert self.cfg.down_command
        failure = await self._hook(self.cfg.down_command)
        if failure is not None:
            self.emit(Note(f"note: down command failed: {failure}"))

    async def _undo_until(self, kind: str | None) -> None:
        """Undo ledger entries newest first, down to (not including) the first of kind."""
        while (entry := self.ledger.last()) is not None and entry.kind != kind:
            self.ledger.remove(entry)
            if entry.side == "local":
                await self._undo_local(entry)
            else:
                await self._undo_remote(entry)

    async def _undo_local(self, entry: Entry) -> None:
        """Take back one local change (already gone if the interface went away)."""
        command = entry.undo_command
        if command is None:
            return
        try:
            await self._local(command)
        except CommandFailed as exc:
            gone = entry.gone_note if already_gone(entry, exc) else None
            self.emit(Note(gone if gone is not None else f"note: {exc}"))

    async def _undo_remote(self, entry: Entry) -> None:
        """Take back one remote change (already gone if the remote link died)."""
        command = entry.undo_command
        if command is None:
            return
        if self.ssh is None or self.ssh.connection_lost():
            self.emit(Note(f"remote route {entry.what.split()[0]} not removed: connection gone "
                           "(it went with the remote link)"))  # fmt: skip
            return
        self.emit(CommandRun("remote", command.shown, self.remote_prefix))
        try:
            await self._remote(command, timeout=15)
        except RemoteFailed as exc:
            self.emit(Note(f"note: {exc}"))

    async def _stop_local(self) -> None:
        """SIGTERM the local pppd: it sends LCP Terminate through the still-running pump."""
        assert self.local is not None
        if not self.local.exited.done():
            self.emit(CommandRun("local", f"kill -TERM {self.local.pid}  # local pppd"))
        status = await self.local.stop()
        if self.ssh is not None and self.channel:
            self.ssh.detach()
        self.emit(LocalPppdStopped(describe_exit(status)))

    async def _close_channel(self) -> None:
        """Let the remote pppd finish after LCP Terminate, else hang up its pty (SIGHUP)."""
        assert self.ssh is not None
        if self.ssh.pppd_open() and not await self.ssh.wait_pppd_end(5):
            self.emit(Note("closing the channel (remote pppd gets SIGHUP)"))
            self.ssh.hang_up()
            await self.ssh.wait_pppd_end(10)
        self.emit(RemotePppdEnded(printable(self.ssh.pppd_end())))

    async def _close_connection(self) -> None:
        """Close the SSH connection."""
        assert self.ssh is not None
        await self.ssh.close()
        self.emit(Note(f"disconnected from {self.cfg.destination}"))

    # ------------------------------------------------------------------ reload

    def wanted(self, cfg: SiteConfig) -> list[Entry]:
        """The filter and route entries cfg gives this running link, in the order of up."""
        assert self.local is not None and self.link is not None
        ifname = self.link.interface
        entries = [filter_entry(s.why, s.apply, s.undo) for s in local_filter(cfg, ifname)]
        here = local_routes(cfg, ifname) + full_tunnel_routes(cfg, ifname)
        entries += [route_entry("local", route) for route in here]
        there = remote_routes(cfg, self.remote_interface or "")
        return entries + [route_entry("remote", route) for route in there]

    async def reload(self, new: SiteConfig) -> list[str]:
        """Apply new networks and hooks to the running link by diff, the link untouched:
        additions first (filter rules, local routes, remote routes), then removals newest
        first. A refused addition is rolled back and raised as TunnelError; the link and the
        ledger are then as before. What changed, one line each."""
        if self._going_down:
            raise TunnelError("the link is going down; the next attempt reads the site file")
        self._reloading = asyncio.ensure_future(self._reload(new))
        try:
            return await asyncio.shield(self._reloading)
        finally:
            if self._reloading.done():
                self._reloading = None

    async def _reload_finished(self) -> None:
        """Let a reload under way finish before the teardown reads the ledger; no new one."""
        self._going_down = True
        if self._reloading is not None:
            with contextlib.suppress(BaseException):
                await self._reloading

    async def _reload(self, new: SiteConfig) -> list[str]:
        """reload()'s work (see there)."""
        old = [e for e in self.ledger.entries if e.kind in ("route", "filter")]
        remove, add = diff(old, self.wanted(new))
        dns_apply, dns_forget, dns_undo = self._dns_wanted(new)
        added: list[Entry] = []
        dns_done: list[tuple[Entry, Entry | None]] = []
        try:
            for entry in add:
                await self._reload_apply(entry)
                added.append(entry)
            for entry in dns_apply:
                dns_done.append(await self._replace_dns(entry, dns_forget))
        except (CommandFailed, RemoteFailed) as exc:
            await self._dns_rollback(dns_done)
            for entry in reversed(added):
                self.ledger.remove(entry)
                await (self._undo_local if entry.side == "local" else self._undo_remote)(entry)
            where = "remote gateway" if isinstance(exc, RemoteFailed) else "this gateway"
            hint = " (set it up there with `pppssh remote-setup`)" if where[0] == "r" else ""
            raise TunnelError(f"refused on the {where}{hint}: {exc}; rolled back, "
                              "the link is unchanged") from None  # fmt: skip
        for entry in remove + dns_undo:
            self.ledger.remove(entry)
            await (self._undo_local if entry.side == "local" else self._undo_remote)(entry)
        gained = [n for n in new.remote_networks if n not in self.cfg.remote_networks]
        self.cfg = new
        if self.came_up:
            self.down_armed = bool(new.down_command)
        done = [f"added {e.side} {e.kind} {e.what}" for e in add]
        done += [f"set {e.what}" for e in dns_apply]
        done += [f"removed {e.side} {e.kind} {e.what}" for e in remove + dns_undo]
        if gained and not new.full_tunnel:  # the remote filter is pppd's ip-up script there
            nets = ", ".join(str(n) for n in gained)
            done.append(
                f"note: the remote gateway's link filter forwards to {nets} from its next link "
                "on (`pppssh remote-setup --apply`, then `pppssh reconnect`)"
            )
        return done

    async def _reload_apply(self, entry: Entry) -> None:
        """Apply one entry and record it: a filter rule beside the others, a route at the end
        (the remote ones are routes)."""
        if entry.side == "remote":
            self.emit(CommandRun("remote", shell_join(entry.apply), self.remote_prefix))
            await self._remote(Command(entry.apply))
            self.ledger.add(entry)
        elif entry.kind == "filter":
            kinds = [e.kind for e in self.ledger.entries]
            at = len(kinds) - kinds[::-1].index("filter") if "filter" in kinds else 0
            await self._change(entry, at)
            return
        else:
            await self._change(entry)
        self.emit(RouteAdded(entry))

    # ------------------------------------------------------------------ DNS (dns.py)

    def _dns_resolver(self, cfg: SiteConfig) -> dns.Resolver | None:
        """How [dns] is set on this gateway (None without it); TunnelError with the usual
        file:line: key line when no method is there or it cannot do what cfg asks."""
        if not cfg.dns_servers:
            return None
        resolver, why = dns.detect()
        error = dns.missing(cfg, why) if resolver is None else dns.refusal(cfg, resolver)
        if error is not None or resolver is None:
            raise TunnelError(str(error))
        return resolver

    async def _set_dns(self) -> None:
        """Set the site's DNS servers and domains on the local pppN, each into the ledger."""
        if self.resolver is None or self.link is None:
            return
        self.emit(Note(f"DNS through {self.resolver.describe()}"))
        for entry in dns.entries(self.cfg, self.resolver, self.link.interface):
            try:
                await self._change(entry)
            except CommandFailed as exc:
                raise TunnelError(f"DNS: {exc}") from None

    def _dns_wanted(self, new: SiteConfig) -> tuple[list[Entry], list[Entry], list[Entry]]:
        """A reload's DNS changes (dns.replace), decided before anything changes."""
        assert self.link is not None
        if new.dns_servers and (self.resolver is None or new.dns_domains != self.cfg.dns_domains):
            self.resolver = self._dns_resolver(new)
        wanted = dns.entries(new, self.resolver, self.link.interface) if self.resolver else []
        return dns.replace([e for e in self.ledger.entries if e.kind == "dns"], wanted)

    async def _replace_dns(self, entry: Entry, forget: list[Entry]) -> tuple[Entry, Entry | None]:
        """Apply one DNS entry over the one it replaces (same target); both, for a rollback."""
        await self._change(entry)
        old = next((e for e in forget if dns.target(e) == dns.target(entry)), None)
        if old is not None:
            self.ledger.remove(old)
        return entry, old

    async def _dns_rollback(self, done: list[tuple[Entry, Entry | None]]) -> None:
        """Put back what a refused reload's DNS step replaced, newest first."""
        for entry, old in reversed(done):
            self.ledger.remove(entry)
            if old is None:
                await self._undo_local(entry)
                continue
            try:
                await self._local(Command(old.apply))
            except CommandFailed as exc:
                self.emit(Note(f"note: {exc}"))
            self.ledger.add(old)

    # ------------------------------------------------------------------ the attempt

    async def run(self, ready: Callable[[Attempt], None]) -> None:
        """Bring the link up, call ready(), hold it until cancelled or lost, undo everything.

        Raises TunnelError when the start fails or the link goes down; CancelledError passes.
        """
        try:
            await self.up()
        except BaseException as exc:
            self.emit(Stopping())
            if isinstance(exc, asyncio.CancelledError):
                self.emit(Note("interrupted during start; undoing what was done"))
            elif self.connected:
                self.emit(Note("start failed; undoing what was done"))
            await self.down()
            raise
        ready(self)
        try:
            reason = await self.watch()
        except BaseException:
            self.emit(Stopping())
            self.emit(Note("stopping"))
            await self.down()
            raise
        self.emit(LinkDown(reason, reconnecting=self.cfg.reconnect))  # the supervisor's rule
        await self.down()
        raise TunnelError(f"link down: {reason}")


async def recover(site: str, runner: Runner, store: StateStore, reporter: Reporter) -> bool:
    """Undo what a pppssh that died without its teardown (SIGKILL, a crash) left here.

    Its local pppd is stopped (the interface and its routes go with it), then the ledger of
    its state file is undone, newest first. On the remote gateway the next start's cleanup
    step stops the old remote pppd. True when something was left.
    """
    stale = store.read(site)
    pids = runner.leftover_pppd(stale, f"pppssh-{site}")
    if stale is None and not pids:
        return False
    who = f"an earlier pppssh (pid {stale.pid})" if stale else "an earlier pppssh"
    reporter.report(Note(f"pppssh: {site}: {who} ended without its teardown; undoing what it left"))
    for pid in pids:
        reporter.report(CommandRun("local", f"kill -TERM {pid}  # its local pppd"))
        reporter.report(Note(f"local pppd {pid} stopped ({await runner.stop_process(pid)})"))
    try:
        ledger = Ledger.from_json(stale.ledger if stale is not None else [])
    except ValueError as exc:
        reporter.report(Note(f"note: the state file of {site} has no usable ledger ({exc})"))
        ledger = Ledger()
    for entry in reversed(ledger.entries):
        command = entry.undo_command
        if entry.side != "local" or command is None:
            continue  # the remote side: the next start's cleanup stops the old pppd there
        if dns.gone_with_interface(entry):
            continue  # resolved forgot it with the pppN, whose name may be another's by now
        reporter.report(CommandRun("local", command.shown))
        try:
            await runner.run(command)
        except CommandFailed as exc:
            if already_gone(entry, exc):
                reporter.report(Note("already gone with its interface"))
            else:
                reporter.report(Note(f"note: {exc}"))
    store.remove(site)
    return True
