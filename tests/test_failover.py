"""Several gateways in `host`: the next one after a failure, failback to the first after a
probe login, the state file and systemd naming the gateway in use; against fake ports."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from pppssh.backoff import delays
from pppssh.config import ConfigError, SiteConfig, parse
from pppssh.errors import HostKeyRefused, Unreachable
from pppssh.events import (
    Event,
    Failback,
    LinkDown,
    NextServer,
    NotifyReporter,
    Ready,
    Reconnecting,
    Reporter,
    Reporters,
    StateReporter,
    Stopping,
)
from pppssh.status import render_table, site_status
from pppssh.supervisor import Supervisor, needs_new_link
from pppssh.system import State
from tests.fakes import (
    FakeClock,
    FakeReadiness,
    FakeTransport,
    MemoryStore,
    Recorder,
    World,
    fake_ports,
    site,
)

GW1, GW2 = "gw1.example.net:22", "gw2.example.net:2222"
HOSTS = "host = gw1.example.net, gw2.example.net:2222\n"


def _with_hosts(site_lines: str = "") -> SiteConfig:
    """fakes.site()'s file with host listing two gateways."""
    body = (
        f"[site]\nname = site-b\n{site_lines}"
        f"[remote]\n{HOSTS}user = vpn\nidentity = id\nknown_hosts = kh\nhelper = yes\n"
        "[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
        "[networks]\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
    )
    return parse(body, Path("/etc/pppssh/site-b.conf"))


class Gateways:
    """Which gateways refuse (host -> connects left to refuse) and every transport made."""

    def __init__(self, **refuse: float) -> None:
        """gw1=math.inf: gw1 refuses every connect until told otherwise."""
        self.refuse = {f"{name}.example.net": n for name, n in refuse.items()}
        self.bad_key: set[str] = set()
        self.made: list[GatewayTransport] = []
        self.dialled: list[str] = []


class GatewayTransport(FakeTransport):
    """A fake transport to one gateway of the list, answering as Gateways says."""

    def __init__(self, world: World, cfg: SiteConfig, gateways: Gateways) -> None:
        """A new connection to cfg's gateway."""
        super().__init__(world, cfg)
        self.gateways = gateways
        self.ran: list[str] = []
        gateways.made.append(self)

    async def connect(self) -> str:
        """Refused, a changed host key, or connected."""
        host = self.cfg.host
        self.gateways.dialled.append(f"{host}:{self.cfg.port}")
        self.world.record("ssh", f"connect {host}")
        if host in self.gateways.bad_key:
            raise HostKeyRefused(f"HOST KEY CHANGED: {host}:{self.cfg.port} now presents ...")
        if self.gateways.refuse.get(host, 0) > 0:
            self.gateways.refuse[host] -= 1
            raise Unreachable(f"cannot reach {host}:{self.cfg.port}: Connection refused")
        return await super().connect()

    def peer_address(self) -> str:
        """Each gateway's own address, as connected."""
        return {"gw1.example.net": "203.0.113.1", "gw2.example.net": "203.0.113.2"}[self.cfg.host]

    async def run(self, command: Any, timeout: float = 60.0) -> str:
        """A remote request, noted on this connection too."""
        self.ran.append(command.shown)
        return await super().run(command, timeout)

    async def close(self) -> None:
        """Closed (noted with the gateway's name)."""
        self.world.record("ssh", f"close {self.cfg.host}")
        await super().close()


class Watcher(Reporter):
    """Calls act(event) for every event (to stop the site or change the world then)."""

    def __init__(self) -> None:
        """Nothing to do yet."""
        self.act: Any = lambda event: None

    def report(self, event: Event) -> None:
        """Pass it on."""
        self.act(event)


@dataclasses.dataclass
class Site:
    """A site with two gateways over fake ports, held by a supervisor."""

    cfg: SiteConfig
    world: World
    gateways: Gateways
    clock: FakeClock
    store: MemoryStore
    recorder: Recorder
    watcher: Watcher
    readiness: FakeReadiness
    notify: list[str]
    supervisor: Supervisor

    def run(self) -> int:
        """Hold the site until stopped or given up; its exit status."""
        return asyncio.run(asyncio.wait_for(self.supervisor.run(), 5))

    def state(self) -> State:
        """The state file as written last."""
        state = self.store.read(self.cfg.name)
        assert state is not None
        return state

    def events(self, kind: type[Event]) -> list[Any]:
        """The events of one kind, in order."""
        return [e for e in self.recorder.events if isinstance(e, kind)]

    def stop(self) -> None:
        """SIGTERM."""
        self.supervisor.stop("SIGTERM")

    def waits(self) -> list[float]:
        """The backoff waits and failback timers slept (not the zero settle times)."""
        return [s for s in self.clock.sleeps if s >= 1]


def make(cfg: SiteConfig, gateways: Gateways) -> Site:
    """A supervisor over fakes whose transports go to the gateway each cfg names."""
    world = World()
    ports, store, clock = fake_ports(world, cfg)
    ports.ssh = lambda server: GatewayTransport(world, server, gateways)
    recorder, watcher, readiness, notify = Recorder(), Watcher(), FakeReadiness(), []
    state = State(site=cfg.name, config=str(cfg.path), pid=777)
    reporters = Reporters(recorder, StateReporter(state, store.write, clock.time),
                          NotifyReporter(lambda *lines: notify.extend(lines)), watcher)  # fmt: skip
    supervisor = Supervisor(cfg, ports, reporters, readiness, 777, settle=0.0,
                            backoff=lambda start, cap: delays(start, cap, lambda: 1.0))  # fmt: skip
    return Site(cfg, world, gateways, clock, store, recorder, watcher, readiness, notify,
                supervisor)  # fmt: skip


def links(s: Site) -> list[str]:
    """The gateway of each link that came up, in order."""
    return [e.link.rpartition(" via ")[2] for e in s.events(Ready)]


# ---------------------------------------------------------------------------- config


def test_host_lists_gateways_in_order_with_their_ports() -> None:
    """Each gateway validated like host; the port key for those without one."""
    cfg = _with_hosts("")
    assert cfg.servers == (("gw1.example.net", 22), ("gw2.example.net", 2222))
    assert (cfg.host, cfg.port) == ("gw1.example.net", 22) and cfg.failback == 300
    second = cfg.at_server(1)
    assert (second.host, second.port, second.destination) == (
        "gw2.example.net", 2222, "vpn@gw2.example.net:2222",
    )  # fmt: skip
    assert cfg.at_server(0) is cfg
    one = site()
    assert one.servers == (("gw.example.net", 22),) and one.secondaries == ()
    v6 = parse(
        _text("host = 2001:db8::1 [2001:db8::2]:2200 192.0.2.9\nport = 2022\n"), Path("/x.conf")
    )
    assert v6.servers == (("2001:db8::1", 2022), ("2001:db8::2", 2200), ("192.0.2.9", 2022))


def _text(remote: str, site_lines: str = "") -> str:
    """A site file whose [remote] starts with remote."""
    return (
        f"[site]\nname = site-b\n{site_lines}[remote]\n{remote}user = vpn\nidentity = id\n"
        "known_hosts = kh\n[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n"
    )


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ("host = gw1.example.net, gw1.example.net\n", "'gw1.example.net' is listed twice"),
        ("host = gw1.example.net, gw2..example\n", "'gw2..example' is not a host name"),
        ("host = gw1.example.net, gw2:0\n", "0 is out of range 1..65535"),
        ("host = gw1.example.net, 10.99.0.2\n", "10.99.0.2 is the SSH server (host)"),
        ("host = gw1.example.net:2222\nport = 22\n", "also given in host (2222)"),
        ("host = ,\n", "no gateway given"),
        ("host = a.example, b.example\nssh_config = yes\n", "takes one gateway in host"),
    ],
)
def test_bad_gateway_lists_are_refused_with_file_line_key(remote: str, message: str) -> None:
    """One line naming the file, line and key; nothing is guessed."""
    with pytest.raises(ConfigError) as caught:
        parse(_text(remote), Path("/etc/pppssh/site-b.conf"))
    assert message in str(caught.value)
    assert str(caught.value).startswith("/etc/pppssh/site-b.conf:")


def test_failback_reloads_but_a_new_gateway_list_needs_a_new_link() -> None:
    """failback is read by the running supervisor; the list is part of the link."""
    cfg = _with_hosts("")
    assert needs_new_link(cfg, dataclasses.replace(cfg, failback=60.0)) == []
    other = parse(_text("host = gw1.example.net, gw3.example.net\n"), cfg.path)
    assert needs_new_link(cfg, dataclasses.replace(cfg, secondaries=other.secondaries)) == [
        "[remote] host"
    ]
    with pytest.raises(ConfigError, match="failback"):
        parse(_text("host = a.example\n", "failback = -1\n"), cfg.path)


# ---------------------------------------------------------------------------- failover


def test_first_gateway_down_at_start_takes_the_second_at_once() -> None:
    """No backoff between the gateways of one round; start succeeds on the second, and the
    state file, the terminal, systemd and status name it."""
    s = make(_with_hosts("failback = 0\n"), Gateways(gw1=math.inf))
    s.watcher.act = lambda e: s.stop() if isinstance(e, Ready) else None
    assert s.run() == 0
    assert s.gateways.dialled == [GW1, GW2]
    assert s.waits() == []
    assert s.readiness.said == ["READY"]
    assert links(s) == [GW2]
    [moved] = s.events(NextServer)
    assert moved.server == GW2 and "gw1.example.net:22: Connection refused" in moved.cause
    lines = s.recorder.lines()
    assert "gateway 1 of 2: gw1.example.net:22" in lines
    assert "gateway 2 of 2: gw2.example.net:2222" in lines
    assert any(line.startswith("[vpn@gw2.example.net] ") for line in lines)
    assert any(n.startswith("STATUS=retrying: connecting to vpn@gw2.example.net:2222 (last: ")
               for n in s.notify)  # fmt: skip
    assert "STATUS=up: ppp0 10.99.0.1 -> 10.99.0.2 via gw2.example.net:2222" in s.notify
    state = s.state()
    assert (state.server, state.servers) == (GW2, [GW1, GW2])
    table = render_table([site_status(state)]).splitlines()
    assert table[-1] == f"site-b gateway: {GW2} (2 of 2: {GW1}, {GW2})"


def test_every_gateway_down_without_retry_start_fails_naming_each() -> None:
    """Each gateway tried once, no wait; the error says why for each."""
    s = make(_with_hosts(), Gateways(gw1=math.inf, gw2=math.inf))
    assert s.run() == 1
    assert s.gateways.dialled == [GW1, GW2] and s.waits() == []
    failed = s.recorder.lines()[-1]
    assert failed.startswith("pppssh: site-b: every gateway failed: gw1.example.net:22: ")
    assert "; gw2.example.net:2222: cannot reach gw2.example.net:2222" in failed


def test_a_round_that_fails_waits_the_backoff_then_starts_from_the_top() -> None:
    """Once every gateway failed: one backoff wait, then the first again, then the second."""
    s = make(_with_hosts("retry_start = yes\nfailback = 0\n"), Gateways(gw1=math.inf, gw2=1))
    s.watcher.act = lambda e: s.stop() if isinstance(e, Ready) else None
    assert s.run() == 0
    assert s.gateways.dialled == [GW1, GW2, GW1, GW2]
    assert s.waits() == [5.0]
    assert len(s.readiness.said) == 1 and s.readiness.said[0].startswith("RETRYING every ")


def test_a_changed_host_key_on_the_second_is_a_failure_like_any_other() -> None:
    """The second gateway's key is refused: it never carries the link."""
    gateways = Gateways(gw1=math.inf)
    gateways.bad_key.add("gw2.example.net")
    s = make(_with_hosts(), gateways)
    assert s.run() == 1
    assert "gw2.example.net:2222: HOST KEY CHANGED" in s.recorder.lines()[-1]
    assert s.world.pppds == 0 and s.events(Ready) == []


def test_second_gateway_lost_dials_the_first_at_once() -> None:
    """A link lost on the second: the first (back by now) is dialled without a wait."""
    s = make(_with_hosts("failback = 0\n"), Gateways(gw1=1))

    def act(event: Event) -> None:
        """First up (on gw2): lose it; second up (on gw1): stop."""
        if isinstance(event, Ready):
            if len(s.events(Ready)) == 1:
                assert s.supervisor.live is not None and s.supervisor.live.ssh is not None
                s.supervisor.live.ssh.lose("Connection lost")  # type: ignore[attr-defined]
            else:
                s.stop()

    s.watcher.act = act
    assert s.run() == 0
    assert links(s) == [GW2, GW1]
    assert s.gateways.dialled == [GW1, GW2, GW1]
    assert s.waits() == []
    assert s.state().server == GW1


def test_first_gateway_lost_dials_the_second_then_waits() -> None:
    """A link lost on the first with the second down: the second at once, then the backoff,
    then the list from the top."""
    s = make(_with_hosts("failback = 0\n"), Gateways(gw2=math.inf))
    lost = {"done": False}

    def act(event: Event) -> None:
        """First up: lose it; second up: stop."""
        if isinstance(event, Ready):
            if not lost["done"]:
                lost["done"] = True
                assert s.supervisor.live is not None and s.supervisor.live.ssh is not None
                s.supervisor.live.ssh.lose("Connection lost")  # type: ignore[attr-defined]
            else:
                s.stop()

    s.watcher.act = act
    assert s.run() == 0
    assert s.gateways.dialled == [GW1, GW2, GW1]
    assert s.waits() == [5.0]
    assert links(s) == [GW1, GW1]


def test_without_reconnect_a_lost_link_ends_the_site_on_any_gateway() -> None:
    """reconnect = no: a link lost on the second is the end, not a move to the first."""
    s = make(_with_hosts("reconnect = no\nfailback = 0\n"), Gateways(gw1=1))

    def act(event: Event) -> None:
        """Up on gw2: lose it."""
        if isinstance(event, Ready):
            assert s.supervisor.live is not None and s.supervisor.live.ssh is not None
            s.supervisor.live.ssh.lose("Connection lost")  # type: ignore[attr-defined]

    s.watcher.act = act
    assert s.run() == 1
    assert s.gateways.dialled == [GW1, GW2]
    assert s.recorder.lines()[-1].startswith("pppssh: site-b: link down: SSH connection lost")


def test_full_tunnel_pins_the_gateway_in_use() -> None:
    """On the second gateway the host route kept out of the tunnel is the second's."""
    cfg = dataclasses.replace(_with_hosts("failback = 0\n"), full_tunnel=True)
    s = make(cfg, Gateways(gw1=math.inf))
    s.watcher.act = lambda e: s.stop() if isinstance(e, Ready) else None
    assert s.run() == 0
    local = [what for where, what in s.world.calls if where == "local"]
    assert "ip -4 route get 203.0.113.2" in local
    assert "ip route add 203.0.113.2/32 via 192.0.2.1 dev eth0 onlink" in local
    assert not any("203.0.113.1" in line for line in local)


# ---------------------------------------------------------------------------- failback


def test_failback_probes_the_first_then_moves_the_link() -> None:
    """failback seconds on the second: a full login to the first while the link stays up;
    only then the link's teardown and an attempt at the first."""
    gateways = Gateways(gw1=1)  # down at start, back afterwards
    s = make(_with_hosts(), gateways)
    s.watcher.act = lambda e: s.stop() if isinstance(e, Ready) and len(s.events(Ready)) == 2 \
        else None  # fmt: skip
    assert s.run() == 0
    assert links(s) == [GW2, GW1]
    assert s.waits() == [300.0]
    assert gateways.dialled == [GW1, GW2, GW1, GW1]  # start, start, probe, new link
    probe = gateways.made[2]
    assert probe.cfg.host == "gw1.example.net" and probe.ran == [] and not probe.channel
    calls = s.world.calls
    probed, closed = calls.index(("ssh", "connect gw1.example.net"), 2), None
    closed = calls.index(("ssh", "close gw1.example.net"))
    first_stop = calls.index(("pppd", "stop"))
    assert probed < closed < first_stop  # the link on gw2 was up until the probe succeeded
    [back] = s.events(Failback)
    assert back.ok and back.server == GW1 and back.current == GW2
    assert "accepts the login (host key known" in back.line()
    [why] = s.events(Reconnecting)
    assert why.cause == f"failback to {GW1}" and why.delay == 0
    assert f"STATUS=failback: moving the link back to {GW1}" in s.notify
    assert s.state().server == GW1


def test_failback_with_the_first_still_down_keeps_the_link() -> None:
    """Probes fail: the link on the second is never dropped, the next probe waits again."""
    gateways = Gateways(gw1=math.inf)
    s = make(_with_hosts("failback = 120\n"), gateways)

    def act(event: Event) -> None:
        """Stop after the second failed probe."""
        if isinstance(event, Failback) and len(s.events(Failback)) == 2:
            s.stop()

    s.watcher.act = act
    assert s.run() == 0
    probes = s.events(Failback)
    assert [p.ok for p in probes] == [False, False]
    assert "not ready (cannot reach gw1.example.net:22: Connection refused); staying on " \
        f"{GW2}, next try in 120s" in probes[0].line()  # fmt: skip
    assert s.waits()[:2] == [120.0, 120.0] and set(s.waits()) == {120.0}
    assert s.world.pppds == 1 and links(s) == [GW2]
    assert s.events(LinkDown) == [] and s.events(Reconnecting) == []
    up = s.recorder.events.index(s.events(Ready)[0])
    stops = [i for i, e in enumerate(s.recorder.events) if isinstance(e, Stopping) and i > up]
    last_probe = s.recorder.events.index(probes[-1])
    assert stops and all(i > last_probe for i in stops)  # the teardown is the SIGTERM's only
    assert s.state().reconnects == 1  # the failed start on gw1, nothing since


def test_no_failback_on_the_first_or_with_failback_zero() -> None:
    """On the first gateway nothing is probed; on a later one with failback = 0 neither."""
    for cfg, refuse in ((_with_hosts(), 0.0), (_with_hosts("failback = 0\n"), 1.0)):
        s = make(cfg, Gateways(gw1=refuse))
        s.watcher.act = lambda e, s=s: asyncio.get_running_loop().call_later(  # type: ignore[misc]
            0.05, s.stop
        ) if isinstance(e, Ready) else None  # fmt: skip
        assert s.run() == 0
        assert s.events(Failback) == [] and s.waits() == []


def test_reconnect_request_dials_from_the_first() -> None:
    """`pppssh reconnect` on the second gateway starts the list from the top."""
    s = make(_with_hosts("failback = 0\n"), Gateways(gw1=1))

    def act(event: Event) -> None:
        """First up (gw2): ask for a reconnect; second up: stop."""
        if isinstance(event, Ready):
            if len(s.events(Ready)) == 1:
                asyncio.get_running_loop().call_soon(s.supervisor.reconnect, "SIGUSR1")
            else:
                s.stop()

    s.watcher.act = act
    assert s.run() == 0
    assert links(s) == [GW2, GW1]


def test_reload_on_the_second_keeps_its_gateway() -> None:
    """A reload applied while on the second gateway runs its remote routes there."""
    s = make(_with_hosts("failback = 0\n"), Gateways(gw1=1))
    new = dataclasses.replace(s.cfg, failback=10.0, remote_networks=s.cfg.remote_networks)
    outcome: list[bool] = []
    hosts: list[str] = []

    def act(event: Event) -> None:
        """Once up: reload, then stop."""
        if isinstance(event, Ready):

            async def reload() -> None:
                """Reload, note the live attempt's gateway, stop."""
                outcome.append(await s.supervisor.reload(lambda: new))
                assert s.supervisor.live is not None
                hosts.append(s.supervisor.live.cfg.host)
                s.stop()

            asyncio.get_running_loop().create_task(reload())

    s.watcher.act = act
    assert s.run() == 0
    assert outcome == [True] and hosts == ["gw2.example.net"]
    assert s.supervisor.cfg.failback == 10.0 and s.supervisor.cfg.host == "gw1.example.net"


# ---------------------------------------------------------------------------- check, routes


def test_check_checks_every_gateway_each_line_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pppssh check`: the local checks once, then each gateway's remote checks in order."""
    from pppssh import check

    seen: list[str] = []

    async def remote(cfg: SiteConfig) -> list[check.Check]:
        """One line per gateway, as the real remote checks would give."""
        seen.append(cfg.destination)
        return [check.Check("host key known", cfg.port == 22, "in kh")]

    monkeypatch.setattr(check, "_local_checks", lambda cfg: [check.Check("local pppd", True)])
    monkeypatch.setattr(check, "_remote_checks", remote)
    lines = check.render(asyncio.run(check.run_checks(_with_hosts()))).splitlines()
    assert seen == ["vpn@gw1.example.net:22", "vpn@gw2.example.net:2222"]
    assert lines == [
        "\u2713 local pppd",
        f"\u2713 {GW1}: host key known: in kh",
        f"\u2717 {GW2}: host key known: in kh",
    ]


@pytest.mark.parametrize(("server", "pinned"), [("192.0.2.9:22", "192.0.2.9"), (None, "192.0.2.8")])
def test_routes_print_gateways_follows_the_gateway_in_use(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: str | None,
    pinned: str,
) -> None:  # fmt: skip
    """The full tunnel's pinned server and the remote gateway named are those of the
    gateway the running link is on (the first when none runs)."""
    from pppssh import cli

    text = _text("host = 192.0.2.8, 192.0.2.9\n") + "[networks]\nfull_tunnel = yes\n"
    cfg = parse(text, Path("/etc/pppssh/site-b.conf"))
    state = State(site="site-b", config="x", pid=1, state="up", interface="ppp3",
                  remote_interface="ppp4", server=server)  # fmt: skip
    monkeypatch.setattr(cli, "_load", lambda path, files=True: cfg)
    monkeypatch.setattr(cli, "read_state", lambda site: state if server else None)
    monkeypatch.setattr(cli, "pid_alive", lambda pid: True)
    assert cli.main(["routes", "--print", "--gateways", "/etc/pppssh/site-b.conf"]) == 0
    out = capsys.readouterr().out
    assert f"ip route add {pinned}/32 ..." in out
    assert f"# on the remote gateway {pinned}, as vpn" in out


def test_failback_zero_from_a_reload_ends_the_probing() -> None:
    """The loop reads failback anew after each wait: once a reload has set it to 0 (what
    reload() leaves in supervisor.cfg), no probe follows."""
    s = make(_with_hosts("failback = 50\n"), Gateways(gw1=math.inf))
    new = dataclasses.replace(s.cfg, failback=0.0)

    def act(event: Event) -> None:
        """First probe refused: failback = 0 from now on; stop a few loop turns later."""
        if isinstance(event, Failback):
            s.supervisor.cfg = new

            async def later() -> None:
                """Let the loop turn, then stop."""
                for _ in range(20):
                    await asyncio.sleep(0)
                s.stop()

            asyncio.get_running_loop().create_task(later())

    s.watcher.act = act
    assert s.run() == 0
    assert len(s.events(Failback)) == 1
    assert s.waits() == [50.0]  # no new wait, no second probe
