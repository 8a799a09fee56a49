"""The demo, run inside the lab kernel: start a real tunnel, show status, ping across, stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.lab.netlab import WS_A, WS_B, Lab

REPO = Path(__file__).resolve().parents[2]


def step(lab: Lab, title: str, ns: str, argv: list[str]) -> int:
    """Print a heading and the command, run it with its output shown live."""
    print(f"\n### {title}\n$ ip netns exec {ns} {' '.join(argv)}", flush=True)
    proc = subprocess.run(
        lab.command(ns, argv),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)},
        check=False,
    )
    return proc.returncode


def main() -> int:
    """Build the lab, run pppssh through its paces, report."""
    pppssh = [sys.executable, "-m", "pppssh"]
    with Lab() as lab:
        conf = lab.write_site_conf("site-b")
        print("### the site file on gw-a\n" + conf.read_text(), end="", flush=True)
        failures = []
        if step(lab, "before: ws-a cannot reach ws-b", "ws-a", ["ping", "-c1", "-W1", WS_B]) == 0:
            failures.append("ws-a reached ws-b before the tunnel existed")
        if step(lab, "start the tunnel on gw-a", "gw-a", [*pppssh, "start", str(conf)]):
            return 1
        if step(lab, "status", "gw-a", [*pppssh, "status"]):
            failures.append("status did not report the site up")
        if step(lab, "ping across: ws-a -> ws-b", "ws-a", ["ping", "-c3", "-i0.3", WS_B]):
            failures.append("ws-a could not ping ws-b")
        if step(lab, "and back: ws-b -> ws-a", "ws-b", ["ping", "-c3", "-i0.3", WS_A]):
            failures.append("ws-b could not ping ws-a")
        step(lab, "routes on gw-b", "gw-b", ["ip", "route"])
        if step(lab, "stop", "gw-a", [*pppssh, "stop", "site-b"]):
            failures.append("stop failed")
        left = lab.leftovers()
        if left:
            failures.append(f"left behind: {left}")
        print("\n### result: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
