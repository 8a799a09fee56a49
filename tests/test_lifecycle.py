"""The lifecycle and the supervisor against fake ports: every step and every fault the lab
covers, in seconds. Each test asserts the exact commands run on both sides, the exact undo
order (the ledger's entries undone newest first) and that the ledger ends empty."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pppssh.backoff import delays
from pppssh.config import SiteConfig
from pppssh.errors import ConfigError, TunnelError
from pppssh.events import (
    CommandRun,
    Connected,
    Connecting,
    Failed,
    IpcpUp,
    LedgerChanged,
    LinkDown,
    LogReporter,
    Note,
    NotifyReporter,
    Ready,
    Reconnecting,
    Reporters,
    SignalReceived,
    StateReporter,
    TerminalReporter,
)
from pppssh.ledger import Entry, Ledger
from pppssh.lifecycle import Attempt, recover
from pppssh.localppp import LinkInfo
from pppssh.plan import shell_join
from pppssh.ports import Ports
from pppssh.supervisor import Supervisor
from pppssh.system import State
from tests.fakes import (
    LOCAL,
    PEER,
    FakeClock,
    FakeReadiness,
    MemoryStore,
    Recorder,
    World,
    fake_ports,
    site,
)

SELF = 777  # the daemon's pid in these tests
REMOTE = "[vpn@gw.example.net]"
PPPD = (
    "/usr/sbin/pppd nodetach noauth local nocrtscts linkname pppssh-site-b ipparam "
    "pppssh-site-b 10.99.0.1:10.99.0.2 mtu 1400 mru 1400 nodefaultroute noccp "
    "lcp-echo-interval 10 lcp-echo-failure 3 noproxyarp noipv6 novj logfd 9"
)
RULES = [
    "ip -4 rule add iif ppp0 to 10.1.0.0/24 priority 5000 lookup main",
    "ip -4 rule add iif ppp0 priority 5001 prohibit",
]
ROUTE_HERE = "ip route add 10.2.0.0/24 via 10.99.0.2 dev ppp0"
QDISC = "tc qdisc replace dev ppp0 root fq_codel"
ROUTE_THERE = "route add 10.1.0.0/24 via 10.99.0.1"


@dataclass
class Harness:
    """A site over fake ports, held by a supervisor."""

    cfg: SiteConfig
    world: World
    ports: Ports
    store: MemoryStore
    clock: FakeClock
    recorder: Recorder
    readiness: FakeReadiness
    state: State
    supervisor: Supervisor

    def run(self) -> int:
        """Hold the site until it stops or gives up; its exit status. Every planned fault
        must have fired (a fault at a step never reached would test nothing)."""

        async def bounded() -> int:
            """A hang fails the test instead of stalling the run."""
            return await asyncio.wait_for(self.supervisor.run(), 5)

        status = asyncio.run(bounded())
        assert self.world.faults == {}, f"never reached: {self.world.faults}"
        return status

    def lines(self) -> list[str]:
        """What the terminal showed."""
        return self.recorder.lines()

    def ledger(self) -> list[dict[str, Any]]:
        """The ledger as the state file has it now."""
        state = self.store.read(self.cfg.name)
        assert state is not None
        return state.ledger


def harness(cfg: SiteConfig | None = None, stop_when_up: bool = True, **changes: Any) -> Harness:
    """A site (fakes.site() unless given, with changes) whose supervisor is ready to run;
    with stop_when_up, SIGTERM arrives as soon as it is up."""
    cfg = dataclasses.replace(cfg or site(), **changes)
    world = World()
    ports, store, clock = fake_ports(world, cfg)
    recorder = Recorder()
    state = State(site=cfg.name, config=str(cfg.path), pid=SELF)
    reporters = Reporters(recorder, StateReporter(state, store.write, clock.time))
    readiness = FakeReadiness()
    supervisor = Supervisor(
        cfg, ports, reporters, readiness, SELF, settle=0.0,
        backoff=lambda start, cap: delays(start, cap, lambda: 1.0),
    )  # fmt: skip
    world.stop = lambda: supervisor.stop("SIGTERM")
    if stop_when_up:
        recorder.on_ready = world.stop
    return Harness(cfg, world, ports, store, clock, recorder, readiness, state, supervisor)


def history(h: Harness) -> tuple[list[Entry], list[Entry]]:
    """The ledger's entries in the order they were added, and in the order they were undone.
    A local entry whose command failed (in the ledger while it ran, then taken out) is in
    neither: it changed nothing."""
    added: list[Entry] = []
    removed: list[Entry] = []
    before: list[Entry] = []
    for event in h.recorder.events:
        if isinstance(event, LedgerChanged):
            now = list(event.entries)
            if len(now) > len(before):
                added.append(now[-1])
            else:
                removed += [e for e in before if e not in now]
            before = now
    failed = [e for e in added if e.side == "local" and shell_join(e.apply) not in h.world.applied]
    added = [e for e in added if e not in failed]
    removed = [e for e in removed if e not in failed]
    return added, removed


def is_undo(call: tuple[str, str]) -> bool:
    """A command that takes a change back (route or rule deletion)."""
    where, shown = call
    return where in ("local", "remote") and (" del " in f" {shown} ")


def assert_nothing_applied_is_left(h: Harness) -> None:
    """Every local `ip ... add` that succeeded has its `del` tried after it, whether or not
    the ledger saw it succeed (a command runs on when the start is cancelled meanwhile)."""
    local = [shown for where, shown in h.world.calls if where == "local"]
    for shown in h.world.applied:
        if shown.startswith("ip ") and " add " in shown:
            undo = shown.replace(" add ", " del ", 1)
            assert undo in local[local.index(shown) :], f"left behind: {shown}"


def assert_all_undone(h: Harness, remote_reachable: bool = True) -> list[Entry]:
    """Every change undone, newest first, each by its own undo argv, and the ledger empty;
    the local pppd stopped between the routes and the filter, the connection closed last."""
    added, removed = history(h)
    assert removed == added[::-1]
    assert h.ledger() == []
    expected = [
        (e.side, shell_join(e.undo))
        for e in removed
        if e.undo is not None and (e.side == "local" or remote_reachable)
    ]
    calls = h.world.calls
    assert [c for c in calls if is_undo(c)] == expected
    assert_nothing_applied_is_left(h)
    if ("pppd", "start") in calls:
        stop = calls.index(("pppd", "stop"))
        routes_gone = [i for i, c in enumerate(calls) if is_undo(c) and "rule" not in c[1]]
        rules_gone = [i for i, c in enumerate(calls) if is_undo(c) and "rule" in c[1]]
        assert all(i < stop for i in routes_gone) and all(i > stop for i in rules_gone)
    if any(isinstance(e, Connected) for e in h.recorder.events):
        assert calls[-1] == ("ssh", "close")
    return added


# ---------------------------------------------------------------------------- happy path


def test_up_and_stop_exact_commands_lines_and_undo_order() -> None:
    """The whole way up and down, as the lab's first test sees it, without the lab."""
    h = harness(site(hooks="up = /bin/up\ndown = /bin/down\n"))
    assert h.run() == 0
    assert h.world.calls == [
        ("ssh", "connect"),
        ("remote", "cleanup"),
        ("remote", "congestion"),
        ("ssh", "open pppd channel"),
        ("pppd", "start"),
        ("local", "sysctl -q -w net.ipv4.conf.ppp0.rp_filter=1"),
        ("local", RULES[0]),
        ("local", RULES[1]),
        ("ssh", "attach 99"),
        ("remote", "interface"),
        ("local", ROUTE_HERE),
        ("remote", ROUTE_THERE),
        ("hook", "/bin/up"),
        ("hook", "/bin/down"),
        ("remote", "route del 10.1.0.0/24 via 10.99.0.1"),
        ("local", "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0"),
        ("pppd", "stop"),
        ("ssh", "detach"),
        ("local", RULES[1].replace(" add ", " del ")),
        ("local", RULES[0].replace(" add ", " del ")),
        ("ssh", "close"),
    ]
    assert h.lines() == [
        "connecting to vpn@gw.example.net:22 (host key checked against /etc/pppssh/kh)",
        "connected; server SSH-2.0-OpenSSH_9.2p1\\x1b[2J",
        f"{REMOTE} cleanup",
        f"{REMOTE} congestion",
        "the SSH connection sends with bbr (was cubic)",
        f"{REMOTE} pppd",
        "remote pppd started (first PPP frame received)",
        f"[#] {PPPD}",
        "[#] sysctl -q -w net.ipv4.conf.ppp0.rp_filter=1",
        f"[#] {RULES[0]}",
        f"[#] {RULES[1]}",
        "link up: ppp0 10.99.0.1 -> 10.99.0.2 (remote ppp5)",
        f"[#] {ROUTE_HERE}",
        f"{REMOTE} {ROUTE_THERE}",
        "[#] /bin/up",
        "  /bin/up ran",
        "pppssh: site-b is up: ppp0 10.99.0.1 -> 10.99.0.2 (pid 777); "
        "stop it with: pppssh stop site-b",
        "received SIGTERM",
        "stopping",
        "[#] /bin/down",
        "  /bin/down ran",
        f"{REMOTE} route del 10.1.0.0/24 via 10.99.0.1",
        "[#] ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0",
        "[#] kill -TERM 4242  # local pppd",
        "local pppd stopped (exit status 5 (terminated by a signal))",
        f"[#] {RULES[1].replace(' add ', ' del ')}",
        f"[#] {RULES[0].replace(' add ', ' del ')}",
        "remote pppd ended (exit status 0 (ok))",
        "disconnected from vpn@gw.example.net:22",
        "pppssh: site-b stopped",
    ]
    added = assert_all_undone(h)
    assert [(e.side, e.kind) for e in added] == [
        ("local", "filter"), ("local", "filter"), ("local", "filter"),
        ("local", "route"), ("remote", "route"),
    ]  # fmt: skip
    assert h.readiness.said == ["READY"]
    assert h.world.hook_env["/bin/up"] == {
        "SITE": "site-b", "IFNAME": "ppp0", "LOCAL_IP": LOCAL, "REMOTE_IP": PEER,
        "REMOTE_IFNAME": "ppp5",
    }  # fmt: skip


def test_state_file_grows_with_the_ledger_and_says_up() -> None:
    """The state file is written at each change; when up it names the link and its routes."""
    h = harness()
    assert h.run() == 0
    up = next(s for s in h.store.history if s["state"] == "up")
    assert (up["interface"], up["remote_interface"], up["local_pppd_pid"]) == ("ppp0", "ppp5", 4242)
    assert up["local_routes"] == [ROUTE_HERE] and up["remote_routes"] == [ROUTE_THERE]
    assert up["local_filter"] == RULES
    sizes = [len(s["ledger"]) for s in h.store.history if s["state"] == "starting"]
    assert [n for i, n in enumerate(sizes) if i == 0 or sizes[i - 1] != n] == [0, 1, 2, 3, 4, 5]
    last = h.store.history[-1]
    assert last["ledger"] == [] and last["local_pppd_pid"] is None and last["interface"] is None
    assert Ledger.from_json(up["ledger"]).entries[3].what == "10.2.0.0/24 via 10.99.0.2 dev ppp0"


def test_remote_cleanup_without_helper_stops_a_leftover_pppd() -> None:
    """pgrep finds an earlier session's pppd: pkill, poll until gone, then the new pppd."""
    h = harness(helper=False)
    h.world.remote_leftover = True
    assert h.run() == 0
    pidfile = "/run/ppp-pppssh-site-b-10.99.0.1.pid"
    assert h.world.calls[1:6] == [
        ("remote", f"pgrep -x -F {pidfile} pppd"),
        ("remote", f"sudo -n /usr/bin/pkill -TERM -x -F {pidfile} pppd"),
        ("remote", f"pgrep -x -F {pidfile} pppd"),
        ("remote", "sudo -n /usr/local/libexec/pppssh-congestion bbr"),
        ("ssh", "open pppd channel"),
    ]
    lines = h.lines()
    assert lines.index("stopped the pppd an earlier session left on the remote gateway") < (
        lines.index("remote pppd started (first PPP frame received)")
    )
    assert h.clock.sleeps[0] == 0.5
    assert_all_undone(h)


def test_full_tunnel_pins_the_server_route_first_and_removes_it_last() -> None:
    """The SSH server's host route goes in before the halves and comes out after them."""
    h = harness(site(networks="full_tunnel = yes\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"))
    assert h.run() == 0
    added = assert_all_undone(h)
    assert [(e.kind, e.what) for e in added if e.side == "local" and e.kind != "filter"] == [
        ("server-route", "203.0.113.5/32 via 192.0.2.1 dev eth0 onlink"),
        ("route", "10.2.0.0/24 via 10.99.0.2 dev ppp0"),
        ("route", "0.0.0.0/1 via 10.99.0.2 dev ppp0"),
        ("route", "128.0.0.0/1 via 10.99.0.2 dev ppp0"),
    ]
    assert ("local", "ip -4 route get 203.0.113.5") in h.world.calls


def test_ipv6_waits_for_ipv6cp() -> None:
    """With ipv6: IPV6CP is waited for and shown."""
    h = harness(ipv6=True)
    assert h.run() == 0
    assert "IPv6 up: fe80::1 -> fe80::2" in h.lines()
    assert "ipv6cp" in h.world.steps
    assert_all_undone(h)


# ---------------------------------------------------------------------------- faults

START_STEPS = ["connect", "cleanup", "open_pppd", "first_frame", "connected", "filter", "ipcp",
               "remote_if", "route_local", "route_remote", "hook /bin/up"]  # fmt: skip
AFTER_LOCAL = START_STEPS[START_STEPS.index("connected") :]
AFTER_CHANNEL = START_STEPS[START_STEPS.index("first_frame") :]
WAITED_STEP_NAME = {
    "cleanup": "cleaning up after an earlier session",
    "first_frame": "starting the remote pppd",
    "connected": "starting the local pppd",
    "ipcp": "PPP negotiation",
    "remote_if": "finding the remote interface",
}
HOOKS = "up = /bin/up\ndown = /bin/down\n"


def failed_start(h: Harness) -> str:
    """Run a site (reconnect = no); it must fail (exit 1); the error it gave."""
    h.supervisor.cfg = h.cfg = dataclasses.replace(h.cfg, reconnect=False)
    assert h.run() == 1
    came_up = any(line.startswith("pppssh: site-b is up:") for line in h.lines())
    assert h.readiness.said == (["READY"] if came_up else [])
    return h.lines()[-1]


# Where a death at a step is noticed: the next step that waits on the link (its name), or,
# past the last one, the watch once the site is up ("link down").
NOTICED = {
    "local-dies": {
        "connected": "starting the local pppd", "filter": "PPP negotiation",
        "ipcp": "PPP negotiation", "remote_if": "finding the remote interface",
    },
    "remote-dies": {
        "first_frame": "starting the remote pppd", "connected": "starting the local pppd",
        "ipcp": "PPP negotiation", "remote_if": "finding the remote interface",
    },
}  # fmt: skip


@pytest.mark.parametrize("step", AFTER_LOCAL)
def test_local_pppd_dies_at_each_step(step: str) -> None:
    """The local pppd is killed at step: the start fails naming it, everything is undone."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.faults[step] = "local-dies"
    error = failed_start(h)
    cause = "local pppd exited, killed by SIGKILL: Terminating on signal 9"
    if step in NOTICED["local-dies"]:
        assert error == f"pppssh: site-b: {NOTICED['local-dies'][step]} failed: {cause}"
    else:  # no step waits on the link any more: it comes up and is found dead at once
        assert error == f"pppssh: site-b: link down: {cause}"
        assert f"link down: {cause}; undoing" in h.lines()
    assert "local pppd stopped (killed by SIGKILL)" in h.lines()
    assert_all_undone(h)


@pytest.mark.parametrize("step", AFTER_CHANNEL)
def test_remote_pppd_dies_at_each_step(step: str) -> None:
    """The remote pppd ends at step: the same, with the remote side's cause."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.faults[step] = "remote-dies"
    error = failed_start(h)
    cause = "remote pppd ended, killed by SIGKILL"
    if step in NOTICED["remote-dies"]:
        assert error == f"pppssh: site-b: {NOTICED['remote-dies'][step]} failed: {cause}"
    else:
        assert error == f"pppssh: site-b: link down: {cause}"
    assert "remote pppd ended (killed by SIGKILL)" in h.lines()
    assert_all_undone(h)


LOST = "SSH connection lost: Connection lost"
SSH_LOST = {  # a request on the dead connection fails by itself; a wait sees the loss
    "connect": "remote `cleanup` failed: Connection lost",
    "cleanup": f"cleaning up after an earlier session failed: {LOST}",
    "open_pppd": "cannot open a channel: Connection lost",
    "first_frame": f"starting the remote pppd failed: {LOST}",
    "connected": f"starting the local pppd failed: {LOST}",
    "filter": "remote `interface` failed: Connection lost",
    "ipcp": f"PPP negotiation failed: {LOST}",
    "remote_if": f"finding the remote interface failed: {LOST}",
    "route_local": "remote `route add 10.1.0.0/24 via 10.99.0.1` failed: Connection lost",
    "route_remote": "remote `route add 10.1.0.0/24 via 10.99.0.1` failed: Connection lost",
    "hook /bin/up": f"link down: {LOST}",
}


@pytest.mark.parametrize("step", START_STEPS)
def test_ssh_lost_at_each_step(step: str) -> None:
    """The SSH connection dies at step: the start fails; the remote routes went with the
    remote link (said so, not attempted); everything here is undone."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.faults[step] = "ssh-lost"
    error = failed_start(h)
    assert error == f"pppssh: site-b: {SSH_LOST[step]}"
    added = assert_all_undone(h, remote_reachable=False)
    remote = [e for e in added if e.side == "remote"]
    for entry in remote:
        assert (
            f"remote route {entry.what.split()[0]} not removed: connection gone (it went with "
            "the remote link)"
        ) in h.lines()
    assert not any(c[0] == "remote" and " del " in c[1] for c in h.world.calls)


@pytest.mark.parametrize("step", [s for s in START_STEPS if s in WAITED_STEP_NAME])
def test_a_step_without_answer_ends_at_up_timeout(step: str) -> None:
    """Nothing dies, nothing answers: the step's own name and up_timeout are the error."""
    h = harness(stop_when_up=False, up_timeout=0.05)
    h.world.faults[step] = "hang"
    error = failed_start(h)
    assert error == f"pppssh: site-b: {WAITED_STEP_NAME[step]}: no result within up_timeout=0.05s"
    assert_all_undone(h)


@pytest.mark.parametrize("side", ["local", "remote"])
def test_a_refused_route_undoes_everything_before_it(side: str) -> None:
    """The second route of one side is refused: the routes added on both sides until then
    (each side runs to its end) are undone in reverse, then the pppds, filter, connection."""
    cfg = site(networks="local = 10.1.0.0/24, 10.3.0.0/24\nremote = 10.2.0.0/24, 10.4.0.0/24\n")
    h = harness(cfg, stop_when_up=False)
    if side == "local":
        h.world.refuse_local["route add 10.4.0.0/24"] = "RTNETLINK answers: File exists"
    else:
        h.world.refuse_remote["route add 10.3.0.0/24"] = "sudo: a password is required"
    error = failed_start(h)
    if side == "local":
        assert error == (
            "pppssh: site-b: `ip route add 10.4.0.0/24 via 10.99.0.2 dev ppp0` failed: "
            "RTNETLINK answers: File exists"
        )
    else:
        assert error == (
            "pppssh: site-b: remote `route add 10.3.0.0/24 via 10.99.0.1` failed: "
            "sudo: a password is required"
        )
    added = assert_all_undone(h)
    routes = [(e.side, e.what.split()[0]) for e in added if e.kind == "route"]
    refused = ("local", "10.4.0.0/24") if side == "local" else ("remote", "10.3.0.0/24")
    both = {("local", "10.2.0.0/24"), ("local", "10.4.0.0/24"), ("remote", "10.1.0.0/24"),
            ("remote", "10.3.0.0/24")}  # fmt: skip
    assert set(routes) == both - {refused}
    assert "start failed; undoing what was done" in h.lines()


def test_a_route_already_gone_is_said_so() -> None:
    """The kernel dropped a route with its interface: the undo says so, not an error."""
    h = harness()
    h.world.refuse_local["ip route del"] = "RTNETLINK answers: No such process"
    assert h.run() == 0
    assert "route 10.2.0.0/24 already gone with its interface" in h.lines()
    assert_all_undone(h)


def test_ipcp_on_other_addresses_is_refused() -> None:
    """IPCP agreed on addresses other than the configured ones: refused, undone."""
    h = harness(stop_when_up=False)
    h.world.ipcp = LinkInfo("ppp0", "10.99.0.9", PEER)
    assert failed_start(h) == (
        "pppssh: site-b: IPCP agreed on 10.99.0.9 -> 10.99.0.2, not the configured "
        "10.99.0.1 -> 10.99.0.2"
    )
    assert_all_undone(h)


# ---------------------------------------------------------------------------- hooks


def test_failing_up_hook_aborts_runs_down_and_undoes() -> None:
    """up fails (up_failure = abort): the start fails; down runs (as pppd's ip-down) before
    the routes go."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.hooks["/bin/up"] = "fail"
    assert failed_start(h) == "pppssh: site-b: up command failed: `/bin/up` failed: no can do"
    calls = h.world.calls
    assert calls.index(("hook", "/bin/down")) < calls.index(
        ("remote", "route del 10.1.0.0/24 via 10.99.0.1")
    )
    assert "  no can do" in h.lines()
    assert_all_undone(h)


def test_failing_up_hook_can_be_only_reported() -> None:
    """up_failure = continue: a note, last_error in the state file, the link stays up."""
    h = harness(site(hooks=HOOKS + "up_failure = continue\n"))
    h.world.hooks["/bin/up"] = "fail"
    assert h.run() == 0
    assert (
        "note: up command failed: `/bin/up` failed: no can do; the link stays "
        "(up_failure = continue)"
    ) in h.lines()
    up = next(s for s in h.store.history if s["state"] == "up")
    assert up["last_error"] == "up command failed: `/bin/up` failed: no can do"
    assert h.readiness.said == ["READY"]
    assert_all_undone(h)


def test_hung_up_hook_is_killed_and_the_start_fails() -> None:
    """up runs past hooks.timeout: killed, the start fails with that."""
    h = harness(site(hooks=HOOKS + "timeout = 2\n"), stop_when_up=False)
    h.world.hooks["/bin/up"] = "hang"
    assert failed_start(h) == (
        "pppssh: site-b: up command failed: `/bin/up` failed: still running after 2s; killed"
    )
    assert_all_undone(h)


def test_failing_down_hook_is_only_reported() -> None:
    """down fails: a note; the teardown goes on."""
    h = harness(site(hooks=HOOKS))
    h.world.hooks["/bin/down"] = "fail"
    assert h.run() == 0
    assert "note: down command failed: `/bin/down` failed: no can do" in h.lines()
    assert_all_undone(h)


# ---------------------------------------------------------------------------- stop


@pytest.mark.parametrize("step", START_STEPS)
def test_stop_during_each_step_of_the_start(step: str) -> None:
    """SIGTERM at step: the start is interrupted, what was done is undone, exit 0."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.faults[step] = "cancel"
    assert h.run() == 0
    lines = h.lines()
    assert lines[-1] == "pppssh: site-b stopped"
    assert "received SIGTERM" in lines
    assert "interrupted during start; undoing what was done" in lines
    assert h.readiness.said == []
    assert_all_undone(h)


@pytest.mark.parametrize("step", ["filter", "route_local"])
def test_a_local_change_is_in_the_state_file_while_its_command_runs(step: str) -> None:
    """The ledger is written ahead: a SIGKILL while `ip rule add` or `ip route add` runs
    leaves a state file that names it (the recovery undoes it), and a stop then undoes it
    once the command has ended, as the runner lets it (test_stop_during_each_step_...)."""
    h = harness(site(hooks=HOOKS), stop_when_up=False)
    h.world.faults[step] = "cancel"
    running: list[list[str]] = []
    reach = h.world.reach

    async def spy(at: str) -> None:
        """The state file as the command that reached `at` runs."""
        if at == step:
            state = h.store.read(h.cfg.name)
            assert state is not None
            running.append(state.ledger[-1]["apply"])
        await reach(at)

    h.world.reach = spy  # type: ignore[method-assign]
    assert h.run() == 0
    command = RULES[0] if step == "filter" else ROUTE_HERE
    assert running == [command.split()]
    assert command in h.world.applied
    undo = ("local", command.replace(" add ", " del "))
    assert h.world.calls.index(undo) > h.world.calls.index(("local", command))
    assert h.ledger() == []


def test_stop_while_up() -> None:
    """SIGTERM while up: `stopping`, the teardown, exit 0 (the happy path's end)."""
    h = harness()
    assert h.run() == 0
    assert h.lines()[-2:] == ["disconnected from vpn@gw.example.net:22", "pppssh: site-b stopped"]
    assert_all_undone(h)


def test_stop_while_waiting_to_reconnect() -> None:
    """SIGTERM during the backoff wait: it stops at once, nothing is left."""
    h = harness(stop_when_up=False, retry_start=True)
    h.world.unreachable = 99

    async def sleep(seconds: float) -> None:
        """The first wait is where the signal arrives."""
        h.clock.sleeps.append(seconds)
        h.supervisor.stop("SIGTERM")
        await asyncio.sleep(1)

    h.ports.clock.sleep = sleep  # type: ignore[method-assign]
    assert h.run() == 0
    assert h.lines()[-2:] == ["received SIGTERM", "pppssh: site-b stopped"]
    assert h.world.connects == 1 and h.clock.sleeps == [5.0]
    assert h.world.calls == [("ssh", "connect")]


def test_a_second_signal_is_ignored() -> None:
    """Only the first SIGTERM/SIGINT counts; the teardown is not cut short."""
    h = harness(stop_when_up=False)

    def twice() -> None:
        """Two signals in a row."""
        h.supervisor.stop("SIGTERM")
        h.supervisor.stop("SIGINT")

    h.recorder.on_ready = twice
    assert h.run() == 0
    assert h.lines().count("received SIGTERM") == 1 and "received SIGINT" not in h.lines()
    assert_all_undone(h)


# ---------------------------------------------------------------------------- SIGKILL


def test_sigkill_then_start_undoes_the_ledger_of_the_dead_process() -> None:
    """A pppssh SIGKILLed while up leaves its state file: the next start stops its local
    pppd and undoes its local ledger newest first (the remote side's pppd is the next
    start's cleanup); the state file is gone after."""
    h = harness(site(networks="full_tunnel = yes\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"))
    dead: dict[str, State] = {}

    def sigkill() -> None:
        """Keep the state file as it is at this moment (up), as SIGKILL would."""
        state = h.store.read("site-b")
        assert state is not None
        dead["state"] = state

    def sigkill_then_stop() -> None:
        """The state file as SIGKILL leaves it; then this run ends (its fakes undo)."""
        sigkill()
        h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = sigkill_then_stop
    assert h.run() == 0
    stale = dead["state"]
    assert stale.state == "up" and len(stale.ledger) == 8

    world = World()
    world.leftover_pids = [4242]
    world.refuse_local["route del 0.0.0.0/1"] = "RTNETLINK answers: No such process"
    ports, store, _ = fake_ports(world, h.cfg)
    store.write(stale)
    recorder = Recorder()
    assert asyncio.run(recover("site-b", ports.runner, ports.store, recorder)) is True
    assert world.calls == [
        ("local", "kill 4242"),
        ("local", "ip route del 128.0.0.0/1 via 10.99.0.2 dev ppp0"),
        ("local", "ip route del 0.0.0.0/1 via 10.99.0.2 dev ppp0"),
        ("local", "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0"),
        ("local", "ip route del 203.0.113.5/32 via 192.0.2.1 dev eth0 onlink"),
        ("local", RULES[1].replace(" add ", " del ")),
        ("local", RULES[0].replace(" add ", " del ")),
    ]
    assert recorder.lines()[:3] == [
        f"pppssh: site-b: an earlier pppssh (pid {SELF}) ended without its teardown; "
        "undoing what it left",
        "[#] kill -TERM 4242  # its local pppd",
        "local pppd 4242 stopped (SIGTERM)",
    ]
    assert "already gone with its interface" in recorder.lines()
    assert store.read("site-b") is None
    assert asyncio.run(recover("site-b", ports.runner, ports.store, Recorder())) is False, (
        "nothing is left twice"
    )


def test_recovery_of_a_state_file_without_a_ledger() -> None:
    """A state file whose ledger is not one: said so, the pppd still stopped, file removed."""
    world = World()
    world.leftover_pids = [4243]
    ports, store, _ = fake_ports(world, site())
    state = State(site="site-b", config="/etc/pppssh/site-b.conf", pid=12)
    state.ledger = [{"side": "local"}]
    store.write(state)
    recorder = Recorder()
    assert asyncio.run(recover("site-b", ports.runner, ports.store, recorder)) is True
    assert world.calls == [("local", "kill 4243")]
    assert any("has no usable ledger" in line for line in recorder.lines())
    assert store.read("site-b") is None


# ---------------------------------------------------------------------------- supervisor


def test_reconnect_with_backoff_then_give_up_after_reconnect_tries() -> None:
    """Up, then the remote pppd dies; the WAN stays down: 5 s, 10 s, 20 s (fake clock, the
    jitter fixed), then reconnect_tries = 3 gives up: exit 1, said on stderr."""
    h = harness(stop_when_up=False, reconnect=True, reconnect_tries=3,
                reconnect_delay=5.0, reconnect_delay_max=60.0)  # fmt: skip

    def wan_down() -> None:
        """The remote pppd dies and the gateway cannot be reached any more."""
        assert h.world.transport is not None
        h.world.transport.remote_dies(-9)
        h.world.unreachable = 99

    h.recorder.on_ready = wan_down
    assert h.run() == 1
    assert h.clock.sleeps == [5.0, 10.0, 20.0]
    assert h.world.connects == 4
    lines = h.lines()
    assert (
        "pppssh: site-b: link down: remote pppd ended, killed by SIGKILL; trying again in 5.0s"
    ) in lines
    unreachable = "cannot reach gw.example.net:22: Network is unreachable"
    assert f"pppssh: site-b: {unreachable}; trying again in 10.0s" in lines
    assert lines[-1] == (
        f"pppssh: site-b: {unreachable} (giving up after 3 failed attempts in a row: "
        "reconnect_tries)"
    )
    last = h.store.history[-1]
    assert last["reconnects"] == 3 and last["state"] == "stopping"
    assert last["last_error"] == unreachable and last["ledger"] == []
    assert h.readiness.said == ["READY"]


def test_reconnect_comes_back_up_and_starts_the_backoff_over() -> None:
    """Down twice, each time back at the first try: each wait is the first delay again."""
    h = harness(stop_when_up=False, reconnect=True, reconnect_delay=5.0)
    ups = [0]

    def down_twice() -> None:
        """The remote pppd dies after the first two comings up; stop after the third."""
        ups[0] += 1
        assert h.world.transport is not None
        if ups[0] < 3:
            h.world.transport.remote_dies(-9)
        else:
            h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = down_twice
    assert h.run() == 0
    assert h.clock.sleeps == [5.0, 5.0]
    lines = h.lines()
    assert lines.count("pppssh: site-b is up again: ppp0 10.99.0.1 -> 10.99.0.2") == 2
    assert h.readiness.said == ["READY"]
    assert h.store.history[-1]["reconnects"] == 2
    assert h.world.pppds == 3 and h.world.calls.count(("pppd", "stop")) == 3


def test_no_reconnect_ends_with_the_link() -> None:
    """reconnect = no: the link goes down, the site ends with exit 1."""
    h = harness(stop_when_up=False, reconnect=False)

    def remote_dies() -> None:
        """The remote pppd dies once up."""
        assert h.world.transport is not None
        h.world.transport.remote_dies(-9)

    h.recorder.on_ready = remote_dies
    assert h.run() == 1
    assert h.lines()[-1] == "pppssh: site-b: link down: remote pppd ended, killed by SIGKILL"
    assert h.world.connects == 1
    assert_all_undone(h)


def test_retry_start_tells_start_and_keeps_trying() -> None:
    """retry_start: the first failure is told to the waiting `start` (RETRYING), the
    attempts go on, and the link comes up (announced as up, not up again)."""
    h = harness(retry_start=True, reconnect_delay=2.0, reconnect_delay_max=3.0)
    h.world.unreachable = 3
    assert h.run() == 0
    assert h.readiness.said == ["RETRYING cannot reach gw.example.net:22: Network is unreachable"]
    assert h.clock.sleeps == [2.0, 3.0, 3.0]
    assert any(line.startswith("pppssh: site-b is up: ppp0") for line in h.lines())
    assert "start failed; undoing what was done" not in h.lines(), "nothing was connected"


def test_without_retry_start_the_first_failure_ends_it() -> None:
    """No retry_start: one attempt, exit 1, one error line; `start` hears nothing (it reads
    the exit status)."""
    h = harness(stop_when_up=False)
    h.world.unreachable = 1
    assert (
        failed_start(h) == "pppssh: site-b: cannot reach gw.example.net:22: Network is unreachable"
    )
    assert h.world.connects == 1 and h.clock.sleeps == []


# ---------------------------------------------------------------------------- watch


def test_link_down_names_the_cause_not_its_echo() -> None:
    """The pty closes a moment before the pidfd says the local pppd was killed: watch()
    reports the kill, not the closed terminal."""
    cfg = site()
    world = World()
    ports, _, _ = fake_ports(world, cfg)

    async def main() -> str:
        attempt = Attempt(cfg, ports, Recorder(), settle=0.5)
        await attempt.up()
        loop = asyncio.get_running_loop()
        assert world.transport is not None and world.pppd is not None
        loop.call_later(0.01, world.transport.master_closed.set_result, None)
        loop.call_later(0.05, world.pppd.die, -9)
        reason = await attempt.watch()
        await attempt.down()
        return reason

    assert asyncio.run(main()).startswith("local pppd exited, killed by SIGKILL")


def test_a_dead_part_is_noticed_while_up_without_polling() -> None:
    """Each part's death ends the watch with its own cause."""
    for kill, cause in (
        (lambda w: w.pppd.die(-9), "local pppd exited, killed by SIGKILL"),
        (lambda w: w.transport.remote_dies(-9), "remote pppd ended, killed by SIGKILL"),
        (lambda w: w.transport.lose("Keepalive timeout"), "SSH connection lost: Keepalive timeout"),
    ):
        h = harness(stop_when_up=False, reconnect=False)
        h.recorder.on_ready = lambda kill=kill, h=h: kill(h.world)
        assert h.run() == 1
        assert h.lines()[-1].startswith(f"pppssh: site-b: link down: {cause}"), h.lines()[-1]
        assert_all_undone(h, remote_reachable="SSH" not in cause)


def test_state_reporter_keeps_the_first_loose_rp_filter_warning() -> None:
    """conf/all = 2 makes the strict filter loose: a warning (once per process) and in status."""
    h = harness()
    h.ports.runner.rp_filter = 2  # type: ignore[attr-defined]
    assert h.run() == 0
    up = next(s for s in h.store.history if s["state"] == "up")
    assert up["last_error"].startswith("warning: net.ipv4.conf.all.rp_filter = 2 (loose)")


def test_ledger_in_the_state_file_rises_then_falls() -> None:
    """Each write of the state file holds the ledger as it is: it only grows while the site
    comes up (one entry per change) and only shrinks while it goes down, to empty."""
    h = harness()
    assert h.run() == 0
    sizes = [len(s["ledger"]) for s in h.store.history]
    top = sizes.index(5)
    assert sizes[: top + 1] == sorted(sizes[: top + 1])
    assert sizes[top:] == sorted(sizes[top:], reverse=True)
    assert max(sizes) == 5 and sizes[-1] == 0


# ---------------------------------------------------------------------------- reporters


def test_notify_reporter_gives_systemd_its_lines() -> None:
    """STATUS= while connecting and reconnecting, READY=1 with the link, STOPPING=1."""
    sent: list[tuple[str, ...]] = []
    notify = NotifyReporter(lambda *lines: sent.append(lines))
    for event in (
        Connecting("vpn@gw:22", "/etc/kh"),
        Reconnecting("site-b", 2.0, "connection refused"),
        Connecting("vpn@gw:22", "/etc/kh"),
        Note("ignored"),
        Ready("site-b", "ppp0 A -> B", 1, again=False),
        Reconnecting("site-b", 5.0, "link down: x"),
        Connecting("vpn@gw:22", "/etc/kh"),
        Ready("site-b", "ppp0 A -> B", 1, again=True),
        SignalReceived("SIGTERM"),
        Failed("site-b", "gave up"),
    ):
        notify.report(event)
    assert sent == [
        ("STATUS=connecting to vpn@gw:22",),
        # retry_start: systemctl start returns once the first attempt failed
        ("READY=1", "STATUS=retrying in 2.0s: connection refused"),
        ("STATUS=retrying: connecting to vpn@gw:22 (last: connection refused)",),
        ("READY=1", "STATUS=up: ppp0 A -> B"),
        ("STATUS=reconnecting in 5.0s: link down: x",),
        ("STATUS=reconnecting: connecting to vpn@gw:22 (last: link down: x)",),
        ("READY=1", "STATUS=up: ppp0 A -> B"),
        ("STOPPING=1",),
        ("STATUS=failed: gave up",),
    ]


def test_terminal_and_log_reporters_say_the_same_lines() -> None:
    """The terminal: progress on stdout, the final error on stderr; the log: the same lines
    through logging (warnings for link down and the final error)."""
    out, err = io.StringIO(), io.StringIO()
    terminal = TerminalReporter(out, err)
    logger = logging.getLogger("pppssh.test-events")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        """Keeps every record."""

        def emit(self, record: logging.LogRecord) -> None:
            """Keep it."""
            records.append(record)

    logger.addHandler(Keep())
    log = LogReporter(logger)
    events = [
        CommandRun("remote", "route add 10.1.0.0/24 via 10.99.0.1", REMOTE),
        IpcpUp("ppp0", LOCAL, PEER),
        LinkDown("SSH connection lost: x"),
        Failed("site-b", "link down: SSH connection lost: x"),
    ]
    for event in events:
        terminal.report(event)
        log.report(event)
    assert out.getvalue() == (
        f"{REMOTE} route add 10.1.0.0/24 via 10.99.0.1\nlink down: SSH connection lost: x; undoing\n"
    )
    assert err.getvalue() == "pppssh: site-b: link down: SSH connection lost: x\n"
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", f"{REMOTE} route add 10.1.0.0/24 via 10.99.0.1"),
        ("WARNING", "link down: SSH connection lost: x; undoing"),
        ("WARNING", "pppssh: site-b: link down: SSH connection lost: x"),
    ]


def test_a_refused_channel_is_a_tunnel_error() -> None:
    """asyncssh refusing the pppd channel (the connection died meanwhile) is a TunnelError,
    which the supervisor retries, not a crash."""
    import asyncssh

    from pppssh.adapters import AsyncsshTransport

    class Closed:
        """A connection that refuses every channel."""

        async def create_session(self, *args: object, **kwargs: object) -> None:
            """Refused."""
            raise asyncssh.ChannelOpenError(2, "Connection lost\x1b[2J")

    transport = AsyncsshTransport(site())
    transport.conn = Closed()  # type: ignore[assignment]
    with pytest.raises(TunnelError) as caught:
        asyncio.run(transport.open_pppd("pppd"))
    assert str(caught.value) == "cannot open the remote pppd's channel: Connection lost\\x1b[2J"


# ---------------------------------------------------------------------------- reload, reconnect

NEW_NETWORKS = "local = 10.1.0.0/24 10.3.0.0/24\nremote = 10.4.0.0/24\n"


def reload_when_up(h: Harness, load: Callable[[], SiteConfig]) -> dict[str, Any]:
    """Once up: reload with load(), note the calls and ledger before and after, then stop."""
    seen: dict[str, Any] = {}

    async def reload_then_stop() -> None:
        """The reload a SIGHUP starts, then SIGTERM."""
        seen["calls"] = len(h.world.calls)
        seen["before"] = h.ledger()
        seen["applied"] = await h.supervisor.reload(load)
        seen["after"] = h.ledger()
        seen["reload_calls"] = h.world.calls[seen["calls"] :]
        h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = lambda: seen.setdefault(
        "task", asyncio.get_running_loop().create_task(reload_then_stop())
    )
    return seen


def whats(ledger: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """A ledger as (side, kind, what)."""
    return [(e["side"], e["kind"], e["what"]) for e in ledger]


def test_reload_adds_and_removes_exactly_the_diff_on_both_sides() -> None:
    """A new local network (its filter rule here, its route there), a remote network swapped
    (route here): additions first, then the removal; the link is untouched; the ledger holds
    the new set, the filter rules together; the teardown undoes all of it."""
    h = harness(site(hooks="down = /bin/down\n"))
    new = site(networks=NEW_NETWORKS, hooks="down = /bin/down2\n")
    seen = reload_when_up(h, lambda: new)
    assert h.run() == 0
    assert seen["applied"] is True
    assert seen["reload_calls"] == [
        ("local", "ip -4 rule add iif ppp0 to 10.3.0.0/24 priority 5000 lookup main"),
        ("local", "ip route add 10.4.0.0/24 via 10.99.0.2 dev ppp0"),
        ("remote", "route add 10.3.0.0/24 via 10.99.0.1"),
        ("local", "ip route del 10.2.0.0/24 via 10.99.0.2 dev ppp0"),
    ]
    assert whats(seen["after"]) == [
        ("local", "filter", "strict reverse-path filter: sources only from what is routed via "
         "the link"),
        ("local", "filter", "forward from the link to 10.1.0.0/24"),
        ("local", "filter", "forward nothing else from the link (IPv4)"),
        ("local", "filter", "forward from the link to 10.3.0.0/24"),
        ("remote", "route", "10.1.0.0/24 via 10.99.0.1"),
        ("local", "route", "10.4.0.0/24 via 10.99.0.2 dev ppp0"),
        ("remote", "route", "10.3.0.0/24 via 10.99.0.1"),
    ]  # fmt: skip
    assert ("pppd", "stop") not in seen["reload_calls"] and h.world.connects == 1
    done = [line for line in h.lines() if "reload 1: done: added local filter" in line]
    assert len(done) == 1 and "link filter forwards to 10.4.0.0/24 from its next link" in done[0]
    teardown = h.world.calls[seen["calls"] + 4 :]
    assert teardown == [
        ("hook", "/bin/down2"),
        ("remote", "route del 10.3.0.0/24 via 10.99.0.1"),
        ("local", "ip route del 10.4.0.0/24 via 10.99.0.2 dev ppp0"),
        ("remote", "route del 10.1.0.0/24 via 10.99.0.1"),
        ("pppd", "stop"),
        ("ssh", "detach"),
        ("local", "ip -4 rule del iif ppp0 to 10.3.0.0/24 priority 5000 lookup main"),
        ("local", RULES[1].replace(" add ", " del ")),
        ("local", RULES[0].replace(" add ", " del ")),
        ("ssh", "close"),
    ]
    assert h.ledger() == []


def test_reload_of_the_same_file_changes_nothing() -> None:
    """Nothing changed: no command runs, the ledger is as it was."""
    h = harness()
    seen = reload_when_up(h, lambda: h.cfg)
    assert h.run() == 0
    assert seen["applied"] is True and seen["reload_calls"] == []
    assert seen["after"] == seen["before"]
    assert "pppssh: site-b: reload 1: done: nothing to change" in h.lines()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"host": "gw2.example.net"}, "[remote] host"),
        ({"mtu": 1300}, "[ppp] mtu"),
        ({"full_tunnel": True}, "[networks] full_tunnel"),
    ],
)
def test_reload_refuses_keys_that_need_a_new_link(change: dict[str, Any], key: str) -> None:
    """A key the running link cannot take: one line naming it, nothing is changed, not even
    the networks changed beside it."""
    h = harness()
    new = dataclasses.replace(site(networks=NEW_NETWORKS), **change)
    seen = reload_when_up(h, lambda: new)
    assert h.run() == 0
    assert seen["applied"] is False and seen["reload_calls"] == []
    assert seen["after"] == seen["before"]
    refused = [line for line in h.lines() if "reload 1: refused" in line]
    assert len(refused) == 1 and key in refused[0] and "needs a new link" in refused[0]
    assert h.supervisor.cfg is h.cfg


def test_reload_of_a_bad_file_changes_nothing() -> None:
    """The file's one-line error (from config.load: trust checks, validation); nothing ran."""
    h = harness()

    def bad() -> SiteConfig:
        """What config.load raises for a bad or untrusted file."""
        raise ConfigError("/etc/pppssh/site-b.conf", 7, "remote", "not a network: 10.4.0.0/33")

    seen = reload_when_up(h, bad)
    assert h.run() == 0
    assert seen["applied"] is False and seen["reload_calls"] == []
    assert seen["after"] == seen["before"]
    assert (
        "pppssh: site-b: reload 1: refused: /etc/pppssh/site-b.conf:7: remote: not a network: "
        "10.4.0.0/33" in h.lines()
    )


def test_reload_refused_remotely_rolls_back_and_keeps_the_link() -> None:
    """The remote gateway's sudoers/helper does not allow the new route (no remote-setup for
    it yet): what this reload added is taken back, newest first; nothing was removed; the
    link stays; the next reload with the same file tries again."""
    h = harness()
    h.world.refuse_remote["route add 10.3.0.0/24"] = "pppssh-helper: request not allowed"
    new = site(networks=NEW_NETWORKS)
    seen = reload_when_up(h, lambda: new)
    assert h.run() == 0
    assert seen["applied"] is False
    assert seen["reload_calls"] == [
        ("local", "ip -4 rule add iif ppp0 to 10.3.0.0/24 priority 5000 lookup main"),
        ("local", "ip route add 10.4.0.0/24 via 10.99.0.2 dev ppp0"),
        ("remote", "route add 10.3.0.0/24 via 10.99.0.1"),
        ("local", "ip route del 10.4.0.0/24 via 10.99.0.2 dev ppp0"),
        ("local", "ip -4 rule del iif ppp0 to 10.3.0.0/24 priority 5000 lookup main"),
    ]
    assert seen["after"] == seen["before"]
    refused = [line for line in h.lines() if "reload 1: refused" in line]
    assert len(refused) == 1 and "remote gateway" in refused[0]
    assert "pppssh remote-setup" in refused[0] and "rolled back" in refused[0]
    assert h.world.connects == 1 and h.supervisor.cfg is h.cfg
    assert h.ledger() == []


def test_reload_while_waiting_to_reconnect_is_for_the_next_attempt() -> None:
    """No link to change: the next attempt uses the new networks."""
    h = harness(stop_when_up=False, retry_start=True)
    h.world.unreachable = 1
    new = dataclasses.replace(site(networks=NEW_NETWORKS), retry_start=True)
    outcome: list[bool] = []

    async def sleep(seconds: float) -> None:
        """The backoff wait: a reload arrives."""
        h.clock.sleeps.append(seconds)
        outcome.append(await h.supervisor.reload(lambda: new))

    h.ports.clock.sleep = sleep  # type: ignore[method-assign]
    h.recorder.on_ready = h.world.stop
    assert h.run() == 0
    assert outcome == [True]
    assert ("remote", "route add 10.3.0.0/24 via 10.99.0.1") in h.world.calls


def test_reconnect_while_up_drops_and_dials_at_once() -> None:
    """SIGUSR1 while up: the teardown runs, then a new attempt without a backoff wait."""
    h = harness(stop_when_up=False)
    ups: list[int] = []

    def on_ready() -> None:
        """First up: reconnect; second up: stop."""
        ups.append(h.world.connects)
        if len(ups) == 1:
            h.supervisor.reconnect("SIGUSR1")
        else:
            h.supervisor.stop("SIGTERM")

    h.recorder.on_ready = on_ready
    assert h.run() == 0
    assert ups == [1, 2] and h.clock.sleeps == []
    assert "pppssh: site-b: reconnect requested (SIGUSR1); trying again in 0.0s" in h.lines()
    first_close = h.world.calls.index(("ssh", "close"))
    assert h.world.calls[first_close + 1] == ("ssh", "connect")
    assert h.world.calls[:first_close].count(("pppd", "stop")) == 1
    assert h.ledger() == [] and h.state.reconnects == 1


def test_reconnect_during_the_backoff_wait_dials_at_once() -> None:
    """SIGUSR1 in a long backoff wait: the wait ends, the next attempt starts now."""
    h = harness(stop_when_up=False, retry_start=True)
    h.world.unreachable = 1

    async def sleep(seconds: float) -> None:
        """A wait that would last; the reconnect ends it."""
        h.clock.sleeps.append(seconds)
        h.supervisor.reconnect("SIGUSR1")
        await asyncio.sleep(10)

    h.ports.clock.sleep = sleep  # type: ignore[method-assign]
    h.recorder.on_ready = h.world.stop
    assert h.run() == 0
    assert h.world.connects == 2 and h.clock.sleeps == [5.0]
    assert [line for line in h.lines() if "reconnect requested" in line] == [
        "pppssh: site-b: reconnect requested (SIGUSR1); trying again in 0.0s"
    ]
    assert any(isinstance(e, Ready) for e in h.recorder.events)


def test_reconnect_after_stop_is_ignored() -> None:
    """A stop wins over a reconnect: the site ends, no new attempt."""
    h = harness(stop_when_up=False)

    def both() -> None:
        """SIGTERM, then SIGUSR1."""
        h.supervisor.stop("SIGTERM")
        h.supervisor.reconnect("SIGUSR1")

    h.recorder.on_ready = both
    assert h.run() == 0
    assert h.world.connects == 1 and h.lines()[-1] == "pppssh: site-b stopped"


# ---------------------------------------------------------------------------- the ppp qdisc


def test_qdisc_default_leaves_the_kernels_alone() -> None:
    """qdisc = default: no tc at all; fq_codel: tc after the link is up, before the routes."""
    h = harness()
    assert h.run() == 0
    assert not [c for c in h.world.calls if c[1].startswith("tc ")]
    assert ("local", ROUTE_HERE) in h.world.calls
    h = harness(qdisc="fq_codel")
    assert h.run() == 0
    calls = h.world.calls
    assert (
        calls.index(("remote", "interface"))
        < calls.index(("local", QDISC))
        < calls.index(("local", ROUTE_HERE))
    )


def test_qdisc_that_cannot_be_set_is_a_warning_and_the_link_comes_up() -> None:
    """tc refusing (no sch_fq_codel, no tc) is reported and kept as the last error; the
    routes still go in and nothing is left in the ledger for the qdisc."""
    h = harness(qdisc="fq_codel")
    h.world.refuse_local["tc qdisc"] = "Error: Specified qdisc kind is unknown."
    assert h.run() == 0
    warning = "qdisc fq_codel on ppp0 not set: Error: Specified qdisc kind is unknown."
    assert f"warning: {warning}" in h.lines()
    assert ("local", ROUTE_HERE) in h.world.calls
    assert h.state.last_error == warning
    added, _ = history(h)
    assert all("tc" not in " ".join(e.apply) for e in added)


# ---------------------------------------------------------------------------- way down's congestion


@pytest.mark.parametrize("helper", [True, False])
def test_a_refused_congestion_request_is_a_note_and_the_link_comes_up(helper: bool) -> None:
    """A gateway set up before tcp_congestion_down (its helper refuses the request, or sudo
    has no line for it) or a kernel without the algorithm: one note, the link comes up."""
    h = harness(helper=helper)
    why = "pppssh-congestion: this kernel has no bbr (no tcp_bbr module); cubic stays"
    h.world.refuse_remote["congestion"] = why
    assert h.run() == 0
    sent = [c for kind, c in h.world.calls if kind == "remote" and "congestion" in c]
    assert sent == (["congestion"] if helper else
                    ["sudo -n /usr/local/libexec/pppssh-congestion bbr"])  # fmt: skip
    notes = [line for line in h.lines() if "congestion control" in line]
    assert notes == [f"note: the way down keeps the remote's congestion control: remote "
                     f"`{sent[0]}` failed: {why}"]  # fmt: skip
    assert h.world.calls.index(("remote", sent[0])) < h.world.calls.index(
        ("ssh", "open pppd channel")
    )


@pytest.mark.parametrize("helper", [True, False])
def test_a_gateway_set_up_before_is_told_how_to_catch_up(helper: bool) -> None:
    """Refused by an older helper or by sudo (not by the program): the note names the fix."""
    h = harness(helper=helper)
    why = ("pppssh-helper: refused: 'congestion' is not a pppssh request" if helper
           else "sudo: a password is required")  # fmt: skip
    h.world.refuse_remote["congestion"] = why
    assert h.run() == 0
    notes = [line for line in h.lines() if "congestion control" in line]
    assert len(notes) == 1 and notes[0].endswith(
        f"failed: {why} (`pppssh remote-setup {h.cfg.path}` sets it up there; "
        "`tcp_congestion_down = default` stops asking)"
    ), notes


def test_a_hostile_answer_to_the_congestion_request_reaches_the_log_escaped() -> None:
    """What the remote side answers is shown as one line, control characters escaped, at
    most 200 characters: a hostile server cannot write to the terminal or forge log lines."""
    h = harness()
    h.world.congestion_said = "\x1b]0;owned\x07bbr \x1b[2J" + "A" * 400 + "\npppssh: site-b up\n"
    assert h.run() == 0
    line = next(x for x in h.lines() if "owned" in x)
    assert "\x1b" not in line and "\x07" not in line and line.startswith("\\x1b]0;owned")
    assert len(line) == 200 and "site-b up" not in line
    assert not [x for x in h.lines() if x == "pppssh: site-b up"]


def test_no_congestion_request_when_left_to_the_remote() -> None:
    """tcp_congestion_down = default: nothing is asked of the remote gateway for it."""
    h = harness(tcp_congestion_down="")
    assert h.run() == 0
    assert not [c for kind, c in h.world.calls if "congestion" in c]
