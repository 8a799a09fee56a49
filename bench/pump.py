"""The pump alone, at native speed: bytes through one pty and one SSH channel.

    python3 -m bench.pump [--mib 256] [--rounds 5] [--json FILE]

No PPP is involved, so this runs on the host itself. A throw-away sshd listens on 127.0.0.1
(its own host key, its own authorized_keys, root by key only, gone afterwards); the far end
is a raw pty running `head -c N >/dev/null` (upstream) or `head -c N /dev/zero` (downstream),
exactly what sshd gives the remote pppd. The near end is a pty as well:

  pppssh   the Bridge of pppssh.bridge on the pty master, over asyncssh (this process);
           a separate writer (or reader) process on the slave plays the local pppd
  OpenSSH  `ssh -tt` with the pty slave as its terminal, as pppd's `pty "ssh ..."` runs it;
           the writer (or reader) works on the master

Both use the same cipher and start timing only when the far end has printed READY, so the
numbers are the pump's: MB/s, and CPU seconds of the pumping process (this process for
pppssh, the ssh client for OpenSSH) per GB moved. Rounds alternate; medians are reported with
the ratios pppssh / OpenSSH. Timings are only compared within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pppssh.config import SiteConfig, parse  # noqa: E402
from pppssh.ssh import CIPHERS, connect, open_bridge  # noqa: E402

CIPHER = CIPHERS[0]  # what pppssh negotiates first; OpenSSH is told to use the same
MIB = 1024 * 1024
READY = b"READY\n"
SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
StrictModes no
Ciphers {cipher}
"""
# The far end: raw mode is asked for by both clients; stty makes sure, then READY.
UP = "stty raw -echo 2>/dev/null; printf 'READY\\n'; exec head -c {n} >/dev/null"
DOWN = "stty raw -echo 2>/dev/null; printf 'READY\\n'; exec head -c {n} /dev/zero"
ECHO = "stty raw -echo 2>/dev/null; printf 'READY\\n'; exec cat"
FRAME = 84  # bytes per ping-pong frame: an idle ping's ICMP echo in a PPP frame, roughly
# Plays the local pppd: writes N bytes to fd F, or reads N bytes from it.
WRITER = (
    "import os,sys\n"
    "n,fd=int(sys.argv[1]),int(sys.argv[2]); b=os.urandom(1<<20); v=memoryview(b)\n"
    "while n>0:\n"
    "    n-=os.write(fd, v[:min(n, len(b))])\n"
)
READER = (
    "import os,sys\n"
    "n,fd=int(sys.argv[1]),int(sys.argv[2])\n"
    "while n>0:\n"
    "    d=os.read(fd, 1<<20)\n"
    "    if not d: sys.exit('short read: %d left' % n)\n"
    "    n-=len(d)\n"
)


PINGPONG = (
    "import os,sys,time\n"
    "n,fd,size=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); frame=os.urandom(size)\n"
    "out=[]\n"
    "for _ in range(n):\n"
    "    t=time.perf_counter(); os.write(fd, frame); got=0\n"
    "    while got<size: got+=len(os.read(fd, size-got))\n"
    "    out.append(time.perf_counter()-t)\n"
    "print(' '.join(map(repr, out)))\n"
)


def _pingpong(fd: int, count: int) -> list[float]:
    """In a process of its own (as the local pppd would be): send one frame, wait for all
    of it to come back; count times. RTTs in seconds."""
    out = subprocess.run(
        [sys.executable, "-c", PINGPONG, str(count), str(fd), str(FRAME)],
        pass_fds=(fd,), capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return [float(x) for x in out.stdout.split()]


def openssh_argv(port: int, d: Path, command: str) -> list[str]:
    """The OpenSSH client the pppssh side is compared with, in one place: no config file, a
    raw pty (`-tt`, no escapes), the cipher pppssh negotiates first, the throw-away key and
    strict host key checking (pppssh's own side connects with ssh.connect, as the lifecycle)."""
    return [
        "ssh", "-F", "/dev/null", "-tt", "-e", "none", "-q", "-p", str(port), "-c", CIPHER,
        "-i", str(d / "id_ed25519"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
        "root@127.0.0.1", command,
    ]  # fmt: skip


def rtt_openssh(port: int, d: Path, count: int) -> list[float]:
    """Frame RTTs through `ssh -tt -e none` to `cat` on the far pty."""
    master, slave = os.openpty()
    tty.setraw(slave)
    argv = openssh_argv(port, d, ECHO)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    try:
        _wait_ready(master)
        rtts = _pingpong(master, count)
    finally:
        proc.terminate()
        proc.wait()
        os.close(master)
    return rtts


async def _rtt_pppssh(port: int, d: Path, count: int) -> list[float]:
    """Frame RTTs through pppssh's Bridge to `cat` on the far pty."""
    master, slave = os.openpty()
    tty.setraw(slave)
    conn, _client = await connect(_site(port, d), username="root")  # as the lifecycle does
    async with conn:
        session = await open_bridge(conn, ECHO)  # as the lifecycle does
        session.attach(master)
        await asyncio.to_thread(_wait_ready, slave)
        rtts = await asyncio.to_thread(_pingpong, slave, count)
        session.close()
    session.detach()
    os.close(master)
    os.close(slave)
    return rtts


def _site(port: int, d: Path) -> SiteConfig:
    """A site for the throw-away sshd, so that pppssh connects with its own options (as root,
    the one account that sshd has: the site's user is only the default login)."""
    text = (
        f"[site]\nname = pump\n[remote]\nhost = 127.0.0.1\nport = {port}\nuser = pump\n"
        f"identity = {d / 'id_ed25519'}\nknown_hosts = {d / 'known_hosts'}\n"
        "[ppp]\nlocal_address = 192.168.77.1\nremote_address = 192.168.77.2\n"
    )
    return parse(text, d / "pump.conf")


def run_rtt(port: int, d: Path, count: int, rounds: int) -> list[dict[str, object]]:
    """Alternate the clients; median and p99 frame RTT in microseconds for each."""
    got: dict[str, list[float]] = {"pppssh": [], "OpenSSH": []}
    for rnd in range(rounds):
        for client in ("pppssh", "OpenSSH") if rnd % 2 == 0 else ("OpenSSH", "pppssh"):
            if client == "pppssh":
                rtts = asyncio.run(_rtt_pppssh(port, d, count))
            else:
                rtts = rtt_openssh(port, d, count)
            got[client] += rtts[count // 10 :]  # the first tenth warms up
    rows: list[dict[str, object]] = []
    for client, rtts in got.items():
        rtts.sort()
        rows.append(
            {
                "client": client,
                "median_us": round(statistics.median(rtts) * 1e6, 1),
                "p99_us": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e6, 1),
            }
        )
    return rows


@dataclass
class Sample:
    """One transfer."""

    client: str
    direction: str
    seconds: float
    cpu_seconds: float

    def mb_per_s(self, nbytes: int) -> float:
        """Throughput in MB/s (10^6 bytes)."""
        return nbytes / self.seconds / 1e6

    def cpu_per_gb(self, nbytes: int) -> float:
        """CPU seconds of the pumping process per GB (10^9 bytes)."""
        return self.cpu_seconds / (nbytes / 1e9)


@contextlib.contextmanager
def sshd() -> Iterator[tuple[int, Path]]:
    """A throw-away sshd on 127.0.0.1 that lets root in with a fresh key: (port, key file)."""
    if os.geteuid() != 0:
        raise SystemExit("bench.pump: run as root (the throw-away sshd lets root in by key)")
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        raise SystemExit("bench.pump: no sshd; apt-get install openssh-server")
    made_run_dir = not os.path.isdir("/run/sshd")
    # in /run, not /tmp: pppssh reads the key and known_hosts only from directories that
    # only root can write (pppssh.trust)
    with tempfile.TemporaryDirectory(prefix="pppssh-pump-", dir="/run") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o700)
        for name in ("host_key", "id_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
            )
        (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (d / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=d, cipher=CIPHER))
        (d / "known_hosts").write_text(
            f"[127.0.0.1]:{port} " + " ".join((d / "host_key.pub").read_text().split()[:2]) + "\n"
        )
        if made_run_dir:
            os.mkdir("/run/sshd", 0o755)
        proc = subprocess.Popen(
            [binary, "-D", "-e", "-f", str(d / "sshd_config")],
            stdin=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"bench.pump: sshd did not start: {(d / 'sshd.log').read_text()}"
                    )
                time.sleep(0.05)
            yield port, d
        finally:
            proc.terminate()
            proc.wait()
            if made_run_dir:
                with contextlib.suppress(OSError):
                    os.rmdir("/run/sshd")


def _wait_ready(fd: int) -> int:
    """Read the near end of the pty until the far end's READY line has come through; return
    how many bytes after it were read too (downstream data may follow at once)."""
    seen = b""
    deadline = time.monotonic() + 30
    while READY not in seen:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.pump: no READY from the far end, got {seen[-200:]!r}")
        seen += os.read(fd, 4096)
    return len(seen) - (seen.index(READY) + len(READY))


def _helper(code: str, fd: int, nbytes: int) -> subprocess.Popen[bytes]:
    """The writer or reader process on fd."""
    return subprocess.Popen([sys.executable, "-c", code, str(nbytes), str(fd)], pass_fds=(fd,))


def run_openssh(port: int, d: Path, direction: str, nbytes: int) -> Sample:
    """`ssh -tt -e none` on a pty slave; the writer/reader on the master. Without `-e none`
    a CR followed by ~C (or ~., ~^Z) in the stream is taken as an escape and the pump stalls."""
    master, slave = os.openpty()
    tty.setraw(slave)
    command = (UP if direction == "up" else DOWN).format(n=nbytes)
    argv = openssh_argv(port, d, command)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    try:
        early = _wait_ready(master)
        start = time.monotonic()
        helper = _helper(WRITER if direction == "up" else READER, master, nbytes - early)
        if helper.wait() != 0:
            raise SystemExit("bench.pump: the near end failed")
        if direction == "up":
            _, status, usage = os.wait4(proc.pid, 0)
        else:
            elapsed = time.monotonic() - start
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if direction == "up":
            elapsed = time.monotonic() - start
    finally:
        os.close(master)
    # ssh's own CPU for the whole session (login included, the same for both clients below)
    return Sample("OpenSSH", direction, elapsed, usage.ru_utime + usage.ru_stime)


async def _run_pppssh(port: int, d: Path, direction: str, nbytes: int) -> Sample:
    """pppssh's Bridge on the pty master; the writer/reader on the slave."""
    master, slave = os.openpty()
    tty.setraw(slave)
    command = (UP if direction == "up" else DOWN).format(n=nbytes)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    conn, _client = await connect(_site(port, d), username="root")  # as the lifecycle does
    async with conn:
        session = await open_bridge(conn, command)  # as the lifecycle does
        session.attach(master)
        early = await asyncio.to_thread(_wait_ready, slave)
        start = time.monotonic()
        helper = _helper(WRITER if direction == "up" else READER, slave, nbytes - early)
        if direction == "up":
            await session.closed
            elapsed = time.monotonic() - start
            await asyncio.to_thread(helper.wait)
        else:
            code = await asyncio.to_thread(helper.wait)
            elapsed = time.monotonic() - start
            if code != 0:
                raise SystemExit("bench.pump: the near end failed")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    session.detach()
    os.close(master)
    os.close(slave)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return Sample("pppssh", direction, elapsed, cpu)


def run_pppssh(port: int, d: Path, direction: str, nbytes: int) -> Sample:
    """Synchronous wrapper."""
    return asyncio.run(_run_pppssh(port, d, direction, nbytes))


def main(argv: list[str] | None = None) -> int:
    """Alternate the two clients for each direction; print medians and ratios."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.pump",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client (5)")
    parser.add_argument(
        "--frames",
        type=int,
        default=2000,
        help=f"{FRAME}-byte frames per round for the frame RTT (2000)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    nbytes = args.mib * MIB
    samples: list[Sample] = []
    with sshd() as (port, d):
        for rnd in range(args.rounds):
            for direction in ("up", "down"):
                order = (run_pppssh, run_openssh) if rnd % 2 == 0 else (run_openssh, run_pppssh)
                for run in order:
                    samples.append(run(port, d, direction, nbytes))
        frame_rtt = run_rtt(port, d, args.frames, args.rounds)
    rows = []
    for direction in ("up", "down"):
        med = {}
        for client in ("pppssh", "OpenSSH"):
            mine = [s for s in samples if s.client == client and s.direction == direction]
            med[client] = (
                statistics.median(s.mb_per_s(nbytes) for s in mine),
                statistics.median(s.cpu_per_gb(nbytes) for s in mine),
            )
        rows.append(
            {
                "direction": direction,
                "pppssh_MBps": round(med["pppssh"][0], 1),
                "openssh_MBps": round(med["OpenSSH"][0], 1),
                "throughput_ratio": round(med["pppssh"][0] / med["OpenSSH"][0], 2),
                "pppssh_cpu_s_per_GB": round(med["pppssh"][1], 2),
                "openssh_cpu_s_per_GB": round(med["OpenSSH"][1], 2),
                "cpu_ratio": round(med["pppssh"][1] / med["OpenSSH"][1], 2),
            }
        )
    print(f"pump: {args.mib} MiB per transfer, {args.rounds} rounds alternating, cipher {CIPHER}")
    print(f"{'direction':<10}{'pppssh MB/s':>13}{'OpenSSH MB/s':>14}{'ratio':>7}"
          f"{'pppssh CPU s/GB':>17}{'OpenSSH CPU s/GB':>18}{'ratio':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['direction']:<10}{r['pppssh_MBps']:>13}{r['openssh_MBps']:>14}"
              f"{r['throughput_ratio']:>7}{r['pppssh_cpu_s_per_GB']:>17}"
              f"{r['openssh_cpu_s_per_GB']:>18}{r['cpu_ratio']:>7}")  # fmt: skip
    ours, theirs = frame_rtt
    print(f"\nframe RTT ({FRAME} bytes there and back, {args.frames} per round): median / p99 us")
    print(f"pppssh {ours['median_us']} / {ours['p99_us']}   OpenSSH {theirs['median_us']} / "
          f"{theirs['p99_us']}   ratio {ours['median_us'] / theirs['median_us']:.2f} / "  # type: ignore[operator]
          f"{ours['p99_us'] / theirs['p99_us']:.2f}")  # type: ignore[operator]  # fmt: skip
    if args.json:
        data = {"mib": args.mib, "rounds": args.rounds, "cipher": CIPHER, "results": rows,
                "frame_rtt": frame_rtt, "samples": [asdict(s) for s in samples]}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
