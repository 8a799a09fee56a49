"""pppssh beside the C path, in the lab kernel: same topology, same non-root account.

From the host: `bash scripts/bench.sh` (or `python3 -m tests.lab run -- python3 -m bench.lab`):

  HOWTO   pppd on gw-a with `pty "ssh ... sudo -n pppd ..."` (OpenSSH carries the PPP stream,
          as in the VPN PPP-SSH HOWTO); the route on gw-a by hand, the one on gw-b over a
          second `ssh ... sudo ip route add`, as the HOWTO's script does
  pppssh  `python3 -m pppssh start site-b.conf` on gw-a ... `pppssh stop`
  veth    (once, for scale) iperf3 gw-a -> gw-b straight across the WAN veth

Per round and path: time from the command to routes on both sides; iperf3 TCP ws-a -> ws-b
and back (-R); ping RTT ws-a -> ws-b idle and under an iperf3 load (avg, p99); CPU seconds
of the orchestrator (the pppssh daemon, or the ssh client) per GB moved by iperf3; its peak
RSS (VmHWM). Rounds alternate the order of the paths; medians are reported with the ratios
pppssh / HOWTO, as a table and as JSON (bench-lab.json in the results folder). UML makes
every absolute number slow: only ratios within one run mean anything.
Exit status: 0 when both paths were measured in every round, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
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

REPO = Path(__file__).resolve().parents[1]
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
    """One path, up: iperf3 client and server namespaces, server address, when the routes
    were in place (monotonic), and the orchestrator's pid (None for the bare veth)."""

    client: str
    server: str
    addr: str
    up: float = 0.0
    orchestrator: int | None = None


def _child_of(pid: int, parent: int) -> bool:
    """Tell whether pid descends from parent (pppd runs its pty command through sh)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == parent:
            return True
    return False


@dataclass
class Sample:
    """One round of one path."""

    path: str
    up_seconds: float | None = None
    mbit_up: float | None = None
    mbit_down: float | None = None
    rtt_idle_avg: float | None = None
    rtt_idle_p99: float | None = None
    rtt_load_avg: float | None = None
    rtt_load_p99: float | None = None
    cpu_s_per_gb: float | None = None
    rss_mb: float | None = None
    error: str | None = None
    left: list[str] = field(default_factory=list)


METRICS = (  # (field, label, unit, better: "high" or "low")
    ("mbit_up", "throughput ws-a -> ws-b", "Mbit/s", "high"),
    ("mbit_down", "throughput ws-b -> ws-a", "Mbit/s", "high"),
    ("rtt_idle_avg", "RTT idle, avg", "ms", "low"),
    ("rtt_idle_p99", "RTT idle, p99", "ms", "low"),
    ("rtt_load_avg", "RTT under load, avg", "ms", "low"),
    ("rtt_load_p99", "RTT under load, p99", "ms", "low"),
    ("up_seconds", "command to routes on both sides", "s", "low"),
    ("cpu_s_per_gb", "orchestrator CPU per GB moved", "s/GB", "low"),
    ("rss_mb", "orchestrator peak RSS", "MB", "low"),
)


PathSetup = Callable[[Lab], AbstractContextManager[Ends]]


# --- the three paths ------------------------------------------------------------------------


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


def howto_ssh(lab: Lab) -> list[str]:
    """The OpenSSH client of the HOWTO path, its options in one place: the lab's key, strict
    host key checking, no prompts (pppssh's own path connects with ssh.connect)."""
    return [
        "ssh", "-i", str(lab.key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
    ]  # fmt: skip


def howto_commands(lab: Lab) -> list[str]:
    """argv of gw-a's pppd, VPN PPP-SSH HOWTO style: OpenSSH runs the remote pppd on a pty."""
    options = ["mtu", str(MTU), "mru", str(MTU), "noccp"]
    remote = shlex.join(
        ["sudo", "-n", "/usr/sbin/pppd", "nodetach", "noauth", "local",
         f"{PPP_REMOTE}:{PPP_LOCAL}", *options]
    )  # fmt: skip
    ssh = [
        *howto_ssh(lab),
        "-e", "none",  # no ~ escapes: 0x7e is PPP's frame flag
        "-t", "-t", f"{lab.user}@{GW_B_WAN}", f"stty raw -echo; exec {remote}",
    ]  # fmt: skip
    return ["/usr/sbin/pppd", "nodetach", "noauth", "local", f"{PPP_LOCAL}:{PPP_REMOTE}",
            *options, "pty", shlex.join(ssh)]  # fmt: skip


# The HOWTO's own sudo rule for its account (pppd with any options, any route): what the C path
# needs, not what pppssh grants. Installed only while that path runs.
HOWTO_SUDOERS = (
    "{user} ALL=(root) NOPASSWD: /usr/sbin/pppd, "
    "/usr/sbin/ip route add *, /usr/sbin/ip route del *\n"
)


@contextlib.contextmanager
def howto(lab: Lab) -> Iterator[Ends]:
    """pppd over OpenSSH as the HOWTO does it, routes by hand; SIGTERM to pppd tears it down."""
    lab.set_sudoers(HOWTO_SUDOERS.format(user=lab.user))
    try:
        with _howto(lab) as ends:
            yield ends
    finally:
        lab.restore_sudoers()


@contextlib.contextmanager
def _howto(lab: Lab) -> Iterator[Ends]:
    """The HOWTO path itself, with its sudo rule in place."""
    ssh = [*howto_ssh(lab), f"{lab.user}@{GW_B_WAN}", "sudo", "-n", "/usr/sbin/ip", "route"]
    routes = [
        ("gw-a", ["ip", "route"], [NET_B, "via", PPP_REMOTE], None),
        ("gw-a", ssh, [NET_A, "via", PPP_LOCAL], None),  # the remote route, over ssh
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
            routed = time.monotonic()
            _wait_across(lab, "HOWTO")
            ssh_pids = [pid for pid in lab.pids("gw-a", "ssh") if _child_of(pid, pppd.pid)]
            yield Ends("ws-a", "ws-b", WS_B, routed, ssh_pids[0] if ssh_pids else None)
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


def pppssh_with(keys: dict[str, str]) -> PathSetup:
    """The pppssh path with these keys set in its site file (a lever to try): [remote]
    keys by name, others as section.key."""

    def setup(lab: Lab) -> AbstractContextManager[Ends]:
        """pppssh with the keys."""
        return pppssh(lab, keys)

    return setup


@contextlib.contextmanager
def pppssh(lab: Lab, keys: dict[str, str] | None = None) -> Iterator[Ends]:
    """pppssh start on gw-a with the lab's site file (plus [remote] keys); pppssh stop
    afterwards."""
    sections: dict[str, dict[str, str]] = {}
    for key, value in (keys or {}).items():  # `section.key` for a key outside [remote]
        section, _, name = key.rpartition(".")
        sections.setdefault(section or "remote", {})[name] = value
    conf = lab.write_site_conf(SITE, sections or None)
    with _log("pppssh") as log:
        ok = False
        try:
            started = _pppssh(lab, "start", str(conf))
            log.write(f"$ pppssh start {conf}\n{started.stdout}{started.stderr}")
            if started.returncode:
                tail = (started.stderr or started.stdout).strip().splitlines()[-1:]
                raise BenchError(f"pppssh start exited {started.returncode}: {' '.join(tail)}")
            routed = time.monotonic()  # start returns once routes are in place on both sides
            if not wait_for(lambda: _ppp_up(lab), timeout=UP_TIMEOUT, interval=0.3):
                raise BenchError("pppssh: start returned but the link is not up")
            _wait_across(lab, "pppssh")
            state = json.loads((STATE_DIR / f"{SITE}.json").read_text())
            yield Ends("ws-a", "ws-b", WS_B, routed, int(state["pid"]))
            ok = True
        finally:
            with contextlib.suppress(OSError):  # what the levers applied, for the record
                said = (STATE_DIR / f"{SITE}.log").read_text(errors="replace").splitlines()
                for line in (line for line in said if "SSH socket:" in line):
                    log.write(line + "\n")
                    print(f"  {keys or 'defaults'}: {line.split('SSH socket:', 1)[1].strip()}",
                          flush=True)  # fmt: skip
                way_down = ("the SSH connection sends with", "keeps the remote's congestion")
                for line in (line for line in said if any(w in line for w in way_down)):
                    log.write(line + "\n")  # the remote sshd's socket (tcp_congestion_down)
                    print(f"  {keys or 'defaults'}: way down: {line.split(' ', 1)[-1]}",
                          flush=True)  # fmt: skip
            # held open: a clean stop removes the log, after its last lines (the pump's)
            try:
                said_file: IO[str] | None = (STATE_DIR / f"{SITE}.log").open(errors="replace")
            except OSError:
                said_file = None
            stopped = _pppssh(lab, "stop", SITE)
            log.write(f"$ pppssh stop {SITE}\n{stopped.stdout}{stopped.stderr}")
            if said_file is not None:
                with said_file:
                    for line in said_file.read().splitlines():
                        if "delay control:" in line:  # what the pump's delay control saw
                            log.write(line + "\n")
                            print(f"  {keys or 'defaults'}: {line.split('control:', 1)[1]}")
            daemon_log = STATE_DIR / f"{SITE}.log"
            if daemon_log.exists() and not (ok and stopped.returncode == 0):
                log.write(f"--- {daemon_log}\n{daemon_log.read_text(errors='replace')}")
            if stopped.returncode:
                raise BenchError(f"pppssh stop exited {stopped.returncode}; see {log.name}")


# --- measuring ------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile by the nearest-rank method (p99 of 50 pings: the 50th)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ping_rtts(output: str) -> list[float]:
    """The time=X ms of every reply in ping's output."""
    return [float(m) for m in re.findall(r"time=([0-9.]+) ms", output)]


def iperf_mbit(output: str) -> tuple[float, int]:
    """(Mbit/s received, bytes received) from iperf3 -J output."""
    report = json.loads(output)
    received = report["end"]["sum_received"]
    return received["bits_per_second"] / 1e6, int(received["bytes"])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise BenchError(f"no VmHWM for pid {pid}")


@contextlib.contextmanager
def iperf_server(lab: Lab, ns: str, addr: str) -> Iterator[None]:
    """An iperf3 server in ns on addr, for the duration."""
    server = lab.spawn(ns, ["iperf3", "-s", "-B", addr, "-p", str(IPERF_PORT)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def listening() -> bool:
            """Tell whether the server listens (raise if it died)."""
            if server.poll() is not None:
                raise BenchError(f"iperf3 server in {ns} exited {server.returncode}")
            return addr in lab.run(ns, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout

        if not wait_for(listening, timeout=20):
            raise BenchError(f"iperf3 server does not listen on {addr}:{IPERF_PORT}")
        yield
    finally:
        server.terminate()
        server.wait(10)


def iperf(lab: Lab, ends: Ends, seconds: int, reverse: bool = False) -> tuple[float, int]:
    """One iperf3 run (first second omitted): (Mbit/s, bytes)."""
    argv = ["iperf3", "-c", ends.addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
            "-J", *(["-R"] if reverse else [])]  # fmt: skip
    proc = lab.run(ends.client, argv, check=False, timeout=seconds + 60)
    try:
        return iperf_mbit(proc.stdout)
    except (ValueError, KeyError, TypeError):
        why = proc.stderr.strip() or proc.stdout.strip()[-300:]
        raise BenchError(f"iperf3 exited {proc.returncode}: {why}") from None


def ping(lab: Lab, ends: Ends, count: int) -> list[float]:
    """RTTs of count pings from the client side to the server address, 0.1 s apart."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.1", "-W", "2", ends.addr]
    rtts = ping_rtts(lab.run(ends.client, argv, check=False, timeout=count + 30).stdout)
    if len(rtts) < count // 2:
        raise BenchError(f"ping: only {len(rtts)} of {count} replies")
    return rtts


def measure(lab: Lab, name: str, path: PathSetup, seconds: int, pings: int) -> Sample:
    """Bring one path up, measure everything, tear it down, check the lab is as built."""
    print(f"\n### {name}", flush=True)
    sample = Sample(name)
    start = time.monotonic()
    try:
        with path(lab) as ends:
            sample.up_seconds = ends.up - start if ends.up else None
            with iperf_server(lab, ends.server, ends.addr):
                idle = ping(lab, ends, pings)
                sample.rtt_idle_avg = statistics.fmean(idle)
                sample.rtt_idle_p99 = percentile(idle, 99)
                cpu0 = cpu_seconds(ends.orchestrator) if ends.orchestrator else 0.0
                sample.mbit_up, moved_up = iperf(lab, ends, seconds)
                sample.mbit_down, moved_down = iperf(lab, ends, seconds, reverse=True)
                if ends.orchestrator:
                    cpu = cpu_seconds(ends.orchestrator) - cpu0
                    sample.cpu_s_per_gb = cpu / ((moved_up + moved_down) / 1e9)
                load = lab.spawn(ends.client, ["iperf3", "-c", ends.addr, "-p", str(IPERF_PORT),
                                               "-t", str(seconds + 2)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                time.sleep(1.5)
                loaded = ping(lab, ends, pings)
                load.wait(seconds + 30)
                sample.rtt_load_avg = statistics.fmean(loaded)
                sample.rtt_load_p99 = percentile(loaded, 99)
            if ends.orchestrator:
                sample.rss_mb = peak_rss_mb(ends.orchestrator)
        shown = {k: round(v, 2) for k, v in asdict(sample).items()
                 if isinstance(v, float)}  # fmt: skip
        print(f"  {shown}", flush=True)
    except (BenchError, CommandError, LabError, subprocess.TimeoutExpired, OSError) as exc:
        sample.error = str(exc).strip()
        print(f"  FAILED: {sample.error}", flush=True)
    if not wait_for(lambda: not leftovers(lab), timeout=30, interval=0.5):
        sample.left = leftovers(lab)
        print(f"  LEFT BEHIND: {'; '.join(sample.left)}", flush=True)
        lab.reset()
    return sample


def leftovers(lab: Lab) -> list[str]:
    """The lab's leftovers plus any pppssh state file."""
    return lab.leftovers() + [f"state file {p}" for p in STATE_DIR.glob("*.json")]


# --- reporting ------------------------------------------------------------------------------


def medians(samples: list[Sample], path: str) -> dict[str, float | None]:
    """The median of every metric over the rounds of one path that measured it."""
    out: dict[str, float | None] = {}
    for key, *_ in METRICS:
        values = [getattr(s, key) for s in samples if s.path == path]
        values = [v for v in values if v is not None]
        out[key] = statistics.median(values) if values else None
    return out


def summary(samples: list[Sample]) -> dict[str, object]:
    """Medians per path and the ratios pppssh / HOWTO."""
    ours, theirs = medians(samples, "pppssh"), medians(samples, "HOWTO")
    ratios: dict[str, float | None] = {}
    for key in ours:
        mine, other = ours[key], theirs[key]
        ratios[key] = mine / other if mine is not None and other else None
    return {"pppssh": ours, "HOWTO": theirs, "ratio": ratios}


def table(result: dict[str, object], veth_mbit: float | None) -> str:
    """The medians and ratios as a text table."""
    ours = result["pppssh"]
    theirs = result["HOWTO"]
    ratio = result["ratio"]
    assert isinstance(ours, dict) and isinstance(theirs, dict) and isinstance(ratio, dict)

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"

    rows = [("metric (median)", "unit", "HOWTO (C)", "pppssh", "pppssh / HOWTO")]
    for key, label, unit, _ in METRICS:
        rows.append((label, unit, cell(theirs[key]), cell(ours[key]),
                     "-" if ratio[key] is None else f"{ratio[key]:.2f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    if veth_mbit:
        lines.append(f"(bare WAN veth, same kernel: {veth_mbit:.0f} Mbit/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the lab, measure both paths in alternating rounds, print and save the result."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path (3)")
    parser.add_argument("--time", type=int, default=6, help="seconds per iperf3 run (6)")
    parser.add_argument("--pings", type=int, default=50, help="pings per RTT sample (50)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    samples: list[Sample] = []
    with Lab() as lab:
        print(f"lab built in {time.monotonic() - start:.1f} s; logs in {RESULTS}", flush=True)
        veth_sample = Sample("veth")
        with iperf_server(lab, "gw-b", GW_B_WAN):
            veth_sample.mbit_up, _ = iperf(lab, Ends("gw-a", "gw-b", GW_B_WAN), args.time)
        for rnd in range(args.rounds):
            order = [("HOWTO", howto), ("pppssh", pppssh)]
            for name, path in order if rnd % 2 == 0 else order[::-1]:
                samples.append(measure(lab, name, path, args.time, args.pings))
    result = summary(samples)
    text = table(result, veth_sample.mbit_up)
    took = time.monotonic() - start
    print(f"\n{args.rounds} rounds, alternating; medians\n{text}\n\nbenchmark took {took:.0f} s "
          "inside UML", flush=True)  # fmt: skip
    data = {"rounds": args.rounds, "iperf_seconds": args.time, "pings": args.pings,
            "veth_mbit": veth_sample.mbit_up, **result,
            "samples": [asdict(s) for s in samples]}  # fmt: skip
    (RESULTS / "bench-lab.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "bench-lab.txt").write_text(text + "\n")
    failed = [s for s in samples if s.error or s.left]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
