"""The tunnel lifecycle: bring the link up step by step, each step pushing its own undo."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from ._asyncssh import asyncssh
from .bridge import Bridge
from .config import Compression, SiteConfig
from .linkfilter import FilterStep, local_filter, loose_warning
from .localppp import LinkInfo, LocalPppd, describe_exit
from .plan import (
    Command,
    RouteChange,
    full_tunnel_routes,
    local_routes,
    remote_interface_command,
    remote_leftover_check,
    remote_leftover_kill,
    remote_pppd_argv,
    remote_routes,
    server_route,
    shell_join,
)
from .sanitize import printable, valid_ifname
from .ssh import (
    RemoteFailed,
    TunnelError,
    close_connection,
    connect,
    find_ppp_interface,
    open_bridge,
    run_remote,
)
from .system import CommandFailed, State, echo, run_hook, run_local, write_state

__all__ = ["Tunnel", "TunnelError"]

T = TypeVar("T")
SETTLE = 0.5  # seconds to let the other parts of a dying link report, for the right reason
RP_FILTER_ALL = "/proc/sys/net/ipv4/conf/all/rp_filter"
_warned_loose: set[str] = set()  # sites whose loose conf/all was reported (once per process)


class Tunnel:
    """One site's link: SSH connection, remote pppd, local pppd, pump, routes, undo stack."""

    def __init__(self, cfg: SiteConfig, state: State) -> None:
        """Prepare; nothing is touched until run()."""
        self.cfg = cfg
        self.state = state
        self.remote_prefix = f"[{cfg.user}@{cfg.host}]"
        self.conn: asyncssh.SSHClientConnection | None = None
        self.client: Any = None
        self.bridge: Bridge | None = None
        self.local: LocalPppd | None = None
        self.link: LinkInfo | None = None
        self.remote_interface: str | None = None
        self.filter: list[FilterStep] = []  # the link filter's steps applied so far
        self._deadline = 0.0

    # ------------------------------------------------------------------ helpers

    def save(self, **changes: Any) -> None:
        """Update and write the state file."""
        for key, value in changes.items():
            setattr(self.state, key, value)
        write_state(self.state)

    def _failures(self) -> list[asyncio.Future[Any]]:
        """Futures that complete when some part of the link has died."""
        futures: list[asyncio.Future[Any]] = []
        if self.client is not None:
            futures.append(self.client.lost)
        if self.bridge is not None:
            futures += [self.bridge.closed, self.bridge.master_closed]
        if self.local is not None:
            futures.append(self.local.exited)
        return futures

    def _remote_end(self) -> str:
        """How the remote pppd ended, with pppd's meaning of its exit status."""
        assert self.bridge is not None
        if self.bridge.exit_status is not None:
            return describe_exit(self.bridge.exit_status)
        return self.bridge.describe_end()

    def _why_down(self) -> str:
        """Explain which part died and how, remote text made safe to show."""
        return printable(self._why_down_raw(), 600)

    def _why_down_raw(self) -> str:
        """Which part died and how, as the parts tell it."""
        if self.local is not None and self.local.exited.done():
            lines = self.local.last_lines()
            status = describe_exit(self.local.exited.result())
            return f"local pppd exited, {status}" + (f": {lines}" if lines else "")
        if self.client is not None and self.client.lost.done() and self.client.lost.result():
            return f"SSH connection lost: {self.client.lost.result()}"
        if self.bridge is not None and self.bridge.closed.done():
            text = self.bridge.preamble_text()
            status = f"remote pppd ended, {self._remote_end()}"
            return status + (f": {text}" if text else "")
        if self.client is not None and self.client.lost.done():
            exc = self.client.lost.result()
            return f"SSH connection lost: {exc}" if exc else "SSH connection closed"
        if self.bridge is not None and self.bridge.master_closed.done():
            return "local pppd closed its terminal"
        return "link lost"

    async def _until(self, what: str, awaitable: Awaitable[T]) -> T:
        """Wait for one step, failing fast if any part dies or the up_timeout passes."""
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        remaining = max(0.0, self._deadline - time.monotonic())
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
            raise TunnelError(f"{what} failed: {self._why_down()}")
        raise TunnelError(f"{what}: no result within up_timeout={self.cfg.up_timeout:g}s")

    async def _run_remote(self, command: Command, timeout: float = 60.0) -> str:
        """run_remote, with what the remote side wrote to stderr made safe to show."""
        assert self.conn is not None
        try:
            return await run_remote(self.conn, command, timeout=timeout)
        except RemoteFailed as exc:
            raise RemoteFailed(exc.shown, exc.status, printable(exc.stderr)) from None

    # ------------------------------------------------------------------ bring-up

    async def up(self, stack: AsyncExitStack) -> None:
        """Connect, start both pppds, pump, wait for IPCP, add routes; push every undo."""
        cfg = self.cfg
        self._deadline = time.monotonic() + cfg.up_timeout
        echo("", f"connecting to {cfg.destination} (host key checked against {cfg.known_hosts})")
        self.conn, self.client = await connect(cfg)
        stack.push_async_callback(self._close_connection)
        echo("", f"connected; server {printable(str(self.conn.get_extra_info('server_version')))}")

        await self._until("cleaning up after an earlier session", self._cleanup_remote())

        command = shell_join(remote_pppd_argv(cfg))
        echo(self.remote_prefix, command)
        self.bridge = await open_bridge(self.conn, command)
        stack.push_async_callback(self._close_channel)
        await self._until("starting the remote pppd", self.bridge.first_frame.wait())
        echo("", "remote pppd started (first PPP frame received)")

        self.local = LocalPppd(cfg)
        # The filter's rules go after the local pppd and its interface: never an open moment.
        stack.push_async_callback(self._remove_filter)
        argv = self.local.start()
        stack.push_async_callback(self._stop_local)
        echo("[#]", shell_join(argv))
        self.save(local_pppd_pid=self.local.pid)
        await self._until("starting the local pppd", self.local.connected.wait())
        await self._apply_filter()  # before the first frame from the peer is passed on
        self.bridge.attach(self.local.master)

        self.link = await self._until("PPP negotiation", asyncio.shield(self.local.ipcp_up))
        link = self.link
        if (link.local, link.remote) != (str(cfg.local_address), str(cfg.remote_address)):
            raise TunnelError(
                f"IPCP agreed on {link.local} -> {link.remote}, not the configured "
                f"{cfg.local_address} -> {cfg.remote_address}"
            )
        self.save(interface=link.interface, local_address=link.local, remote_address=link.remote)
        if cfg.ipv6:
            ours, peer = await self._until("IPv6 negotiation (IPV6CP)",
                                           asyncio.shield(self.local.ipv6cp_up))  # fmt: skip
            echo("", f"IPv6 up: {ours} -> {peer}")
        self.remote_interface = await self._until("finding the remote interface", self._remote_if())
        echo(
            "", f"link up: {link.interface} {link.local} -> {link.remote} "
            f"(remote {self.remote_interface})"
        )  # fmt: skip
        self.save(remote_interface=self.remote_interface)

        if cfg.full_tunnel:
            await self._pin_server_route(stack)
        await self._add_routes(
            stack,
            local_routes(cfg, link.interface) + full_tunnel_routes(cfg, link.interface),
            remote_routes(cfg, self.remote_interface),
        )
        if cfg.compression is not Compression.NONE:
            echo("", f"compression: {self.local.compression or 'CCP agreed on none'}")
        if cfg.down_command:  # like pppd's ip-down: runs on the way down once up has run
            stack.push_async_callback(self._run_down)
        if cfg.up_command:
            await self._run_up()
        self.save(state="up", up_since=time.time())

    async def _pin_server_route(self, stack: AsyncExitStack) -> None:
        """Before the full tunnel takes all IPv4 traffic: keep the SSH server where it is."""
        assert self.conn is not None
        server = str(self.conn.get_extra_info("peername")[0])
        if ":" in server:
            return  # an IPv6 SSH connection is not affected by IPv4 routes
        try:
            out = await asyncio.to_thread(run_local, Command(("ip", "-4", "route", "get", server)))
            route = server_route(server, out)
        except (CommandFailed, ValueError) as exc:
            raise TunnelError(f"full tunnel: {exc}") from None
        await self._add_local(stack, route)

    async def _apply_filter(self) -> None:
        """Anti-spoofing on our end of the link (linkfilter), recorded as routes are."""
        assert self.local is not None
        ifname = self.local.interface or ""
        if not valid_ifname(ifname):
            raise TunnelError(f"the local pppd names no pppN interface ('{printable(ifname, 40)}')")
        for step in local_filter(self.cfg, ifname):
            try:
                await asyncio.to_thread(run_local, step.apply)
            except CommandFailed as exc:
                raise TunnelError(f"link filter ({step.why}): {exc}") from None
            self.filter.append(step)
            if step.undo is not None:
                self.save(local_filter=[*self.state.local_filter, step.apply.shown])
        self._check_loose(ifname)

    def _check_loose(self, ifname: str) -> None:
        """Warn (once per site and process, and in status) when conf/all makes rp_filter loose."""
        try:
            with open(RP_FILTER_ALL) as f:
                warning = loose_warning(int(f.read()), ifname)
        except (OSError, ValueError):
            warning = f"warning: cannot read {RP_FILTER_ALL}; the reverse-path filter is unchecked"
        if warning is None:
            return
        if self.cfg.name not in _warned_loose:
            _warned_loose.add(self.cfg.name)
            echo("", warning)
        if not self.state.last_error:
            self.save(last_error=warning)

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

    async def _run_up(self) -> None:
        """The site's up command; its failure aborts the start unless up_failure = continue."""
        try:
            await asyncio.to_thread(run_hook, self.cfg.up_command, self._hook_env(),
                                    self.cfg.hook_timeout)  # fmt: skip
        except CommandFailed as exc:
            if self.cfg.up_failure_aborts:
                raise TunnelError(f"up command failed: {exc}") from None
            echo("", f"note: up command failed: {exc}; the link stays (up_failure = continue)")
            self.save(last_error=f"up command failed: {exc}")

    async def _run_down(self) -> None:
        """The site's down command, before routes go; a failure is only reported."""
        try:
            await asyncio.to_thread(run_hook, self.cfg.down_command, self._hook_env(),
                                    self.cfg.hook_timeout)  # fmt: skip
        except CommandFailed as exc:
            echo("", f"note: down command failed: {exc}")

    async def _cleanup_remote(self) -> None:
        """Stop a pppd an earlier, lost session of this site left on the remote gateway.

        After a WAN outage sshd may not have noticed yet that the old connection is dead, and
        its pppd still holds the old interface and routes; a new link beside it would clash.
        """
        assert self.conn is not None
        cfg = self.cfg
        if cfg.helper:
            kill = remote_leftover_kill(cfg)
            echo(self.remote_prefix, kill.shown)
            said = (await self._run_remote(kill, timeout=30)).strip()
            if said:
                echo("", printable(said))
            return
        try:
            await self._run_remote(remote_leftover_check(cfg))
        except RemoteFailed:
            return  # no pppd of this site runs there (pgrep exit 1)
        for signal in ("TERM", "KILL"):
            kill = remote_leftover_kill(cfg, signal)
            echo(self.remote_prefix, f"{kill.shown}  # left by an earlier session")
            try:
                await self._run_remote(kill)
            except RemoteFailed as exc:
                echo("", f"note: cannot stop it ({exc}); it ends by itself within "
                         f"lcp_echo_interval x lcp_echo_failure seconds")  # fmt: skip
                return
            for _ in range(20):
                await asyncio.sleep(0.5)
                try:
                    await self._run_remote(remote_leftover_check(cfg))
                except RemoteFailed:
                    echo("", "stopped the pppd an earlier session left on the remote gateway")
                    return

    async def _remote_if(self) -> str:
        """Ask the remote gateway which interface carries our link (no privilege needed)."""
        assert self.conn is not None
        command = remote_interface_command(self.cfg)
        delay = 0.1
        while True:
            out = await self._run_remote(command)
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
            await asyncio.sleep(delay)  # remote IPCP finishes a moment after ours
            delay = min(delay * 2, 1.0)

    async def _add_routes(
        self, stack: AsyncExitStack, local: list[RouteChange], remote: list[RouteChange]
    ) -> None:
        """Both gateways at once, each in order: the slower side sets the time, not the sum.

        Both sides run to their end even when one fails, so every route that was added has
        its removal on the stack before the failure is raised.
        """

        async def side(
            add: Callable[[AsyncExitStack, RouteChange], Awaitable[None]],
            routes: list[RouteChange],
        ) -> None:
            for route in routes:
                await add(stack, route)

        results = await asyncio.gather(
            side(self._add_local, local), side(self._add_remote, remote), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _add_local(self, stack: AsyncExitStack, route: RouteChange) -> None:
        """Add one local route and push its removal."""
        try:
            await asyncio.to_thread(run_local, route.add)
        except CommandFailed as exc:
            raise TunnelError(str(exc)) from None
        stack.push_async_callback(self._del_local, route)
        self.save(local_routes=[*self.state.local_routes, route.add.shown])

    async def _add_remote(self, stack: AsyncExitStack, route: RouteChange) -> None:
        """Add one remote route over the same SSH connection and push its removal."""
        assert self.conn is not None
        echo(self.remote_prefix, route.add.shown)
        await self._run_remote(route.add)
        stack.push_async_callback(self._del_remote, route)
        self.save(remote_routes=[*self.state.remote_routes, route.add.shown])

    # ------------------------------------------------------------------ undo

    async def _del_remote(self, route: RouteChange) -> None:
        """Remove one remote route (already gone if the remote link died)."""
        self.save(remote_routes=[r for r in self.state.remote_routes if r != route.add.shown])
        if self.conn is None or (self.client is not None and self.client.lost.done()):
            echo("", f"remote route {route.network} not removed: connection gone "
                     "(it went with the remote link)")  # fmt: skip
            return
        echo(self.remote_prefix, route.delete.shown)
        try:
            await self._run_remote(route.delete, timeout=15)
        except RemoteFailed as exc:
            echo("", f"note: {exc}")

    async def _del_local(self, route: RouteChange) -> None:
        """Remove one local route (already gone if the interface went away)."""
        self.save(local_routes=[r for r in self.state.local_routes if r != route.add.shown])
        try:
            await asyncio.to_thread(run_local, route.delete)
        except CommandFailed as exc:
            if "No such process" in exc.stderr:  # the kernel dropped it with the interface
                echo("", f"route {route.network} already gone with its interface")
            else:
                echo("", f"note: {exc}")

    async def _remove_filter(self) -> None:
        """Delete the filter's rules (rp_filter went with the interface), last added first."""
        for step in reversed(self.filter):
            if step.undo is None:
                continue
            self.save(local_filter=[r for r in self.state.local_filter if r != step.apply.shown])
            try:
                await asyncio.to_thread(run_local, step.undo)
            except CommandFailed as exc:
                echo("", f"note: {exc}")
        self.filter = []

    async def _stop_local(self) -> None:
        """SIGTERM the local pppd: it sends LCP Terminate through the still-running pump."""
        assert self.local is not None
        if not self.local.exited.done():
            echo("[#]", f"kill -TERM {self.local.pid}  # local pppd")
        status = await self.local.stop()
        if self.bridge is not None:
            self.bridge.detach()
        echo("", f"local pppd stopped ({describe_exit(status)})")
        self.save(local_pppd_pid=None, interface=None)

    async def _close_channel(self) -> None:
        """Let the remote pppd finish after LCP Terminate, else hang up its pty (SIGHUP)."""
        assert self.bridge is not None
        if not self.bridge.closed.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.bridge.closed), 5)
        if not self.bridge.closed.done():
            echo("", "closing the channel (remote pppd gets SIGHUP)")
            self.bridge.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.bridge.closed), 10)
        echo("", f"remote pppd ended ({printable(self._remote_end())})")
        self.save(remote_interface=None)

    async def _close_connection(self) -> None:
        """Close the SSH connection."""
        if self.conn is not None:
            await close_connection(self.conn)
            echo("", f"disconnected from {self.cfg.destination}")

    # ------------------------------------------------------------------ running

    async def watch(self) -> str:
        """Wait until some part of the link dies; return why."""
        await asyncio.wait(self._failures(), return_when=asyncio.FIRST_COMPLETED)
        # The first sign is often an echo of the cause: the pty closes a moment before the
        # pidfd says the local pppd was killed, the channel before the connection says why.
        await asyncio.wait(self._failures(), timeout=SETTLE)
        return self._why_down()


async def run_tunnel(cfg: SiteConfig, state: State, ready: Callable[[Tunnel], None]) -> None:
    """Bring the link up, call ready(), hold it until cancelled or lost, undo everything."""
    tunnel = Tunnel(cfg, state)
    async with AsyncExitStack() as stack:
        try:
            await tunnel.up(stack)
        except TunnelError:
            tunnel.save(state="stopping")
            if tunnel.conn is not None:
                echo("", "start failed; undoing what was done")
            raise
        except asyncio.CancelledError:
            tunnel.save(state="stopping")
            echo("", "interrupted during start; undoing what was done")
            raise
        ready(tunnel)
        try:
            reason = await tunnel.watch()
        except asyncio.CancelledError:
            tunnel.save(state="stopping")
            echo("", "stopping")
            raise
        tunnel.save(state="stopping", last_error=f"link down: {reason}")
        echo("", f"link down: {reason}; undoing")
        raise TunnelError(f"link down: {reason}")
