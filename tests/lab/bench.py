"""Throughput benchmark, run inside the lab kernel: bare WAN veth, the HOWTO's way, pppssh.

From the host: `bash scripts/bench.sh [--time S] [--repeats N]`, which runs
`python3 -m tests.lab run -- python3 -m tests.lab.bench` (one UML boot, one lab, three paths):

  veth    iperf3 gw-a -> gw-b straight across the WAN veth (198.51.100.0/24): the ceiling
  HOWTO   pppd on gw-a with `pty "ssh ... sudo -n pppd ..."` (OpenSSH, the VPN PPP-SSH HOWTO),
          routes added by hand; iperf3 ws-a -> ws-b
  pppssh  `python3 -m pppssh start site-b.conf` on gw-a; iperf3 ws-a -> ws-b; `pppssh stop`

Each path gets N iperf3 runs of S seconds (TCP, one stream, first second omitted); the median
counts. UML makes every absolute number slow: only the ratios within one run mean anything.
Between paths the lab must be as built (no pppd, no ppp interface, no extra route).
Exit status: 0 when every path was measured, 1 when one could not be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.lab.netlab import (
    GW_B_WAN,
    NET_A,
    NET_B,
    PPP_LOCAL,
    PPP_REMOTE,
    WS_B,
    CommandError,
    Lab,
    LabError,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("PPPSSH_LAB_RESULTS") or tempfile.gettempdir())
PPPSSH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
STATE_DIR = Path("/run/pppssh")
SITE = "site-b"
MTU = 1400  # pppssh's default mtu and mru: the HOWTO path gets the same
IPERF_PORT = 5201
UP_TIMEOUT = 90.0  # seconds for a tunnel to come up (UML is slow: ssh alone takes ~5 s)


class BenchError(RuntimeError):
    """A path could not be brought up or measured; the message says why."""


@dataclass(frozen=True)
class Ends:
    """Where iperf3 runs for one path: client namespace, server namespace, server address."""

    client: str
    server: str
    addr: str


@dataclass
class Result:
    """One path's outcome: iperf3 runs in Mbit/s, seconds to come up, what went wrong."""

    name: str
    runs: list[float] = field(default_factory=list)
    up: float | None = None
    error: str | None = None
    left: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """Median of the runs, None when there are none."""
        return statistics.median(self.runs) if self.runs else None


PathSetup = Callable[[Lab], AbstractContextManager[Ends]]


# --- the three paths ------------------------------------------------------------------------


@contextlib.contextmanager
def veth(lab: Lab) -> Iterator[Ends]:
    """The bare WAN link: gw-a to gw-b, nothing to set up."""
    yield Ends("gw-a", "gw-b", GW_B_WAN)


def _ppp_up(lab: Lab) -> bool:
    """Tell whether both gateways have a ppp interface with its peer address (IPCP up)."""
    a, b = lab.ppp_links("gw-a"), lab.ppp_links("gw-b")
    return any(link["peer"] == PPP_REMOTE for link in a) and any(
        link["peer"] == PPP_LOCAL for link in b
    )


def _wait_across(lab: Lab, what: str) -> None:
    """Wait until ws-a pings ws-b through the tunnel; raise BenchError if it never does."""
    if not wait_for(lambda: lab.ping("ws-a", WS_B), timeout=20, interval=0.2):
        raise BenchError(f"{what}: ws-a cannot ping ws-b with the link up")


def _log(name: str) -> IO[str]:
    """Open a fresh log file in the results folder."""
    return (RESULTS / f"bench-{name}.log").open("w")


def howto_commands(lab: Lab) -> list[str]:
    """argv of gw-a's pppd, VPN PPP-SSH HOWTO style: OpenSSH runs the remote pppd on a pty."""
    options = ["mtu", str(MTU), "mru", str(MTU), "noccp"]
    remote = shlex.join(
        ["sudo", "-n", "/usr/sbin/pppd", "nodetach", "noauth", "local",
         f"{PPP_REMOTE}:{PPP_LOCAL}", *options]
    )  # fmt: skip
    ssh = [
        "ssh", "-i", str(lab.key),
        "-o", f"UserKnownHostsFile={lab.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-e", "none",  # no ~ escapes: 0x7e is PPP's frame flag
        "-t", "-t", f"{lab.user}@{GW_B_WAN}", f"stty raw -echo; exec {remote}",
    ]  # fmt: skip
    return ["/usr/sbin/pppd", "nodetach", "noauth", "local", f"{PPP_LOCAL}:{PPP_REMOTE}",
            *options, "pty", shlex.join(ssh)]  # fmt: skip


@contextlib.contextmanager
def howto(lab: Lab) -> Iterator[Ends]:
    """pppd over OpenSSH as the HOWTO does it, routes by hand; SIGTERM to pppd tears it down."""
    remote_ip = ["sudo", "-n", "/usr/sbin/ip", "route"]
    routes = [
        ("gw-a", ["ip", "route"], [NET_B, "via", PPP_REMOTE], None),
        ("gw-b", remote_ip, [NET_A, "via", PPP_LOCAL], lab.user),
    ]
    with _log("howto-pppd") as log:
        pppd = lab.spawn("gw-a", howto_commands(lab), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT)  # fmt: skip
        added: list[tuple[str, list[str], list[str], str | None]] = []
        try:

            def up() -> bool:
                """Tell whether the link is up; raise if the local pppd gave up."""
                if pppd.poll() is not None:
                    raise BenchError(f"HOWTO: pppd exited {pppd.returncode}; see {log.name}")
                return _ppp_up(lab)

            if not wait_for(up, timeout=UP_TIMEOUT, interval=0.3):
                raise BenchError(f"HOWTO: no link within {UP_TIMEOUT:g} s; see {log.name}")
            for ns, ip, route, user in routes:
                lab.run(ns, [*ip, "add", *route], user=user)
                added.append((ns, ip, route, user))
            _wait_across(lab, "HOWTO")
            yield Ends("ws-a", "ws-b", WS_B)
        finally:
            for ns, ip, route, user in reversed(added):
                lab.run(ns, [*ip, "del", *route], user=user, check=False)
            if pppd.poll() is None:
                pppd.terminate()  # LCP Terminate to the peer; ssh ends, the remote pppd too
                try:
                    pppd.wait(30)
                except subprocess.TimeoutExpired:
                    pppd.kill()
                    pppd.wait()


def _pppssh(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python3 -m pppssh ARGS` on gw-a as root, the way an admin would."""
    argv = [sys.executable, "-m", "pppssh", *args]
    return lab.run("gw-a", argv, check=False, timeout=UP_TIMEOUT + 60, env=PPPSSH_ENV)


@contextlib.contextmanager
def pppssh(lab: Lab) -> Iterator[Ends]:
    """pppssh start on gw-a with the lab's site file; pppssh stop afterwards."""
    conf = lab.write_site_conf(SITE)
    with _log("pppssh") as log:
        ok = False
        try:
            started = _pppssh(lab, "start", str(conf))
            log.write(f"$ pppssh start {conf}\n{started.stdout}{started.stderr}")
            if started.returncode:
                tail = (started.stderr or started.stdout).strip().splitlines()[-1:]
                raise BenchError(f"pppssh start exited {started.returncode}: {' '.join(tail)}")
            if not wait_for(lambda: _ppp_up(lab), timeout=UP_TIMEOUT, interval=0.3):
                raise BenchError("pppssh: start returned but the link is not up")
            _wait_across(lab, "pppssh")
            yield Ends("ws-a", "ws-b", WS_B)
            ok = True
        finally:
            stopped = _pppssh(lab, "stop", SITE)
            log.write(f"$ pppssh stop {SITE}\n{stopped.stdout}{stopped.stderr}")
            daemon_log = STATE_DIR / f"{SITE}.log"
            if daemon_log.exists() and not (ok and stopped.returncode == 0):
                log.write(f"--- {daemon_log}\n{daemon_log.read_text(errors='replace')}")
            if stopped.returncode:
                raise BenchError(f"pppssh stop exited {stopped.returncode}; see {log.name}")


PATHS: dict[str, PathSetup] = {
    "veth gw-a -> gw-b": veth,
    "HOWTO pppd+ssh": howto,
    "pppssh": pppssh,
}


# --- measuring ------------------------------------------------------------------------------


def iperf3(lab: Lab, ends: Ends, seconds: int, repeats: int) -> list[float]:
    """Run an iperf3 server and `repeats` client runs; return each run's Mbit/s received."""
    server = lab.spawn(ends.server, ["iperf3", "-s", "-B", ends.addr, "-p", str(IPERF_PORT)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def listening() -> bool:
            """Tell whether the server listens (raise if it died)."""
            if server.poll() is not None:
                raise BenchError(f"iperf3 server in {ends.server} exited {server.returncode}")
            ss = lab.run(ends.server, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"])
            return ends.addr in ss.stdout

        if not wait_for(listening, timeout=20):
            raise BenchError(f"iperf3 server does not listen on {ends.addr}:{IPERF_PORT}")
        runs = []
        argv = ["iperf3", "-c", ends.addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
                "-J"]  # fmt: skip
        for i in range(repeats):
            proc = lab.run(ends.client, argv, check=False, timeout=seconds + 60)
            try:
                report = json.loads(proc.stdout)
                mbit = report["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError, TypeError):
                why = proc.stderr.strip() or proc.stdout.strip()[-300:]
                raise BenchError(f"iperf3 run {i + 1} exited {proc.returncode}: {why}") from None
            print(f"  run {i + 1}/{repeats}: {mbit:.1f} Mbit/s", flush=True)
            runs.append(mbit)
        return runs
    finally:
        server.terminate()
        server.wait(10)


def leftovers(lab: Lab) -> list[str]:
    """The lab's leftovers plus any pppssh state file."""
    return lab.leftovers() + [f"state file {p}" for p in STATE_DIR.glob("*.json")]


def measure(lab: Lab, name: str, path: PathSetup, seconds: int, repeats: int) -> Result:
    """Bring one path up, measure it, tear it down, and check the lab is as built again."""
    print(f"\n### {name}", flush=True)
    result = Result(name)
    start = time.monotonic()
    try:
        with path(lab) as ends:
            result.up = time.monotonic() - start
            print(f"  up in {result.up:.1f} s; iperf3 {ends.client} -> {ends.server} "
                  f"{ends.addr}, {repeats} x {seconds} s", flush=True)  # fmt: skip
            result.runs = iperf3(lab, ends, seconds, repeats)
    except (BenchError, CommandError, LabError, subprocess.TimeoutExpired) as exc:
        result.error = str(exc).strip()
        print(f"  FAILED: {result.error}", flush=True)
    if not wait_for(lambda: not leftovers(lab), timeout=30, interval=0.5):
        result.left = leftovers(lab)
        print(f"  LEFT BEHIND: {'; '.join(result.left)}", flush=True)
        lab.reset()
    return result


# --- reporting ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    """a / b to three significant digits, or '-' when either is missing."""
    return f"{a / b:.3g}" if a and b else "-"


def table(results: list[Result]) -> str:
    """The results as a text table, followed by the two ratios that matter."""
    by_name = {r.name: r.median for r in results}
    veth_m, howto_m, ours = (by_name.get(name) for name in PATHS)
    rows = [("path", "median Mbit/s", "runs (Mbit/s)", "up in", "/ veth", "/ HOWTO")]
    for r in results:
        rows.append((
            r.name,
            f"{r.median:.1f}" if r.median is not None else "FAILED",
            " ".join(f"{x:.1f}" for x in r.runs) or "-",
            f"{r.up:.1f} s" if r.up is not None else "-",
            _ratio(r.median, veth_m),
            _ratio(r.median, howto_m),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 1 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"pppssh / HOWTO = {_ratio(ours, howto_m)}")
    lines.append(f"pppssh / veth  = {_ratio(ours, veth_m)}")
    for r in results:
        if r.error:
            lines.append(f"{r.name}: not measured: {r.error}")
        if r.left:
            lines.append(f"{r.name}: left behind: {'; '.join(r.left)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the lab, measure the three paths in turn, print the table."""
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.lab.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--time", type=int, default=8, help="seconds per iperf3 run (8)")
    parser.add_argument("--repeats", type=int, default=3, help="iperf3 runs per path (3)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with Lab() as lab:
        print(f"lab built in {time.monotonic() - start:.1f} s; logs in {RESULTS}", flush=True)
        results = [measure(lab, name, path, args.time, args.repeats)
                   for name, path in PATHS.items()]  # fmt: skip
    text = table(results) + f"\n\nbenchmark took {time.monotonic() - start:.0f} s inside UML"
    print(f"\n{text}", flush=True)
    (RESULTS / "bench.txt").write_text(text + "\n")
    return 0 if all(r.median is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
