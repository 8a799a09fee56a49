"""Lab tests (@pytest.mark.lab) need a kernel with PPP: run them here if it has one, else in UML.

Here (root, and /dev/ppp or inside the UML lab): lab tests run as usual, with a session-wide
`lab` fixture (tests/lab/netlab.py) and, after each one, a check that it left no pppd, no
ppp interface and no route behind (the lab is reset and the test fails if it did).

On a host without PPP: each selected lab test is replaced by a stand-in. The first stand-in
to run boots UML and runs all selected lab tests there with pytest; each stand-in then
passes if its test passed inside, and fails with the inner failure text otherwise (failed,
error, skipped or missing alike). Results and the UML console log go to lab-results/.
The tests are split into $PPPSSH_LAB_SHARDS shards (default: 2 where there are 2 CPUs or
more), each test module whole in one (tests/lab/shards.py), and the shards boot side by side.
Lab tests marked `uml_systemd` need systemd as PID 1: they get a UML boot of their own, in
uml.py's systemd mode (lab-results/systemd-pytest-*), alongside the others.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab import shards, uml
from tests.lab.netlab import Lab

IN_UML = os.environ.get("PPPSSH_IN_UML") == "1"
HAVE_PPP = (os.path.exists("/dev/ppp") or IN_UML) and os.geteuid() == 0
SYSTEMD_MARK = "uml_systemd"


@dataclass
class UmlRun:
    """What one UML run of this session gave: per-test outcomes, or why there are none."""

    nodeids: list[str]
    mode: str = "sh"
    shard: str = ""  # "1/2" when the mode's tests are split, else ""
    tests: dict[str, dict[str, str]] = field(default_factory=dict)
    error: str = ""
    console: Path | None = None
    status: int | None = None
    seconds: float = 0.0
    done: bool = False


_UML_RUN = pytest.StashKey[dict[str, UmlRun]]()  # boot mode (and shard) -> its run


def shard_count() -> int:
    """How many UML boots share the lab tests of the plain boot mode ($PPPSSH_LAB_SHARDS)."""
    value = os.environ.get("PPPSSH_LAB_SHARDS", "")
    if not value:
        return 2 if (os.cpu_count() or 1) >= 2 else 1
    if not value.isdigit() or not 1 <= int(value) <= 8:
        raise pytest.UsageError(f"PPPSSH_LAB_SHARDS must be a number from 1 to 8, not {value!r}")
    return int(value)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker of lab tests that need systemd as PID 1."""
    config.addinivalue_line(
        "markers", f"{SYSTEMD_MARK}: a lab test that needs systemd as PID 1 (a UML boot of its own)"
    )


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """State files in a private folder (root's, 0750, as /run/pppssh)."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o750)
    monkeypatch.setenv("PPPSSH_RUN_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def trusted_top(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Anchor pppssh's trust checks (trust.TOP) at this test's own directory.

    pppssh trusts a site file, and the files it names, only in directories no one but root
    can write, up from `/`; /tmp (mode 1777) rightly fails that. Each test's tmp_path is
    root's, mode 0755, and becomes the top of the check: directories above it are taken as
    trusted, everything from it down is checked as on a gateway. Files a test writes there
    (as root, umask 022) pass; a test that wants a refusal chowns or chmods them.
    """
    from pppssh import trust

    tmp_path.chmod(0o755)
    monkeypatch.setattr(trust, "TOP", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """Give the lab, built once for the session and torn down at its end."""
    if not HAVE_PPP:
        pytest.fail("the lab needs root and a kernel with PPP (lab tests go to UML otherwise)")
    with Lab() as built:
        yield built


@pytest.fixture(autouse=True)
def _lab_left_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each lab test: restore sudoers; fail if pppd, ppp links or routes were left."""
    built: Lab | None = None
    if HAVE_PPP and request.node.get_closest_marker("lab"):
        built = request.getfixturevalue("lab")
    yield
    if built is None:
        return
    found = built.reset()
    if IN_UML:  # nothing else runs pppd in the lab kernel: look outside the namespaces too
        found += [f"pppd pid {pid} outside the namespaces" for pid in built.pids(None, "pppd")]
        found += [f"ppp link {x['name']} outside the namespaces" for x in built.ppp_links(None)]
    if found:
        pytest.fail("the test left the lab dirty (reset now): " + "; ".join(found), pytrace=False)


class UmlLabItem(pytest.Item):
    """Stand-in for a lab test on a host without PPP: its outcome is the one it had in UML."""

    def __init__(self, *, original: pytest.Item, mode: str, **kwargs: object) -> None:
        """Copy the original test's markers and location; mode is the UML boot it needs."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.original = original
        self.mode = mode
        self.run_key = mode  # the UML run it is in (the mode, and its shard once split)
        self.own_markers.extend(original.own_markers)
        self.keywords.update(original.keywords)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        """Report the original test's file and line."""
        return self.original.reportinfo()

    def runtest(self) -> None:
        """Fail unless this test passed in the session's UML run (booted on first use)."""
        run = _uml_run(self.config, self.run_key)
        where = f"\nUML console log: {run.console}" if run.console else ""
        if run.error:
            pytest.fail(f"lab tests could not run in UML: {run.error}{where}", pytrace=False)
        entry = run.tests.get(self.nodeid)
        if entry is None:
            why = f"no result from UML for this test (inner pytest status {run.status})"
            pytest.fail(why + where, pytrace=False)
        if entry["outcome"] != "passed":
            why = f"inside UML this test {entry['outcome']}:\n{entry['text']}"
            pytest.fail(why + where, pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a host without PPP, replace the selected lab tests by stand-ins that ask UML."""
    if HAVE_PPP:
        return
    stand_ins = {
        i: UmlLabItem.from_parent(
            item.parent,
            name=item.name,
            original=item,
            mode="systemd" if item.get_closest_marker(SYSTEMD_MARK) else "sh",
        )
        for i, item in enumerate(items)
        if item.get_closest_marker("lab") and item.parent is not None
    }
    items[:] = [stand_ins.get(i, item) for i, item in enumerate(items)]
    by_mode: dict[str, list[str]] = {}
    for s in stand_ins.values():
        by_mode.setdefault(s.mode, []).append(s.nodeid)
    runs: dict[str, UmlRun] = {}
    key_of: dict[str, str] = {}
    for mode, nodeids in by_mode.items():
        parts = shards.split(nodeids, shard_count() if mode == "sh" else 1)
        for i, part in enumerate(parts, 1):
            key = mode if len(parts) == 1 else f"{mode}/{i}"
            shard = "" if len(parts) == 1 else f"{i}/{len(parts)}"
            runs[key] = UmlRun(nodeids=part, mode=mode, shard=shard)
            key_of.update(dict.fromkeys(part, key))
    for s in stand_ins.values():
        s.run_key = key_of[s.nodeid]
    config.stash[_UML_RUN] = runs


def _uml_run(config: pytest.Config, key: str) -> UmlRun:
    """On the first call, boot every UML run of the session side by side (each mode, each
    shard) and wait for all; return what the run `key` gave."""
    runs = config.stash[_UML_RUN]
    if not runs[key].done:
        threads = [
            threading.Thread(target=_boot_run, args=(config, run), name=f"uml {k}")
            for k, run in runs.items()
            if not run.done
        ]
        for run in runs.values():
            run.done = True
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return runs[key]


def _describe(run: UmlRun) -> str:
    """' (shard 1/2)', ' (systemd as PID 1)' or '' for a run's lines."""
    what = [] if run.mode == "sh" else [f"{run.mode} as PID 1"]
    what += [f"shard {run.shard}"] if run.shard else []
    return f" ({', '.join(what)})" if what else ""


def _boot_run(config: pytest.Config, run: UmlRun) -> None:
    """Run one UML boot's lab tests and keep what it gave in run (in its own thread)."""
    try:
        _boot(config, run)
    except Exception as e:  # a thread's exception would be lost
        run.error = run.error or f"{type(e).__name__}: {e}"


def _boot(config: pytest.Config, run: UmlRun) -> None:
    """Run one UML boot's lab tests and keep what it gave in run."""
    mode = run.mode
    if uml.find_kernel() is None:
        run.error = f"linux.uml not found; {uml.INSTALL_HINT}"
        return
    kind = "pytest" if mode == "sh" else f"{mode}-pytest"
    shard = f"-shard{run.shard.replace('/', 'of')}" if run.shard else ""
    results = uml.results_dir(kind, suffix=shard)
    run.console = results / "console.log"
    report = results / "report.json"
    # --basetemp under /run (root's, 0755, a tmpfs of the run): pppssh, started by the lab
    # tests as a real process, trusts hook programs and keys in tmp_path only there, not in /tmp.
    # -m lab: pyproject's default `-m "not lab"` would deselect every one of them inside.
    argv = [sys.executable, "-m", "pytest", "-m", "lab", "-p", "no:cacheprovider",
            "-p", "tests.lab.report", "--color=no", "--basetemp=/run/pppssh-pytest",
            "--durations=40",  # the console log names the slowest lab tests
            "-v" if config.get_verbosity() > 0 else "-q", *run.nodeids]  # fmt: skip
    _say(config, f"lab: running {len(run.nodeids)} lab tests in UML{_describe(run)}; "
         f"console: {run.console}")  # fmt: skip
    start = time.monotonic()
    try:
        run.status = uml.boot(
            argv,
            results=results,
            timeout=float(os.environ.get("PPPSSH_LAB_TIMEOUT", "2700")),
            env={"PPPSSH_LAB_REPORT": str(report)},
            console=run.console,
            mode=mode,
        )
    except uml.UmlError as e:
        run.error = str(e)
    run.seconds = time.monotonic() - start
    if report.exists():
        run.tests = json.loads(report.read_text())["tests"]
    elif not run.error:
        run.error = f"inner pytest exited {run.status} without writing {report}"


_SAY = threading.Lock()  # the UML runs' threads take turns on the terminal


def _say(config: pytest.Config, line: str) -> None:
    """Print a line on the terminal even while output is captured."""
    with _SAY:
        _say_now(config, line)


def _say_now(config: pytest.Config, line: str) -> None:
    """Print a line on the terminal even while output is captured (the caller holds _SAY)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say where the lab tests ran and where the UML console log is."""
    for run in config.stash.get(_UML_RUN, {}).values():
        what = _describe(run)
        if run.done and run.error:
            terminalreporter.write_line(f"lab: lab tests could not run in UML{what}: {run.error}")
        elif run.done:
            terminalreporter.write_line(
                f"lab: {len(run.nodeids)} lab tests ran in UML{what} in {run.seconds:.0f} s "
                f"(inner pytest status {run.status}); console: {run.console}"
            )
