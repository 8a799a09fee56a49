#!/usr/bin/python3
"""Lab only: a local pppd that loses LCP Echo-Requests when told to (the lab's `local_pppd`).

pppssh's path between the pppds is lossless (ptys, SSH over TCP), so an unanswered echo has to
be made: this program runs the real pppd on a pty of its own and relays between that pty and
the one pppssh gave it (its stdin), dropping echo requests pppd sends while `drop` (in CONTROL)
holds a count above zero. Each echo request is logged in `echoes` as `drop TIME` or
`pass TIME` (CLOCK_MONOTONIC). With `adaptive` present when it starts, `lcp-echo-adaptive` is
added to pppd's options: what pppssh passed every pppd before it knew of ppp-project #323.

The process pppssh started becomes the real pppd (same pid, so the pid file, pppssh's pid and
its signals all name pppd); a child of it relays and dies with it. `--version` goes straight
to pppd.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import tty
from pathlib import Path

PPPD = "/usr/sbin/pppd"
CONTROL = Path("/run/lcpdrop")
FLAG = 0x7E
ESCAPE = 0x7D
PR_SET_PDEATHSIG = 1


def write_all(fd: int, data: bytes) -> None:
    """Write all of data to a blocking fd."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_echo_request(frame: bytes) -> bool:
    """Whether an HDLC-like frame (between flags, still escaped) is an LCP Echo-Request."""
    if b"\xc0\x21" not in frame[:8]:  # neither 0xc0 nor 0x21 is ever escaped by pppd here
        return False
    head = bytearray()
    i = 0
    while i < len(frame) and len(head) < 5:
        if frame[i] == ESCAPE and i + 1 < len(frame):
            head.append(frame[i + 1] ^ 0x20)
            i += 2
        else:
            head.append(frame[i])
            i += 1
    if head[:2] == b"\xff\x03":  # address and control, unless compressed away
        head = head[2:]
    return bytes(head[:3]) == b"\xc0\x21\x09"


def take_drop() -> bool:
    """Use up one of the drops asked for in CONTROL/drop; whether there was one."""
    path = CONTROL / "drop"
    try:
        left = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if left <= 0:
        return False
    path.write_text(f"{left - 1}\n")
    return True


def log_echo(what: str) -> None:
    """Append one line for an echo request to CONTROL/echoes."""
    with (CONTROL / "echoes").open("a") as f:
        f.write(f"{what} {time.monotonic():.3f}\n")


def to_peer(master: int) -> None:
    """pppd's frames to pppssh's pty, echo requests dropped as asked."""
    held = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        *frames, held = (held + data).split(bytes([FLAG]))
        out = bytearray()
        for frame in frames:
            if frame and is_echo_request(frame):
                dropped = take_drop()
                log_echo("drop" if dropped else "pass")
                if dropped:
                    continue
            out += frame
            out.append(FLAG)
        if out:
            write_all(1, bytes(out))


def to_pppd(master: int) -> None:
    """pppssh's bytes to pppd, unchanged."""
    while True:
        try:
            data = os.read(0, 65536)
        except OSError:
            return
        if not data:
            return
        write_all(master, data)


def relay(master: int, argv: list[str]) -> None:
    """The child: relay both ways until either side closes, then exit."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if "logfd" in argv:  # pppssh reads pppd's log until EOF: hold no copy of its pipe
        os.close(int(argv[argv.index("logfd") + 1]))
    threading.Thread(target=to_pppd, args=(master,), daemon=True).start()
    to_peer(master)
    os._exit(0)


def main() -> None:
    """Become pppd on a pty of its own, a relaying child between it and stdin."""
    argv = sys.argv[1:]
    if "--version" in argv:
        os.execv(PPPD, [PPPD, *argv])
    if (CONTROL / "adaptive").exists() and "lcp-echo-failure" in argv:
        at = argv.index("lcp-echo-failure") + 2
        argv[at:at] = ["lcp-echo-adaptive"]
    tty.setraw(0)  # pppd sets up its own tty; this one is the relay's
    master, slave = os.openpty()
    if os.fork() == 0:
        os.close(slave)
        relay(master, argv)
    os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    os.execv(PPPD, [PPPD, *argv])


if __name__ == "__main__":
    main()
