"""The lab's command line: `python3 -m tests.lab shell-check`, `python3 -m tests.lab run -- CMD`.

shell-check  build the lab (in UML when this kernel has no PPP), print what it is, tear down
run -- CMD   boot UML and run CMD in it as root, from the repository; exit with CMD's status
             (--systemd: systemd 252 is PID 1 and a unit runs CMD)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from tests.lab import uml
from tests.lab.netlab import GW_A_LAN, GW_B_LAN, GW_B_WAN, NAMESPACES, WS_B, Lab


def have_ppp() -> bool:
    """Tell whether this kernel has PPP and we are root, so the lab can run right here."""
    return os.path.exists("/dev/ppp") and os.geteuid() == 0


def in_uml(argv: list[str], kind: str, timeout: float, mem: str = "1G", mode: str = "sh") -> int:
    """Run argv inside UML, echo its console, keep the log in lab-results; return its status."""
    results = uml.results_dir(kind)
    console = results / "console.log"
    print(f"lab: booting UML; console log: {console}", file=sys.stderr)
    start = time.monotonic()
    try:
        status = uml.boot(
            argv, results=results, timeout=timeout, console=console, echo=True, mem=mem, mode=mode
        )
    except uml.UmlError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 125
    took = time.monotonic() - start
    print(f"lab: UML run took {took:.1f} s, status {status}", file=sys.stderr)
    return status


def shell_check() -> int:
    """Build the lab here, print its facts and checks, tear it down; 0 if all checks pass."""
    failures = 0

    def check(what: str, ok: bool) -> None:
        """Print one check's outcome and count failures."""
        nonlocal failures
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")

    start = time.monotonic()
    with Lab() as lab:
        print(f"lab built in {time.monotonic() - start:.1f} s; lab dir {lab.dir}")
        for ns in NAMESPACES:
            print(f"[{lab.ns(ns)}]")
            for line in lab.run(ns, ["ip", "-br", "-4", "addr"]).stdout.splitlines():
                print(f"  addr   {line}")
            for line in lab.routes(ns):
                print(f"  route  {line}")
        print("[gw-b sshd]")
        for line in lab.run("gw-b", ["ss", "-Hltnp", "sport = :22"]).stdout.splitlines():
            print(f"  listen {' '.join(line.split())}")
        print("[checks]")
        check("ws-a pings gw-a", lab.ping("ws-a", GW_A_LAN))
        check("gw-a pings gw-b over the WAN", lab.ping("gw-a", GW_B_WAN))
        check("ws-b pings gw-b", lab.ping("ws-b", GW_B_LAN))
        check("ws-a cannot ping ws-b (no tunnel)", not lab.ping("ws-a", WS_B, wait=1))
        ssh = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-i", str(lab.key), f"{lab.user}@{GW_B_WAN}", "id -un"]  # fmt: skip
        t = time.monotonic()
        good = lab.run("gw-a", [*ssh[:7], "-o", f"UserKnownHostsFile={lab.known_hosts}", *ssh[7:]],
                       check=False)  # fmt: skip
        check(
            f"ssh from gw-a as {lab.user} with host key checking ({time.monotonic() - t:.1f} s)",
            good.returncode == 0 and good.stdout.strip() == lab.user,
        )
        bad = lab.run("gw-a", [*ssh[:7], "-o", "UserKnownHostsFile=/dev/null", *ssh[7:]],
                      check=False)  # fmt: skip
        check("ssh refused with an empty known_hosts", bad.returncode == 255)
        for what, ok in lab.sudo_check().items():
            check(what, ok)
        check("/dev/ppp exists", os.path.exists("/dev/ppp"))
    print("lab torn down" + ("" if not failures else f"; {failures} checks FAILED"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the verb."""
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--timeout", type=float, default=1800, help="UML time limit, seconds")
    parser.add_argument("--mem", default="1G", help="UML memory, e.g. 4G (default 1G)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("shell-check", help="build the lab, print its facts, tear it down")
    run = verbs.add_parser("run", help="run CMD inside UML (after --)")
    run.add_argument("--systemd", action="store_true", help="boot with systemd as PID 1")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.verb == "shell-check":
        if have_ppp():
            return shell_check()
        return in_uml([sys.executable, "-m", "tests.lab", "shell-check"], "shell-check",
                      args.timeout)  # fmt: skip
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run needs a command: python3 -m tests.lab run -- CMD ...")
    return in_uml(cmd, "run", args.timeout, args.mem, "systemd" if args.systemd else "sh")


if __name__ == "__main__":
    sys.exit(main())
