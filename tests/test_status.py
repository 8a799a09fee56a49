"""pppssh status: rendering, counters from sysfs, LSB exit codes (no root, no link needed)."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pppssh import system
from pppssh.cli import main
from pppssh.ledger import filter_entry, route_entry
from pppssh.plan import Command, RouteChange
from pppssh.status import render_table, site_status
from pppssh.system import SiteLock, State, create_file, write_state


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """State files in a private folder."""
    monkeypatch.setenv("PPPSSH_RUN_DIR", str(tmp_path))
    return tmp_path


RULE = ("ip", "-4", "rule", "add", "iif", "ppp0", "priority", "5001", "prohibit")
RULE_DEL = ("ip", "-4", "rule", "del", "iif", "ppp0", "priority", "5001", "prohibit")


def route(prefix: tuple[str, ...], net: str, via: str, dev: str) -> RouteChange:
    """A route change as plan.py makes them."""
    tail = (net, "via", via, "dev", dev)
    return RouteChange(
        ipaddress.IPv4Network(net),
        Command((*prefix, "route", "add", *tail)),
        Command((*prefix, "route", "del", *tail)),
    )


def up_state(**changes: object) -> State:
    """A site that is up, held by this very process (so its pid is alive)."""
    state = State(
        site="site-b", config="/etc/pppssh/site-b.conf", pid=os.getpid(), state="up",
        up_since=time.time() - 125, interface="lo", remote_interface="ppp3",
        local_address="192.168.77.1", remote_address="192.168.77.2",
    )  # fmt: skip
    state.set_ledger([
        filter_entry("only the local networks", Command(RULE), Command(RULE_DEL)).to_json(),
        route_entry("local", route(("ip",), "10.2.0.0/24", "192.168.77.2", "ppp0")).to_json(),
        route_entry(
            "remote", route(("sudo", "-n", "/usr/sbin/ip"), "10.1.0.0/24", "192.168.77.1", "ppp3")
        ).to_json(),
    ])  # fmt: skip
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def test_site_status_reads_interface_counters() -> None:
    """bytes in/out come from /sys/class/net/IF/statistics (lo here)."""
    row = site_status(up_state())
    rx = int(Path("/sys/class/net/lo/statistics/rx_bytes").read_text())
    assert isinstance(row["bytes_in"], int) and 0 <= rx - row["bytes_in"] < 10**6
    assert row["state"] == "up" and 124 < row["uptime"] < 130


def test_dead_daemon_is_reported_dead() -> None:
    """A state file whose pid is gone: state dead, no counters."""
    row = site_status(up_state(pid=2**22 + 1))
    assert row["state"] == "dead" and row["bytes_in"] is None and row["uptime"] is None


def test_table_layout() -> None:
    """One aligned line per site, then its routes on both sides."""
    row = site_status(up_state(), now=None)
    row.update(bytes_in=1234, bytes_out=5 * 1024 * 1024, uptime=3725.0, reconnects=2,
               last_error="link down: SSH connection lost")  # fmt: skip
    lines = render_table([row]).splitlines()
    assert lines[0].split() == ["SITE", "STATE", "PID", "LINK", "UPTIME", "RECEIVED", "SENT",
                                "RECONNECTS", "LAST", "ERROR"]  # fmt: skip
    assert lines[1].split()[:2] == ["site-b", "up"]
    assert "lo 192.168.77.1 -> 192.168.77.2 (ppp3 there)" in lines[1]
    assert "1h02m05s" in lines[1] and "1.2 KiB" in lines[1] and "5.0 MiB" in lines[1]
    assert lines[1].endswith("2           link down: SSH connection lost")
    assert lines[0].index("LINK") == lines[1].index("lo 192")
    assert lines[2] == "site-b routes here: 10.2.0.0/24 via 192.168.77.2 dev ppp0"
    assert lines[3] == "site-b routes there: 10.1.0.0/24 via 192.168.77.1 dev ppp3"


@pytest.mark.parametrize(
    ("state", "names", "status"),
    [("up", [], 0), ("up", ["site-b"], 0), ("reconnecting", [], 3), ("starting", ["site-b"], 3),
     (None, [], 3), (None, ["site-b"], 3), ("up", ["site-b", "site-c"], 3)],
)  # fmt: skip
def test_exit_codes(
    state: str | None, names: list[str], status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """0 when every named (or running) site is up, 3 when one is not (LSB)."""
    if state is not None:
        write_state(up_state(state=state))
    assert main(["status", *names]) == status
    out = capsys.readouterr().out
    if "site-c" in names:
        assert "site-c: not running" in out
    if state is None and not names:
        assert out == "no site is running\n"


def test_stale_state_is_lsb_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Dead daemon, state file left: LSB 1."""
    write_state(up_state(pid=2**22 + 1))
    assert main(["status", "site-b"]) == 1
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["site-b", "dead"]


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json carries every field for machines."""
    write_state(up_state())
    assert main(["status", "--json"]) == 0
    site = json.loads(capsys.readouterr().out)["sites"][0]
    assert site["site"] == "site-b" and site["interface"] == "lo" and site["reconnects"] == 0
    assert site["remote_routes"] == [
        "sudo -n /usr/sbin/ip route add 10.1.0.0/24 via 192.168.77.1 dev ppp3"
    ]
    assert site["local_routes"] == ["ip route add 10.2.0.0/24 via 192.168.77.2 dev ppp0"]
    assert site["routes_here"] == ["10.2.0.0/24 via 192.168.77.2 dev ppp0"]


def test_state_file_views_are_written_from_the_ledger(run_dir: Path) -> None:
    """The state file's local_routes/remote_routes/local_filter lists are the ledger's apply
    commands, for scripts that read them; the ledger itself is there whole."""
    write_state(up_state())
    data = json.loads((run_dir / "site-b.json").read_text())
    assert data["local_routes"] == ["ip route add 10.2.0.0/24 via 192.168.77.2 dev ppp0"]
    assert data["remote_routes"] == [
        "sudo -n /usr/sbin/ip route add 10.1.0.0/24 via 192.168.77.1 dev ppp3"
    ]
    assert data["local_filter"] == ["ip -4 rule add iif ppp0 priority 5001 prohibit"]
    assert [e["kind"] for e in data["ledger"]] == ["filter", "route", "route"]
    assert data["ledger"][1]["undo"] == [
        "ip", "route", "del", "10.2.0.0/24", "via", "192.168.77.2", "dev", "ppp0"
    ]  # fmt: skip


def test_stop_not_running_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop of a site that is not running: a message and exit 0; what a dead pppssh left
    (its state file says) is undone. Commands are recorded here, not run on this host."""
    ran: list[tuple[str, ...]] = []

    def run_local(command: Command, show: bool = True) -> str:
        """Recorded, not run."""
        ran.append(command.argv)
        return ""

    monkeypatch.setattr(system, "run_local", run_local)
    assert main(["stop", "site-b"]) == 0
    assert capsys.readouterr().out == "pppssh: site 'site-b' is not running\n"
    assert ran == []
    write_state(up_state(pid=2**22 + 1))
    assert main(["stop", "site-b"]) == 0
    out = capsys.readouterr().out
    assert "an earlier pppssh (pid 4194305) ended without its teardown" in out
    assert "was not running (undid what it left)" in out
    assert ran == [("ip", "route", "del", "10.2.0.0/24", "via", "192.168.77.2", "dev", "ppp0"),
                   RULE_DEL]  # fmt: skip
    assert "[#] ip route del 10.2.0.0/24 via 192.168.77.2 dev ppp0\n" in out
    assert main(["status", "site-b"]) == 3


def test_run_local_returns_stdout_and_explains_failures() -> None:
    from pppssh.plan import Command
    from pppssh.system import CommandFailed, run_local

    assert run_local(Command(("printf", "%s\\n", "a b"))) == "a b\n"
    with pytest.raises(CommandFailed, match=r"`sh -c 'echo no >&2; exit 3'` failed: no$") as info:
        run_local(Command(("sh", "-c", "echo no >&2; exit 3")))
    assert info.value.status == 3
    with pytest.raises(CommandFailed, match="pppssh-no-such-program: not found"):
        run_local(Command(("pppssh-no-such-program",)))


# ---------------------------------------------------------------------------- file modes


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0 while the test runs: the modes must come from pppssh, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """Permission bits of path."""
    return path.stat().st_mode & 0o7777


def test_state_log_and_lock_are_not_world_readable(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    """Run directory 0750, state file, lock and log 0640, whatever the umask."""
    where = run_dir / "pppssh"
    monkeypatch.setenv("PPPSSH_RUN_DIR", str(where))
    write_state(up_state())
    assert (mode(where), mode(where / "site-b.json")) == (0o750, 0o640)
    stale = where / "site-b.tmp"
    stale.write_text("{}")
    stale.chmod(0o666)  # a leftover temporary file, world-writable: never reused as it is
    write_state(up_state(state="reconnecting"))
    assert mode(where / "site-b.json") == 0o640 and not stale.exists()
    lock = SiteLock("site-b")
    assert lock.acquire()
    try:
        assert mode(where / "site-b.lock") == 0o640
    finally:
        lock.release()
    fd = create_file(where / "site-b.log", os.O_EXCL)
    os.close(fd)
    assert mode(where / "site-b.log") == 0o640


def test_state_files_never_follow_a_symbolic_link(run_dir: Path) -> None:
    """A link where a state file's temporary goes is replaced, its target left alone."""
    target = run_dir / "elsewhere"
    target.write_text("root's file\n")
    (run_dir / "site-b.tmp").symlink_to(target)
    write_state(up_state())
    assert target.read_text() == "root's file\n"
    assert json.loads((run_dir / "site-b.json").read_text())["site"] == "site-b"
    (run_dir / "x.log").symlink_to(target)
    with pytest.raises(OSError):
        create_file(run_dir / "x.log")
    assert target.read_text() == "root's file\n"


def test_status_as_a_user_says_the_state_is_root_s(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user who may not read the run directory hears so; never "no site is running"."""
    write_state(up_state())
    os.seteuid(65534)
    try:
        status = main(["status"])
    finally:
        os.seteuid(0)
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err == (
        f"pppssh: status: cannot read {run_dir}: the state files are root's alone (a 0750 "
        "directory, 0640 files); run pppssh status as root\n"
    )
