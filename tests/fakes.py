"""Fake ports for the fast tests: a scripted SSH transport, a local pppd that can die at any
step, a runner that can refuse a command or hang, an in-memory state store, a recording
reporter, a fake clock and readiness. They share one World, which records every action in
order (`calls`) and fires the fault planned for a step when the lifecycle reaches it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pppssh.config import SiteConfig, parse
from pppssh.errors import CommandFailed, RemoteFailed, TunnelError, Unreachable
from pppssh.events import Event, Ready, Reporter
from pppssh.localppp import LinkInfo, describe_exit
from pppssh.plan import Command, local_pppd_argv
from pppssh.ports import HookResult, Ports
from pppssh.system import State

# Steps the lifecycle waits on under its up_timeout (a fault there makes the step hang, so
# the lifecycle must notice the dead part itself); at the other steps the call goes on and
# meets the world as the fault left it.
WAITED = {"cleanup", "first_frame", "connected", "ipcp", "ipv6cp", "remote_if"}
FAULTS = ("local-dies", "remote-dies", "ssh-lost", "cancel", "hang")
LOCAL, PEER, IFNAME, REMOTE_IF, PID = "10.99.0.1", "10.99.0.2", "ppp0", "ppp5", 4242


def site(extra: str = "", **sections: str) -> SiteConfig:
    """A site file: helper mode, one network each side; extra lines per section (the
    [networks] section given replaces the default one)."""
    return parse(site_text(extra, **sections), Path("/etc/pppssh/site-b.conf"))


def site_text(extra: str = "", **sections: str) -> str:
    """The text of site()'s file."""
    text = {
        "site": "name = site-b\n",
        "remote": "host = gw.example.net\nuser = vpn\nidentity = id\nknown_hosts = kh\n"
        "helper = yes\n",
        "ppp": f"local_address = {LOCAL}\nremote_address = {PEER}\nmss_clamp = no\n",  # test_mss
        "networks": "local = 10.1.0.0/24\nremote = 10.2.0.0/24\n",
        "hooks": "",
    }
    for name, lines in sections.items():
        text[name] = lines if name == "networks" else text[name] + lines
    return "".join(f"[{name}]\n{lines}" for name, lines in text.items()) + extra


class World:
    """What the fakes share: the record of actions, the planned faults, the scripted answers."""

    def __init__(self) -> None:
        """Nothing planned: every step succeeds."""
        self.calls: list[tuple[str, str]] = []
        self.steps: list[str] = []
        self.faults: dict[str, str] = {}  # step -> one of FAULTS, fired once
        self.refuse_local: dict[str, str] = {}  # substring of a local command -> its stderr
        self.refuse_remote: dict[str, str] = {}  # substring of a remote request -> its stderr
        self.congestion_said = "the SSH connection sends with bbr (was cubic)\n"  # its answer
        self.hooks: dict[str, str] = {}  # hook program -> "ok" | "fail" | "hang"
        self.hook_env: dict[str, dict[str, str]] = {}
        self.unreachable = 0  # how many connects fail before one succeeds
        self.remote_leftover = False  # a pppd of an earlier session runs there (no helper)
        self.remote_ignores_terminate = False
        self.ipcp = LinkInfo(IFNAME, LOCAL, PEER)
        self.leftover_pids: list[int] = []
        self.applied: list[str] = []  # local commands that succeeded, in order
        self.stop: Callable[[], None] | None = None  # what "cancel" does (a signal)
        self.transport: FakeTransport | None = None
        self.pppd: FakePppd | None = None
        self.connects = 0
        self.pppds = 0
        self.server = "203.0.113.5"  # the SSH connection's peer address, as resolved
        self.rtts: list[float | None] = []  # keepalive round trips to answer, then none

    def record(self, where: str, what: str) -> None:
        """One action, in order."""
        self.calls.append((where, what))

    async def reach(self, step: str) -> None:
        """The lifecycle is at step: fire its fault, and hang there if it is a waited step."""
        self.steps.append(step)
        fault = self.faults.pop(step, None)
        if fault is None:
            return
        if fault == "local-dies":
            assert self.pppd is not None
            self.pppd.die(-9)
        elif fault == "remote-dies":
            assert self.transport is not None
            self.transport.remote_dies(-9)
        elif fault == "ssh-lost":
            assert self.transport is not None
            self.transport.lose("Connection lost")
        elif fault == "cancel":
            assert self.stop is not None
            self.stop()
            await asyncio.sleep(0)  # the cancellation lands here
        if step in WAITED:
            await asyncio.get_running_loop().create_future()  # hangs: a dead part says why


class FakeTransport:
    """The SSH connection and the remote pppd's channel, as a script."""

    def __init__(self, world: World, cfg: SiteConfig) -> None:
        """A new connection attempt."""
        self.world = world
        self.cfg = cfg
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.master_closed: asyncio.Future[None] = loop.create_future()
        self.channel = False
        world.transport = self

    def lose(self, why: str) -> None:
        """The connection dies (keepalive timeout, reset)."""
        if not self.lost.done():
            self.lost.set_result(ConnectionError(why))
        if self.channel and not self.closed.done():
            self.closed.set_result(None)

    def remote_dies(self, status: int) -> None:
        """The remote pppd ends (its channel closes)."""
        if not self.closed.done():
            self.closed.set_result(status)

    async def connect(self) -> str:
        """Connect, or fail as an unreachable host does."""
        self.world.record("ssh", "connect")
        self.world.connects += 1
        await self.world.reach("connect")
        if self.world.unreachable:
            self.world.unreachable -= 1
            raise Unreachable("cannot reach gw.example.net:22: Network is unreachable")
        return "SSH-2.0-OpenSSH_9.2p1\x1b[2J"

    def peer_address(self) -> str:
        """The server's address."""
        return self.world.server

    async def run(self, command: Command, timeout: float = 60.0) -> str:
        """A remote request: scripted answers."""
        shown = command.shown
        self.world.record("remote", shown)
        argv = command.argv
        if "route" in argv and "add" in argv:
            await self.world.reach("route_remote")
        elif argv in (("cleanup",), ("interface",)) or argv[0] == "pgrep" or "addr" in argv:
            await self.world.reach("remote_if" if self.channel else "cleanup")
        if self.lost.done():
            raise RemoteFailed(shown, None, "Connection lost")
        for part, stderr in self.world.refuse_remote.items():
            if part in shown:
                raise RemoteFailed(shown, 1, stderr)
        if argv[0] == "pgrep":
            if self.world.remote_leftover:
                return "1234\n"
            raise RemoteFailed(shown, 1, "")
        if "pkill" in shown:
            self.world.remote_leftover = False
            return ""
        if argv == ("cleanup",):
            return ""
        if argv == ("congestion",) or "pppssh-congestion" in shown:
            return self.world.congestion_said
        if argv == ("interface",):
            return f"{REMOTE_IF}\n"
        if "addr" in argv:
            return f"7: {REMOTE_IF}    inet {PEER} peer {LOCAL}/32 scope global {REMOTE_IF}\n"
        return ""

    async def open_pppd(self, command: str) -> None:
        """Open the remote pppd's channel."""
        self.world.record("ssh", "open pppd channel")
        await self.world.reach("open_pppd")
        if self.lost.done():
            raise TunnelError("cannot open a channel: Connection lost")
        self.channel = True

    async def first_frame(self) -> None:
        """The first frame arrives at once (unless a fault hangs this step, or the channel
        is gone: then nothing ever arrives)."""
        await self.world.reach("first_frame")
        if self.closed.done():
            await asyncio.get_running_loop().create_future()

    def attach(self, master: int) -> None:
        """Start pumping."""
        self.world.record("ssh", f"attach {master}")

    def detach(self) -> None:
        """Stop pumping."""
        self.world.record("ssh", "detach")

    def failures(self) -> list[asyncio.Future[Any]]:
        """The connection's and the channel's end."""
        return [self.lost, self.closed, self.master_closed] if self.channel else [self.lost]

    def connection_lost(self) -> bool:
        """The connection is gone."""
        return self.lost.done()

    def why_lost(self) -> str | None:
        """Which part died and how."""
        if self.lost.done():
            return f"SSH connection lost: {self.lost.result()}"
        if self.closed.done():
            return f"remote pppd ended, {describe_exit(self.closed.result())}"
        return None

    def pppd_open(self) -> bool:
        """The channel is open."""
        return self.channel and not self.closed.done()

    async def wait_pppd_end(self, timeout: float) -> bool:
        """The remote pppd ends after our LCP Terminate, unless told to ignore it."""
        if not self.world.remote_ignores_terminate and not self.closed.done():
            self.closed.set_result(0)
        return self.closed.done()

    def hang_up(self) -> None:
        """Close the channel (SIGHUP there)."""
        self.world.record("ssh", "hang up")
        if not self.closed.done():
            self.closed.set_result(None)

    def pppd_end(self) -> str:
        """How the remote pppd ended."""
        status = self.closed.result() if self.closed.done() else None
        return describe_exit(status) if status is not None else "channel closed"

    async def close(self) -> None:
        """Close the connection."""
        self.world.record("ssh", "close")
        if not self.lost.done():
            self.lost.set_result(None)

    async def keepalive_rtt(self) -> float | None:
        """The next scripted round trip; once there are none, the answer never comes."""
        if not self.world.rtts:
            await asyncio.get_running_loop().create_future()
        return self.world.rtts.pop(0)


class FakePppd:
    """The local pppd: connects, negotiates, stops; or dies at a step."""

    def __init__(self, world: World, cfg: SiteConfig) -> None:
        """Not started."""
        self.world = world
        self.cfg = cfg
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.interface: str | None = None
        self.compression: str | None = None
        self.pid: int | None = None
        self.lines: list[str] = []
        world.pppd = self

    @property
    def master(self) -> int:
        """A made-up fd number."""
        return 99

    def die(self, status: int) -> None:
        """It ends by itself (killed, or gave up)."""
        self.lines.append("Terminating on signal 9")
        if not self.exited.done():
            self.exited.set_result(status)

    def start(self) -> list[str]:
        """Started."""
        self.world.pppds += 1
        self.pid = PID + self.world.pppds - 1
        self.world.record("pppd", "start")
        return local_pppd_argv(self.cfg, 9)

    async def _alive(self) -> None:
        """A dead pppd answers nothing any more: wait forever."""
        if self.exited.done():
            await asyncio.get_running_loop().create_future()

    async def wait_connected(self) -> None:
        """Its tty is in PPP mode; it named its interface."""
        await self.world.reach("connected")
        await self._alive()
        self.interface = IFNAME

    async def wait_ipcp(self) -> LinkInfo:
        """IPCP agreed."""
        await self.world.reach("ipcp")
        await self._alive()
        return self.world.ipcp

    async def wait_ipv6cp(self) -> tuple[str, str]:
        """IPV6CP agreed."""
        await self.world.reach("ipv6cp")
        await self._alive()
        return ("fe80::1", "fe80::2")

    def last_lines(self) -> str:
        """Its last log lines."""
        return " | ".join(self.lines[-3:])

    async def stop(self) -> int | None:
        """SIGTERM: it exits 5 (terminated by a signal), unless it has already ended."""
        self.world.record("pppd", "stop")
        if not self.exited.done():
            self.exited.set_result(5)
        return self.exited.result()


class FakeRunner:
    """Local programs: `ip` answers as scripted; hooks succeed, fail or hang."""

    def __init__(self, world: World) -> None:
        """Share the world."""
        self.world = world
        self.rp_filter = 1

    async def run(self, command: Command) -> str:
        """Run a local argv; one that succeeds goes to world.applied. As the real runner, a
        cancellation while it runs lets it end first (its change is made), then goes on."""
        shown = command.shown
        self.world.record("local", shown)
        argv = command.argv
        cancelled: asyncio.CancelledError | None = None
        try:
            if argv[:3] == ("ip", "route", "add"):
                await self.world.reach("route_local")
            elif "rule" in argv and "add" in argv:
                await self.world.reach("filter")
        except asyncio.CancelledError as exc:
            cancelled = exc
        for part, stderr in self.world.refuse_local.items():
            if part in shown:
                if cancelled is not None:
                    raise cancelled
                raise CommandFailed(shown, 2, stderr)
        self.world.applied.append(shown)
        if cancelled is not None:
            raise cancelled
        if argv[:4] == ("ip", "-4", "route", "get"):
            return f"{argv[4]} via 192.0.2.1 dev eth0 src 192.0.2.7 uid 0\n    cache\n"
        return ""

    async def hook(self, argv: tuple[str, ...], env: dict[str, str], timeout: float) -> HookResult:
        """An up/down command: as planned in world.hooks."""
        shown = " ".join(argv)
        self.world.record("hook", shown)
        self.world.hook_env[argv[0]] = env
        await self.world.reach("hook " + argv[0])
        how = self.world.hooks.get(argv[0], "ok")
        if how == "fail":
            return HookResult(["no can do"], CommandFailed(shown, 1, "no can do"))
        if how == "hang":
            failure = CommandFailed(shown, None, f"still running after {timeout:g}s; killed")
            return HookResult([], failure)
        return HookResult([f"{argv[0]} ran"], None)

    def rp_filter_all(self) -> int:
        """net.ipv4.conf.all.rp_filter as scripted."""
        return self.rp_filter

    def leftover_pppd(self, state: State | None, linkname: str) -> list[int]:
        """The pppds a dead pppssh left."""
        return list(self.world.leftover_pids)

    async def stop_process(self, pid: int) -> str:
        """Stopped (it is left no more)."""
        self.world.record("local", f"kill {pid}")
        self.world.leftover_pids.remove(pid)
        return "SIGTERM"


class MemoryStore:
    """State files in a dict, each write through JSON as the real file is."""

    def __init__(self) -> None:
        """Empty."""
        self.files: dict[str, str] = {}
        self.history: list[dict[str, Any]] = []

    def write(self, state: State) -> None:
        """Write it whole."""
        data = dataclasses.asdict(state)
        self.files[state.site] = json.dumps(data)
        self.history.append(data)

    def read(self, site: str) -> State | None:
        """Read it, or None."""
        text = self.files.get(site)
        return State.from_json(json.loads(text)) if text is not None else None

    def remove(self, site: str) -> None:
        """Delete it."""
        self.files.pop(site, None)


class FakeClock:
    """Time stands still except when slept; every sleep is recorded, none waits."""

    def __init__(self) -> None:
        """At 1000 s."""
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """Now."""
        return self.now

    def time(self) -> float:
        """Now, as wall clock."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Move time on, let others run once."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeReadiness:
    """What the waiting `pppssh start` was told."""

    def __init__(self) -> None:
        """Nothing yet."""
        self.said: list[str] = []

    def ready(self) -> None:
        """READY."""
        self.said.append("READY")

    def retrying(self, why: str) -> None:
        """RETRYING why."""
        self.said.append(f"RETRYING {why}")


class Recorder(Reporter):
    """Every event, in order; on_ready is called at each Ready (to make the link die then)."""

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        """Nothing yet."""
        self.events: list[Event] = []
        self.on_ready = on_ready

    def report(self, event: Event) -> None:
        """Keep it."""
        self.events.append(event)
        if isinstance(event, Ready) and self.on_ready is not None:
            self.on_ready()

    def lines(self) -> list[str]:
        """The progress lines, as the terminal shows them."""
        return [line for e in self.events if (line := e.line()) is not None]


def fake_ports(world: World, cfg: SiteConfig) -> tuple[Ports, MemoryStore, FakeClock]:
    """Ports over the world, with its store and clock."""
    store, clock = MemoryStore(), FakeClock()
    ports = Ports(
        ssh=lambda server: FakeTransport(world, server),
        pppd=lambda: FakePppd(world, cfg),
        runner=FakeRunner(world),
        store=store,
        clock=clock,
    )
    return ports, store, clock
