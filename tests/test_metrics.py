"""`pppssh status --format prometheus`: valid exposition text, nothing from a state file
injected into it, state files read through the trust check, the atomic file for
node-exporter, and the keepalive RTT from the lifecycle to the state file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest

from pppssh import asyncssh_compat as compat
from pppssh.cli import main
from pppssh.events import (
    Event,
    KeepaliveRtt,
    LinkDown,
    Reconnecting,
    Reporter,
    StateReporter,
    Up,
)
from pppssh.metrics import render
from pppssh.ssh import connect
from pppssh.status import site_status, write_atomically
from pppssh.system import State, write_state
from tests.test_lifecycle import harness

from .sshserver import SSHTestServer

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABELS = (
    rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE})*)?\}}"
)
SAMPLE = re.compile(rf"^({NAME})({LABELS})? (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$")
LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse(text: str) -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    """Parse exposition text 0.0.4 strictly: each family's HELP then TYPE once, before its
    samples, which follow without a break; every line well-formed; no two equal series.
    Family name -> (type, [(labels, value)])."""
    assert text.endswith("\n") and "\n\n" not in text
    families: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}
    current: str | None = None
    lines = text[:-1].split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in families, line
            assert lines[i + 1].startswith(f"# TYPE {name} "), line
            current = None
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in TYPES and name not in families, line
            families[name] = (kind, [])
            current = name
            continue
        assert not line.startswith("#"), line
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        assert m.group(1) == current, f"{line!r} outside its family {current}"
        inner = (m.group(2) or "{}")[1:-1]
        labels = {k: json.loads(v.replace("\\n", "\\u000a")) for k, v in LABEL.findall(inner)}
        series = families[current][1]
        assert labels not in [seen for seen, _ in series], f"series twice: {line!r}"
        series.append((labels, float(m.group(3))))
    return families


def row(**changes: object) -> dict[str, object]:
    """A status row of a site that is up."""
    base: dict[str, object] = {
        "site": "site-b", "state": "up", "interface": "ppp0", "remote_interface": "ppp3",
        "local_address": "192.168.77.1", "remote_address": "192.168.77.2",
        "bytes_in": 1200, "bytes_out": 3400, "packets_in": 12, "packets_out": 34,
        "reconnects": 2, "started": 1700000000.25, "state_since": 1700000100.5,
        "ssh_rtt": 0.0123,
    }  # fmt: skip
    base.update(changes)
    return base


def test_every_family_once_with_help_type_and_units() -> None:
    """The families, their types, labels and values; names with Prometheus' unit suffixes."""
    families = parse(render([row(), row(site="site-c", state="reconnecting", interface=None,
                                        bytes_in=None, bytes_out=None, packets_in=None,
                                        packets_out=None, ssh_rtt=None)]))  # fmt: skip
    kinds = {name: kind for name, (kind, _) in families.items()}
    assert kinds == {
        "pppssh_state_files_refused": "gauge",
        "pppssh_up": "gauge",
        "pppssh_state": "gauge",
        "pppssh_link_info": "gauge",
        "pppssh_receive_bytes_total": "counter",
        "pppssh_transmit_bytes_total": "counter",
        "pppssh_receive_packets_total": "counter",
        "pppssh_transmit_packets_total": "counter",
        "pppssh_reconnects_total": "counter",
        "pppssh_last_change_timestamp_seconds": "gauge",
        "pppssh_start_timestamp_seconds": "gauge",
        "pppssh_ssh_keepalive_rtt_seconds": "gauge",
    }
    for name, kind in kinds.items():
        assert name.startswith("pppssh_")
        assert name.endswith("_total") == (kind == "counter")

    def samples(name: str) -> list[tuple[dict[str, str], float]]:
        return families[name][1]

    b, c = {"site": "site-b"}, {"site": "site-c"}
    assert samples("pppssh_up") == [(b, 1), (c, 0)]
    assert samples("pppssh_receive_bytes_total") == [({**b, "interface": "ppp0"}, 1200)]
    assert samples("pppssh_transmit_packets_total") == [({**b, "interface": "ppp0"}, 34)]
    assert samples("pppssh_reconnects_total") == [(b, 2), (c, 2)]
    assert samples("pppssh_ssh_keepalive_rtt_seconds") == [(b, 0.0123)]
    assert samples("pppssh_last_change_timestamp_seconds")[0] == (b, 1700000100.5)
    assert samples("pppssh_link_info") == [({**b, "interface": "ppp0", "remote_interface":
        "ppp3", "local_address": "192.168.77.1", "remote_address": "192.168.77.2"}, 1)]  # fmt: skip
    states = {(s["site"], s["state"]): v for s, v in samples("pppssh_state")}
    assert states[("site-c", "reconnecting")] == 1 and states[("site-c", "up")] == 0
    assert sum(v for (site, _), v in states.items() if site == "site-b") == 1


def test_nothing_from_a_row_is_injected() -> None:
    """A site name, interface or address with quotes, backslashes and newlines stays one
    label value (round-tripped exactly); a state that is not one pppssh has matches none; a
    value that is not a number is no sample."""
    evil = 'x"} 1\npppssh_up{site="forged'
    text = render([row(site=evil, interface="ppp0\\\n# TYPE x counter", state="up\n",
                       remote_address='"', reconnects="7\nforged 1", ssh_rtt=float("nan"),
                       bytes_in=True)])  # fmt: skip
    families = parse(text)
    assert "forged" not in {line.split("{")[0] for line in text.splitlines()}
    assert families["pppssh_up"][1] == [({"site": evil}, 0)]
    assert families["pppssh_state"][1] == [({"site": evil, "state": s}, 0) for s in
                                           ("starting", "up", "reconnecting", "stopping", "dead")]  # fmt: skip
    ((labels, _),) = families["pppssh_link_info"][1]
    assert labels["interface"] == "ppp0\\\n# TYPE x counter" and labels["remote_address"] == '"'
    assert families["pppssh_reconnects_total"][1] == []
    assert families["pppssh_ssh_keepalive_rtt_seconds"][1] == []
    assert families["pppssh_receive_bytes_total"][1] == []


def up_state(site: str = "site-b", **changes: object) -> State:
    """A site that is up, held by this very process (so its pid is alive), on lo."""
    state = State(
        site=site, config=f"/etc/pppssh/{site}.conf", pid=os.getpid(), state="up",
        up_since=time.time() - 60, interface="lo", local_address="192.168.77.1",
        remote_address="192.168.77.2", remote_interface="ppp3", ssh_rtt=0.004,
        state_since=1700000000.0, reconnects=1,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def test_status_prometheus_reads_the_kernel_counters(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the state file and sysfs (lo here): counters, rtt, reconnects; exit 0 even when
    a site is not up (that is pppssh_up's business); --format json carries the same."""
    write_state(up_state())
    write_state(up_state("site-c", state="reconnecting", interface=None, ssh_rtt=0.5))
    assert main(["status", "--format", "prometheus"]) == 0
    families = parse(capsys.readouterr().out)
    rx = int(Path("/sys/class/net/lo/statistics/rx_packets").read_text())
    ((labels, packets),) = families["pppssh_receive_packets_total"][1]
    assert labels == {"site": "site-b", "interface": "lo"} and 0 < packets <= rx
    assert families["pppssh_up"][1] == [({"site": "site-b"}, 1), ({"site": "site-c"}, 0)]
    # the RTT of a link that is not up is not shown, though the file still had one
    assert families["pppssh_ssh_keepalive_rtt_seconds"][1] == [({"site": "site-b"}, 0.004)]
    assert families["pppssh_reconnects_total"][1][0] == ({"site": "site-b"}, 1)
    assert main(["status", "--format", "json", "site-b"]) == 0
    site = json.loads(capsys.readouterr().out)["sites"][0]
    assert site["ssh_rtt"] == 0.004 and site["state_since"] == 1700000000.0
    assert isinstance(site["packets_out"], int) and site["packets_out"] > 0


def test_a_dead_daemon_is_down_without_counters() -> None:
    """A state file whose pid is gone: up 0, state dead, no counters, no RTT."""
    families = parse(render([site_status(up_state(pid=2**22 + 1))]))
    assert families["pppssh_up"][1] == [({"site": "site-b"}, 0)]
    assert ({"site": "site-b", "state": "dead"}, 1) in families["pppssh_state"][1]
    assert families["pppssh_receive_bytes_total"][1] == []
    assert families["pppssh_ssh_keepalive_rtt_seconds"][1] == []


@pytest.mark.parametrize("how", ["symlink", "owner", "group-writable", "other-site"])
def test_untrusted_state_files_are_left_out_and_counted(
    run_dir: Path, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state file that is a link to a user's file, not root's, writable by group, or
    recording another site's name (two series for one site) is left out, said on stderr and counted; the
    others are still there."""
    write_state(up_state())
    bad = run_dir / "site-x.json"
    if how == "symlink":
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps({**up_state("site-x").__dict__}))
        os.chown(elsewhere, 1000, 1000)  # a user's file, behind root's link
        bad.symlink_to(elsewhere)
    else:
        write_state(up_state("site-x"))
        if how == "owner":
            os.chown(bad, 1000, 1000)
        elif how == "group-writable":
            bad.chmod(0o660)
        else:
            data = json.loads(bad.read_text())
            data["site"] = "site-b"
            bad.write_text(json.dumps(data))
    assert main(["status", "--format", "prometheus"]) == 0
    out, err = capsys.readouterr()
    families = parse(out)
    assert families["pppssh_up"][1] == [({"site": "site-b"}, 1)]
    assert families["pppssh_state_files_refused"][1] == [({}, 1)]
    assert err.startswith("pppssh: status: left out: state file ") and err.count("\n") == 1
    assert main(["status"]) == 3  # the table's LSB status: not all is well


def test_output_file_is_replaced_atomically(run_dir: Path, tmp_path: Path) -> None:
    """--output: the file is replaced whole (a new inode, 0644 whatever the umask), nothing
    else is left in the directory, a link at its name is replaced, never followed."""
    write_state(up_state())
    collector = tmp_path / "node-exporter"
    collector.mkdir()
    prom = collector / "pppssh.prom"
    prom.write_text("old\n")
    before = prom.stat().st_ino
    old_umask = os.umask(0o077)
    try:
        assert main(["status", "--format", "prometheus", "--output", str(prom)]) == 0
    finally:
        os.umask(old_umask)
    assert prom.stat().st_ino != before and prom.stat().st_mode & 0o777 == 0o644
    assert "pppssh_up" in parse(prom.read_text())
    assert sorted(p.name for p in collector.iterdir()) == ["pppssh.prom"]
    target = tmp_path / "target"
    target.write_text("root's file\n")
    prom.unlink()
    prom.symlink_to(target)
    write_atomically(str(prom), "x 1\n")
    assert target.read_text() == "root's file\n" and not prom.is_symlink()
    assert prom.read_text() == "x 1\n"


def test_output_errors_and_usage(run_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A missing directory is one line, exit 1; --output without prometheus and --json
    with another format are usage errors (exit 2)."""
    missing = tmp_path / "nowhere" / "pppssh.prom"
    assert main(["status", "--format", "prometheus", "--output", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"pppssh: status: cannot write {missing}: No such file or directory\n"
    )
    assert main(["status", "--output", str(tmp_path / "x.prom")]) == 2
    assert main(["status", "--json", "--format", "prometheus"]) == 2
    assert not (tmp_path / "x.prom").exists()


def test_status_as_a_user_is_refused_for_metrics_too(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user the 0750 run directory keeps out hears so, for each format: no empty metrics
    that would read as "nothing runs"."""
    write_state(up_state())
    os.seteuid(65534)
    try:
        status = main(["status", "--format", "prometheus"])
        named = main(["status", "--format", "prometheus", "site-b"])
    finally:
        os.seteuid(0)
    out, err = capsys.readouterr()
    assert (status, named, out) == (1, 1, "")
    assert err.count("the state files are root's alone") == 2


# ---------------------------------------------------------------- the state file's side


def test_state_reporter_keeps_the_rtt_and_the_time_of_each_change() -> None:
    """KeepaliveRtt is written; the time of the last state change moves only when the
    state does; a link that goes down has no RTT any more."""
    now = [1000.0]
    written: list[State] = []
    state = State(site="site-b", config="c", pid=1)
    reporter = StateReporter(state, lambda s: written.append(State(**s.__dict__)), lambda: now[0])
    reporter.report(Up(1000.0))
    assert (state.state, state.state_since) == ("up", 1000.0)
    now[0] = 1010.0
    reporter.report(KeepaliveRtt(0.01234567))
    assert (state.ssh_rtt, state.state_since) == (0.012346, 1000.0)
    assert written[-1].ssh_rtt == 0.012346
    now[0] = 1020.0
    reporter.report(LinkDown("SSH connection lost", reconnecting=True))
    assert (state.state, state.state_since, state.ssh_rtt) == ("reconnecting", 1020.0, None)
    now[0] = 1030.0
    reporter.report(Reconnecting("site-b", 5.0, "link down"))
    assert (state.reconnects, state.state_since) == (1, 1020.0)  # still reconnecting


class _StopAfter(Reporter):
    """Stops the site at the n-th KeepaliveRtt, noting the state file's RTT each time."""

    def __init__(self, n: int, stop: object, state: State) -> None:
        """Nothing seen yet."""
        self.n, self.stop, self.state = n, stop, state
        self.seen: list[float | None] = []

    def report(self, event: Event) -> None:
        """Count, note, stop."""
        if isinstance(event, KeepaliveRtt):
            self.seen.append(self.state.ssh_rtt)
            if len(self.seen) == self.n:
                self.stop()  # type: ignore[operator]


def test_the_link_measures_the_keepalive_rtt_every_interval() -> None:
    """Once up, the attempt times a keepalive at once and then every keepalive_interval,
    each written to the state file; a teardown clears it."""
    h = harness(stop_when_up=False)
    h.world.rtts = [0.012, None, 0.034]  # None: no answer (the connection went)
    watcher = _StopAfter(2, h.world.stop, h.state)
    h.supervisor.reporter.reporters.append(watcher)  # type: ignore[attr-defined]
    assert h.run() == 0
    assert watcher.seen == [0.012, 0.034]
    # keepalive_interval after each probe (the unanswered one too), until the stop landed
    assert h.clock.sleeps == [10, 10, 10]
    assert h.state.ssh_rtt is None and h.state.state == "stopping"


def test_no_keepalive_no_rtt() -> None:
    """keepalive_interval = 0: no keepalive is sent, so none is timed."""
    h = harness(stop_when_up=False, keepalive_interval=0)
    h.world.rtts = [0.012]
    h.recorder.on_ready = h.world.stop
    assert h.run() == 0
    assert h.world.rtts == [0.012] and not any(
        isinstance(e, KeepaliveRtt) for e in h.recorder.events
    )


# ---------------------------------------------------------------- through asyncssh


def test_round_trip_of_a_real_keepalive(tmp_path: Path) -> None:
    """Against the in-process SSH server: a keepalive's round trip is a time, and none once
    the connection is closed (asyncssh's own answer then is no measurement)."""

    async def main() -> None:
        async with SSHTestServer(tmp_path) as srv:
            conn, _ = await connect(srv.cfg())
            try:
                first = await compat.global_request_round_trip(conn)
                assert first is not None and 0 < first < 20
                pending = asyncio.ensure_future(compat.global_request_round_trip(conn))
                conn.close()
                assert await pending is None
                assert await compat.global_request_round_trip(conn) is None
            finally:
                conn.close()
                await conn.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))
