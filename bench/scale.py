"""Scale, in the lab kernel: one hub gateway (gw-a) with 4, 8, 16 and 32 tunnels at once.

From the host: `bash scripts/bench.sh` runs it after bench.lab, or on its own:
`python3 -m tests.lab --mem 4G run -- python3 -m bench.scale [--steps 4,8,16,32]`.

For each step N: N spoke gateways (own namespace, WAN veth to gw-a, own sshd, the same
non-root account), N site files; all N `pppssh start` commands are launched together and the
time until the last one has returned (every link up, routes on both sides) is the start
time. Memory once all are up: the pppssh daemons' RSS (VmRSS), summed and per tunnel; their
PSS per tunnel (shared library pages split among the daemons); the largest peak RSS (VmHWM).
Then `pppssh stop --all`, and the hub must be as built (no pppd, no ppp link, no route).
Prints a table and writes bench-scale.json to the results folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.lab.netlab import Lab, wait_for

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("PPPSSH_LAB_RESULTS") or tempfile.gettempdir())
STATE_DIR = Path("/run/pppssh")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# dozens of Python daemons logging in at once in one UML kernel: generous limits
TIMEOUTS = {"remote_connect_timeout": 300, "ppp_up_timeout": 900}


@dataclass
class Step:
    """One step: N tunnels started together."""

    tunnels: int
    start_seconds: float = 0.0
    failed: int = 0
    rss_total_mb: float = 0.0
    rss_per_tunnel_mb: float = 0.0
    pss_per_tunnel_mb: float = 0.0  # shared pages split between the daemons sharing them
    hwm_max_mb: float = 0.0  # the largest peak RSS (VmHWM) of one daemon
    stop_seconds: float = 0.0
    left: int = 0


def _kb_field(path: str, field: str) -> float:
    """A `Field:  N kB` line of a /proc file, in MB (10^6 bytes); 0 if it is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """VmRSS of a process."""
    return _kb_field(f"/proc/{pid}/status", "VmRSS")


def hwm_mb(pid: int) -> float:
    """VmHWM (peak RSS) of a process."""
    return _kb_field(f"/proc/{pid}/status", "VmHWM")


def pss_mb(pid: int) -> float:
    """Proportional set size: each shared page counted once across the processes sharing it."""
    return _kb_field(f"/proc/{pid}/smaps_rollup", "Pss")


def run_step(lab: Lab, n: int) -> Step:
    """Start n sites together, measure, stop them all."""
    step = Step(n)
    while len(lab.spokes) < n:
        lab.add_spoke(len(lab.spokes) + 1, workstation=False)
    confs = [lab.spoke_site_conf(sp, **TIMEOUTS) for sp in lab.spokes[:n]]
    routes_before = set(lab.routes("gw-a"))  # the spokes' WAN routes included
    argv = [sys.executable, "-m", "pppssh", "start"]
    start = time.monotonic()
    procs = [
        subprocess.Popen(lab.command("gw-a", [*argv, str(conf)]), env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for conf in confs
    ]  # fmt: skip
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    step.start_seconds = time.monotonic() - start
    step.failed = sum(1 for p in procs if p.returncode != 0)
    for conf, proc, out in zip(confs, procs, outputs, strict=True):
        if proc.returncode:
            print(f"  {conf.stem}: start exited {proc.returncode}: {out.strip()[-300:]}")
    pids = []
    for path in STATE_DIR.glob("*.json"):
        try:
            pids.append(int(json.loads(path.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    rss = [rss_mb(pid) for pid in pids]
    step.rss_total_mb = sum(rss)
    step.rss_per_tunnel_mb = statistics.fmean(rss) if rss else 0.0
    step.pss_per_tunnel_mb = statistics.fmean(pss_mb(p) for p in pids) if pids else 0.0
    step.hwm_max_mb = max((hwm_mb(p) for p in pids), default=0.0)
    t = time.monotonic()
    lab.run("gw-a", [*argv[:-1], "stop", "--all"], check=False, timeout=1800, env=ENV)
    step.stop_seconds = time.monotonic() - t
    wait_for(lambda: not lab.ppp_links("gw-a") and not lab.pids("gw-a", "pppd"), timeout=60)
    step.left = len(lab.ppp_links("gw-a")) + len(lab.pids("gw-a", "pppd"))
    step.left += len([r for r in lab.routes("gw-a") if r not in routes_before])
    step.left += len(list(STATE_DIR.glob("*.json")))
    print(f"  {asdict(step)}", flush=True)
    return step


def main(argv: list[str] | None = None) -> int:
    """Build the hub, run each step, print the table."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", default="4,8,16,32", help="tunnel counts (4,8,16,32)")
    args = parser.parse_args(argv)
    steps = [int(x) for x in args.steps.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    with Lab() as lab:
        for n in steps:
            print(f"\n### {n} tunnels", flush=True)
            results.append(run_step(lab, n))
    lines = ["tunnels  start (all up)  per tunnel  RSS sum  RSS/tunnel  PSS/tunnel  peak RSS"
             "  stop --all  failed", "-" * 100]  # fmt: skip
    for s in results:
        per = s.start_seconds / s.tunnels
        lines.append(f"{s.tunnels:>7}  {s.start_seconds:>12.1f} s  {per:>8.2f} s"
                     f"  {s.rss_total_mb:>4.0f} MB  {s.rss_per_tunnel_mb:>7.1f} MB"
                     f"  {s.pss_per_tunnel_mb:>7.1f} MB  {s.hwm_max_mb:>5.1f} MB"
                     f"  {s.stop_seconds:>8.1f} s  {s.failed:>6}")  # fmt: skip
    text = "\n".join(lines)
    print(f"\n{text}", flush=True)
    (RESULTS / "bench-scale.json").write_text(
        json.dumps([asdict(s) for s in results], indent=2) + "\n"
    )
    (RESULTS / "bench-scale.txt").write_text(text + "\n")
    return 1 if any(s.failed or s.left for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
