"""The link key, attacked: everything its holder might try on gw-b, each refused, nothing changed.

The link account is set up as an administrator would (`pppssh remote-setup --apply`, helper =
yes, from= gw-a's WAN address), then the key is used from gw-a with OpenSSH's own clients
(ssh, scp, sftp): shells and commands, forwarding of every kind, environment, helper requests
with extra words, route tricks while the link is up (so that an accepted trick would work),
cleanup tricks, sudo, and the key from an address outside from=. Every attack prints what it
tried and what stopped it, and asserts the refusal and that nothing happened: no payload ran
(the marker file stays absent), gw-b's routes, ppp links and pppd processes are as before, and
no process of the link account is left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from pppssh.commands import CONGESTION_PATH
from tests.lab.netlab import (
    ADMIN,
    GW_A_WAN,
    GW_B_WAN,
    LINK_USER,
    NET_A,
    PPP_LOCAL,
    PPP_REMOTE,
    SSHD_CONFIG,
    WS_A,
    WS_B,
    Lab,
    wait_for,
)
from tests.lab.test_tunnel import RUN_DIR, ppp_link, pppssh, show

pytestmark = pytest.mark.lab

SITE = "site-k"
MARK = Path("/tmp/pppssh-attack-mark")  # every payload creates it, whoever it runs as
PAYLOAD = f"touch {MARK}"
HIT = Path("/tmp/pppssh-attack-hit")  # ws-b's listener writes it when anything reaches it
LISTEN_PORT = 7777
REFUSED = "pppssh-helper: refused:"
SECOND_SOURCE = "198.51.100.4"  # another address of gw-a, outside the key's from=


# --- the set-up, as test_helper.py does it -----------------------------------------------------


@dataclass(frozen=True)
class LinkKey:
    """A site set up on gw-b with helper = yes: its file, its key, the admin's arguments."""

    site: str
    conf: Path
    key: Path
    admin: tuple[str, ...]


@contextlib.contextmanager
def link_key(
    lab: Lab, site: str, sections: Mapping[str, Mapping[str, object]] | None = None
) -> Iterator[LinkKey]:
    """Set up `site` on gw-b with `pppssh remote-setup --apply` (helper = yes, from= gw-a's
    WAN address) and take it away again afterwards, link stopped first."""
    key = lab.dir / f"{site}_ed25519"
    if not key.exists():
        lab.run(None, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    conf = lab.write_site_conf(
        site, remote_user=LINK_USER, remote_identity=key, remote_helper="yes",
        remote_from=GW_A_WAN, sections=sections,
    )  # fmt: skip
    admin, admin_key = lab.make_admin()
    admin_args = ("--apply", "--admin", admin, "--admin-identity", str(admin_key))
    applied = pppssh(lab, "remote-setup", *admin_args, str(conf))
    assert applied.returncode == 0, show(applied)
    try:
        yield LinkKey(site, conf, key, admin_args)
    finally:
        pppssh(lab, "stop", site)
        removed = pppssh(lab, "remote-setup", "--remove", *admin_args, str(conf))
        conf.unlink(missing_ok=True)
        MARK.unlink(missing_ok=True)
        assert removed.returncode == 0, show(removed)


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[LinkKey]:
    """The link key of this module's site, set up once."""
    with link_key(lab, SITE) as made:
        yield made


# --- observing gw-b ----------------------------------------------------------------------------


def link_processes() -> list[str]:
    """Processes running as the link account (any namespace): 'pid comm'."""
    uid = pwd.getpwnam(LINK_USER).pw_uid
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        if uids and uid in (int(uids[1]), int(uids[2])):
            name = re.search(r"^Name:\s+(.*)$", status, re.M)
            found.append(f"{entry.name} {name[1] if name else '?'}")
    return found


def gw_state(lab: Lab) -> dict[str, object]:
    """What an attack must not change: routes on both gateways, ppp links, pppd processes, and
    the link account's processes (those of a running link, if any)."""
    return {
        "gw-b routes": lab.routes("gw-b"),
        "gw-a routes": lab.routes("gw-a"),
        "gw-b ppp links": lab.ppp_links("gw-b"),
        "gw-b pppd": lab.pids("gw-b", "pppd"),
        "link processes": sorted(link_processes()),
    }


def nothing_happened(lab: Lab, before: dict[str, object], what: str) -> None:
    """Assert that the attack ran no payload, left no process and changed no state."""
    assert not MARK.exists(), f"{what}: THE PAYLOAD RAN: {MARK} exists"
    baseline = set(before["link processes"])  # type: ignore[call-overload]
    gone = wait_for(lambda: set(link_processes()) <= baseline, timeout=15)
    assert gone, f"{what}: processes of {LINK_USER} left on gw-b: {link_processes()}"
    assert gw_state(lab) == before, f"{what}: state changed: {before} -> {gw_state(lab)}"


def stopper(out: str) -> str:
    """The line of the output that says why the attempt was refused."""
    keys = ("refused", "prohibited", "failed", "denied", "not found", "disabled", "error")
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    for line in lines:
        if any(k in line.lower() for k in keys) and not line.startswith("debug"):
            return line
    return lines[-1] if lines else "(no output)"


def report(what: str, tried: str, stopped: str) -> None:
    """Print one attack: what it tried, what stopped it (also kept in the lab's results, in
    attacks.txt beside the UML run's report, when there is one)."""
    text = f"ATTACK {what}\n  tried:      {tried[:300]!r}\n  stopped by: {stopped[:300]}\n"
    print(text, end="")
    results = os.environ.get("PPPSSH_LAB_REPORT")
    if results:
        with (Path(results).parent / "attacks.txt").open("a") as f:
            f.write(text)


def client_options(lab: Lab, key: Path) -> list[str]:
    """OpenSSH client options for the link key, host key checked (as Lab.ssh uses them)."""
    return [
        "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={lab.known_hosts}",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip


@contextlib.contextmanager
def one_connection(lab: Lab, key: Path) -> Iterator[tuple[str, ...]]:
    """An OpenSSH master connection from gw-a with the link key; yields the client options
    that send each request as a new session over it: the same forced command and checks for
    every request, without a key exchange each time."""
    control = Path("/tmp/pppssh-attack.ctl")
    control.unlink(missing_ok=True)
    path = ("-o", f"ControlPath={control}")
    argv = ["ssh", *client_options(lab, key), "-M", "-N", *path, f"{LINK_USER}@{GW_B_WAN}"]
    master = subprocess.Popen(
        lab.command("gw-a", argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(control.exists, timeout=20), "the master connection did not come up"
        yield (*path, "-o", "ControlMaster=no")
    finally:
        master.terminate()
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        control.unlink(missing_ok=True)


@contextlib.contextmanager
def background(lab: Lab, ns: str, argv: list[str], name: str) -> Iterator[Path]:
    """Run argv in ns in the background, its output in a file whose path is yielded; the
    process (started here) is stopped by its pid afterwards."""
    out = lab.dir / f"{name}.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            lab.command(ns, argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    try:
        yield out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


LISTENER = f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {LISTEN_PORT}))
s.listen(5)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    open("{HIT}", "a").write(f"{{peer}}\\n")
    c.sendall(b"LEAK")
    c.close()
"""


@contextlib.contextmanager
def ws_b_listener(lab: Lab) -> Iterator[None]:
    """A TCP service on ws-b (reachable from gw-b only) that records every connection."""
    HIT.unlink(missing_ok=True)
    with background(lab, "ws-b", [sys.executable, "-c", LISTENER], "listener"):
        listening = wait_for(lambda: listens(lab, "ws-b", LISTEN_PORT), timeout=30)
        assert listening, "the listener on ws-b does not listen"
        yield
    HIT.unlink(missing_ok=True)


def listens(lab: Lab, ns: str, port: int) -> bool:
    """Tell whether something listens on TCP port in ns."""
    return bool(lab.run(ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip())


# --- 1. requests: shells, commands, metacharacters, extra words ---------------------------------

REQUESTS: dict[str, tuple[list[str], bool]] = {
    "a login shell on a tty": ([], True),
    "a login shell without a tty": ([], False),
    "an empty request": ([""], False),
    "a request of spaces only": (["   "], False),
    "sh -c": (["sh", "-c", f"'id > {MARK}'"], False),
    "/bin/bash": (["/bin/bash"], False),
    "/bin/bash on a tty": (["/bin/bash", "-i"], True),
    "a semicolon": ([f"interface; {PAYLOAD}"], False),
    "a command substitution": ([f"route add $({PAYLOAD}) via {PPP_LOCAL}"], False),
    "backquotes": ([f"interface `{PAYLOAD}`"], False),
    "a newline": ([f"interface\n{PAYLOAD}"], False),
    "a carriage return": ([f"interface\r{PAYLOAD}"], False),
    "a tab": ([f"interface\t{PAYLOAD}"], False),
    "a pipe": ([f"check | {PAYLOAD}"], False),
    "a redirection": ([f"check >{MARK}"], False),
    "a glob": (["/bin/s? -c id"], False),
    "a very long request": (["interface " + "A" * 60000], False),
    "a very long first word": (["p" * 60000], False),
    "non-ASCII letters": (["int\u00e9rface"], False),
    "a non-ASCII space": (["pppd\u00a0pty\u00a0/bin/sh"], False),
    "an escaped newline in UTF-8": (["interface\u2028touch /tmp/x"], False),
    "pppd pty /bin/sh": ([f"pppd pty /bin/sh -c {MARK}"], False),
    "pppd plugin": (["pppd plugin /tmp/pppssh-attack.so"], False),
    "pppd file": (["pppd file /tmp/pppssh-attack.options"], False),
    "pppd call ../x": (["pppd call ../../../tmp/x"], False),
    "pppd call of its own peers file": ([f"pppd call pppssh-{SITE}"], False),
    "pppd with a second word": (["pppd debug"], False),
    "interface with arguments": (["interface /etc/shadow"], False),
    "check with arguments": (["check /etc/shadow"], False),
    "cleanup with a pidfile": (["cleanup /tmp/pppssh-attack.pid"], False),
    "cleanup with a signal": (["cleanup -KILL"], False),
    "congestion with a name": (["congestion cubic"], False),
    "congestion with a path": (["congestion /tmp/pppssh-attack.so"], False),
    "sudo -l": (["sudo -l"], False),
    "sudo -n true": (["sudo", "-n", "true"], False),
    "sudo -n pppd": (["sudo -n /usr/sbin/pppd pty /bin/sh"], False),
    "scp -t, the legacy upload command": ([f"scp -t {MARK}"], False),
    "scp -f, the legacy download command": (["scp -f /etc/shadow"], False),
    "the sftp server by path": (["/usr/lib/openssh/sftp-server"], False),
    "internal-sftp": (["internal-sftp"], False),
    "the helper itself, another site": (["/usr/local/libexec/pppssh-helper site-b"], False),
}


@pytest.mark.parametrize("what", list(REQUESTS))
def test_request_refused(lab: Lab, site: LinkKey, what: str) -> None:
    """Anything but a pppssh request is refused by the helper (exit 126), nothing happens."""
    command, tty = REQUESTS[what]
    before = gw_state(lab)
    proc = lab.ssh(LINK_USER, site.key, *command, tty=tty)
    out = proc.stdout + proc.stderr
    report(what, " ".join(command) or "(no command)", stopper(out))
    assert proc.returncode == 126, f"{what}: not refused: {show(proc)}"
    assert REFUSED in out, f"{what}: no refusal from the helper: {show(proc)}"
    nothing_happened(lab, before, what)


def test_allowed_requests_still_answer(lab: Lab, site: LinkKey) -> None:
    """The control: the same key's own requests work (so the refusals above are the helper's)."""
    proc = lab.ssh(LINK_USER, site.key, "interface")
    assert proc.returncode == 0 and proc.stdout == "", show(proc)
    proc = lab.ssh(LINK_USER, site.key, "check")
    assert proc.returncode == 0 and "sudo allowed" in proc.stdout, show(proc)


# --- 2. SSH channels: file transfer, forwarding, environment, tun ------------------------------


SFTP_PORT = 2222
# sshd's Subsystem line: none (the lab's sshd), Debian's default, and the in-process server
SUBSYSTEMS = {
    "no Subsystem line": None,
    "Subsystem sftp-server": "/usr/lib/openssh/sftp-server",
    "Subsystem internal-sftp": "internal-sftp",
}


@contextlib.contextmanager
def sshd_with_sftp(lab: Lab, subsystem: str) -> Iterator[Path]:
    """A second sshd on gw-b, port SFTP_PORT, like the lab's but with an sftp Subsystem line
    (as Debian ships it); yields a known_hosts file for it. Stopped by its pid afterwards."""
    config = lab.dir / "sshd_config.sftp"
    text = SSHD_CONFIG.format(ns=lab.ns("gw-b"), user=lab.user, addr=GW_B_WAN, dir=lab.dir,
                              admin=ADMIN, link_user=LINK_USER)  # fmt: skip
    text = text.replace(f"{GW_B_WAN}:22", f"{GW_B_WAN}:{SFTP_PORT}")
    text = text.replace("sshd.pid", "sshd.sftp.pid") + f"Subsystem sftp {subsystem}\n"
    config.write_text(text)
    lab.run(None, ["/usr/sbin/sshd", "-t", "-f", str(config)])
    kind, blob = lab.known_hosts.read_text().split()[1:3]
    known = lab.dir / "known_hosts.sftp"
    known.write_text(f"[{GW_B_WAN}]:{SFTP_PORT} {kind} {blob}\n")
    sshd = ["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(lab.dir / "sshd.sftp.log")]
    with background(lab, "gw-b", sshd, "sshd-sftp"):
        assert wait_for(lambda: listens(lab, "gw-b", SFTP_PORT), timeout=30), "no second sshd"
        yield known


@contextlib.contextmanager
def syslog() -> Iterator[list[str]]:
    """Collect what is sent to /dev/log meanwhile (the lab has no syslog daemon): the helper
    logs each refusal there, and it is the only trace of a refused subsystem, since sshd
    drops a subsystem's stderr."""
    if Path("/dev/log").exists():
        pytest.fail("/dev/log exists: this test needs the lab kernel, where nothing logs there")
    lines: list[str] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    Path("/dev/log").chmod(0o666)

    def collect() -> None:
        """Receive until the socket is closed."""
        with contextlib.suppress(OSError):
            while True:
                lines.append(sock.recv(65536).decode(errors="replace"))

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        Path("/dev/log").unlink(missing_ok=True)
        sock.close()


@contextlib.contextmanager
def sftp_server(lab: Lab, subsystem: str | None) -> Iterator[tuple[list[str], list[str]]]:
    """Client options reaching gw-b's sshd with that Subsystem line (None: the lab's own),
    and the helper's syslog lines meanwhile."""
    with syslog() as lines:
        if subsystem is None:
            yield [], lines
            return
        with sshd_with_sftp(lab, subsystem) as known:
            yield ["-P", str(SFTP_PORT), "-o", f"UserKnownHostsFile={known}"], lines


def helper_logged(lines: list[str], request: str) -> str:
    """Wait for the helper's syslog line refusing this request; return it ('' if none)."""

    def found() -> str:
        """The refusal line, if it came."""
        hits = [x for x in lines if "refused" in x and request in x]
        return hits[0] if hits else ""

    wait_for(found, timeout=10)
    return found()


@pytest.mark.parametrize("server", list(SUBSYSTEMS))
def test_sftp_refused(lab: Lab, site: LinkKey, server: str) -> None:
    """The sftp subsystem: no file goes either way, whatever sshd's Subsystem line (with
    one, the forced command runs instead, and the helper refuses the server's path)."""
    before = gw_state(lab)
    got = lab.dir / "attack-sftp-got"
    batch = f"get /etc/shadow {got}\nput /etc/hostname {MARK}\n"
    subsystem = SUBSYSTEMS[server]
    with sftp_server(lab, subsystem) as (port, lines):
        argv = ["sftp", *client_options(lab, site.key), *port, "-b", "-",
                f"{LINK_USER}@{GW_B_WAN}"]  # fmt: skip
        proc = lab.run("gw-a", argv, check=False, input=batch, timeout=60)
        logged = helper_logged(lines, subsystem) if subsystem else ""
    report(f"sftp subsystem ({server})", batch.replace("\n", "; "),
           logged or stopper(proc.stdout + proc.stderr))  # fmt: skip
    assert proc.returncode != 0, show(proc)
    assert not got.exists(), "sftp fetched a file"
    if subsystem:
        assert logged, f"the helper did not refuse {subsystem}: {show(proc)}\n{lines}"
    nothing_happened(lab, before, "sftp")


@pytest.mark.parametrize("server", ["no Subsystem line", "Subsystem sftp-server"])
@pytest.mark.parametrize("legacy", [True, False], ids=["scp -O", "scp over sftp"])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_scp_refused(lab: Lab, site: LinkKey, legacy: bool, direction: str, server: str) -> None:
    """scp both ways, in the legacy protocol (-O: `scp -t|-f` as a command) and over sftp."""
    before = gw_state(lab)
    source = lab.dir / "attack-scp-source"
    source.write_text("payload\n")
    got = lab.dir / "attack-scp-got"
    remote = f"{LINK_USER}@{GW_B_WAN}"
    if direction == "upload":
        ends = [str(source), f"{remote}:{MARK}"]
    else:
        ends = [f"{remote}:/etc/shadow", str(got)]
    subsystem = SUBSYSTEMS[server]
    with sftp_server(lab, subsystem) as (port, lines):
        argv = ["scp", *(["-O"] if legacy else []), *client_options(lab, site.key), *port, *ends]
        proc = lab.run("gw-a", argv, check=False, timeout=60)
        refused = "scp -" if legacy else subsystem  # the request the helper sees, if any
        logged = helper_logged(lines, refused) if refused else ""
    what = f"{'scp -O' if legacy else 'scp (sftp)'} {direction}, {server}"
    report(what, " ".join(ends), logged or stopper(proc.stdout + proc.stderr))
    assert proc.returncode != 0, show(proc)
    assert not got.exists(), f"{what}: a file came back"
    if refused:
        assert logged, f"the helper did not refuse {refused}: {show(proc)}\n{lines}"
    nothing_happened(lab, before, what)


def test_local_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """-L to a workstation behind gw-b: the channel is refused, the workstation sees nothing."""
    before = gw_state(lab)
    port = 7101
    forward = f"127.0.0.1:{port}:{WS_B}:{LISTEN_PORT}"
    argv = ["ssh", *client_options(lab, site.key), "-N", "-L", forward, f"{LINK_USER}@{GW_B_WAN}"]
    with ws_b_listener(lab), background(lab, "gw-a", argv, "attack-L") as out:
        assert wait_for(lambda: listens(lab, "gw-a", port), timeout=30), out.read_text()
        got = connect(lab, port, b"")
        assert wait_for(lambda: "open failed" in out.read_text(), timeout=15), out.read_text()
        report("port forwarding -L", f"-L {forward}", stopper(out.read_text()))
        assert "LEAK" not in got and not HIT.exists(), f"-L reached ws-b: {got!r}"
    nothing_happened(lab, before, "-L")


def test_dynamic_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """-D (SOCKS) to a workstation behind gw-b: refused, the workstation sees nothing."""
    before = gw_state(lab)
    port = 7102
    argv = ["ssh", *client_options(lab, site.key), "-N", "-D", f"127.0.0.1:{port}",
            f"{LINK_USER}@{GW_B_WAN}"]  # fmt: skip
    octets = bytes(int(x) for x in WS_B.split("."))
    socks = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + octets + LISTEN_PORT.to_bytes(2, "big")
    with ws_b_listener(lab), background(lab, "gw-a", argv, "attack-D") as out:
        assert wait_for(lambda: listens(lab, "gw-a", port), timeout=30), out.read_text()
        got = connect(lab, port, socks)
        assert wait_for(lambda: "open failed" in out.read_text(), timeout=15), out.read_text()
        report(
            "port forwarding -D", f"SOCKS5 CONNECT {WS_B}:{LISTEN_PORT}", stopper(out.read_text())
        )
        assert "LEAK" not in got and not HIT.exists(), f"-D reached ws-b: {got!r}"
    nothing_happened(lab, before, "-D")


def connect(lab: Lab, port: int, send: bytes) -> str:
    """Connect in gw-a to 127.0.0.1:port, send bytes, return repr of all that comes back."""
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), 10)\n"
        "s.settimeout(20)\n"
        f"s.sendall({send!r})\n"
        "data = b''\n"
        "while chunk := s.recv(4096):\n"
        "    data += chunk\n"
        "print(repr(data))\n"
    )
    proc = lab.run("gw-a", [sys.executable, "-c", code], check=False, timeout=60)
    assert proc.returncode == 0, f"the forwarded connection did not end: {show(proc)}"
    return proc.stdout.strip()


def test_stdio_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """-W (stdio forwarding) to a workstation behind gw-b: refused."""
    before = gw_state(lab)
    with ws_b_listener(lab):
        proc = lab.ssh(LINK_USER, site.key, options=("-W", f"{WS_B}:{LISTEN_PORT}"))
        report("stdio forwarding -W", f"-W {WS_B}:{LISTEN_PORT}", stopper(proc.stderr))
        assert proc.returncode != 0 and "LEAK" not in proc.stdout, show(proc)
        assert not HIT.exists(), "-W reached ws-b"
    nothing_happened(lab, before, "-W")


def test_remote_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """-R: gw-b never listens for the key holder."""
    before = gw_state(lab)
    port = 7103
    options = ("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{port}:{WS_A}:22")
    proc = lab.ssh(LINK_USER, site.key, options=options)
    report("port forwarding -R", " ".join(options), stopper(proc.stderr))
    assert proc.returncode == 255 and "forwarding failed" in proc.stderr, show(proc)
    assert not listens(lab, "gw-b", port)
    nothing_happened(lab, before, "-R")


TUN_CLIENT = """
import asyncio, sys
import asyncssh

async def main() -> None:
    host, user, key, known_hosts = sys.argv[1:]
    async with asyncssh.connect(
        host, username=user, client_keys=[key], known_hosts=known_hosts, config=None,
        agent_path=None, password_auth=False, kbdint_auth=False,
    ) as conn:
        try:
            await conn.open_tun()
        except asyncssh.ChannelOpenError as exc:
            print(f"tun channel refused: {exc.reason}")
            return
        print("TUN CHANNEL OPEN")

asyncio.run(main())
"""


def test_tun_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """A tun device (ssh -w; its channel `tun@openssh.com`, opened with asyncssh because
    OpenSSH's client needs a local tun device first): refused, no tun device on gw-b."""
    before = gw_state(lab)
    argv = [sys.executable, "-c", TUN_CLIENT, GW_B_WAN, LINK_USER, str(site.key),
            str(lab.known_hosts)]  # fmt: skip
    proc = lab.run("gw-a", argv, check=False, timeout=60)
    report("tun device (ssh -w)", "a tun@openssh.com channel", stopper(proc.stdout))
    assert proc.returncode == 0 and "tun channel refused" in proc.stdout, show(proc)
    tuns = lab.run("gw-b", ["ip", "-o", "link", "show", "type", "tun"]).stdout
    assert tuns == "", f"a tun device on gw-b: {tuns}"
    nothing_happened(lab, before, "tun")


def granted(stderr: str) -> str:
    """The 'key options:' line sshd sends the client (ssh -v): what the key was granted."""
    found = [line for line in stderr.splitlines() if "key options:" in line]
    assert found, f"sshd sent no 'key options' line:\n{stderr}"
    return found[0].split("key options:", 1)[1].strip()


def test_agent_and_x11_forwarding_refused(lab: Lab, site: LinkKey) -> None:
    """-A and -Y: sshd grants the key neither (its own word, `key options`), X11 is refused."""
    before = gw_state(lab)
    sock = lab.dir / "attack-agent.sock"
    with background(lab, "gw-a", ["ssh-agent", "-D", "-a", str(sock)], "attack-agent"):
        assert wait_for(sock.exists, timeout=15), "ssh-agent did not start"
        argv = ["ssh", *client_options(lab, site.key), "-v", "-T", "-A", "-Y",
                f"{LINK_USER}@{GW_B_WAN}", "interface"]  # fmt: skip
        env = {"SSH_AUTH_SOCK": str(sock), "DISPLAY": "127.0.0.1:42"}
        proc = lab.run("gw-a", argv, check=False, env=env, timeout=60)
    options = granted(proc.stderr)
    x11 = [line for line in proc.stderr.splitlines() if "X11 forwarding request failed" in line]
    report("agent forwarding -A, X11 -Y", "ssh -A -Y ... interface",
           f"key options: {options}; {x11[0] if x11 else 'no X11 refusal line'}")  # fmt: skip
    assert proc.returncode == 0, f"the request itself is allowed: {show(proc)}"
    words = options.split()
    assert "command" in words, options
    for flag in ("agent-forwarding", "x11-forwarding", "port-forwarding", "user-rc"):
        assert flag not in words, f"the key is granted {flag}: {options}"
    assert x11, f"X11 was not refused: {show(proc)}"
    nothing_happened(lab, before, "-A -Y")


def test_environment_refused(lab: Lab, site: LinkKey) -> None:
    """SetEnv/SendEnv of LD_PRELOAD, BASH_ENV, ENV: none reaches the helper or sudo."""
    before = gw_state(lab)
    preload = Path("/tmp/pppssh-attack-preload.so")
    preload.write_text("not an ELF file: ld.so complains loudly if it is ever preloaded\n")
    script = Path("/tmp/pppssh-attack-env.sh")
    script.write_text(f"{PAYLOAD}\n")
    try:
        for request in ("interface", "check"):
            argv = ["ssh", *client_options(lab, site.key), "-T",
                    "-o", f"SetEnv=LD_PRELOAD={preload} BASH_ENV={script} ENV={script}",
                    "-o", "SendEnv=BASH_ENV ENV LD_LIBRARY_PATH",
                    f"{LINK_USER}@{GW_B_WAN}", request]  # fmt: skip
            env = {"BASH_ENV": str(script), "ENV": str(script), "LD_LIBRARY_PATH": "/tmp"}
            proc = lab.run("gw-a", argv, check=False, env=env, timeout=60)
            report(f"environment ({request})", "LD_PRELOAD, BASH_ENV, ENV, LD_LIBRARY_PATH",
                   "sshd accepts no client environment (no AcceptEnv); sudo resets it")  # fmt: skip
            assert proc.returncode == 0, show(proc)
            assert "preload" not in proc.stderr.lower(), f"LD_PRELOAD reached gw-b: {show(proc)}"
            nothing_happened(lab, before, f"environment ({request})")
    finally:
        preload.unlink()
        script.unlink()


# --- 3. route tricks and cleanup tricks, with the link up ---------------------------------------


def route_tricks() -> dict[str, str]:
    """Route requests that must be refused (the allowed one is `route add NET_A via PPP_LOCAL`)."""
    via = f"via {PPP_LOCAL}"
    return {
        "a network not on the allow-list": f"route add 10.9.0.0/24 {via}",
        "gw-b's own LAN": f"route add 10.2.0.0/24 {via}",
        "the default route": f"route add default {via}",
        "0.0.0.0/0": f"route add 0.0.0.0/0 {via}",
        "half the address space": f"route add 0.0.0.0/1 {via}",
        "a wider prefix covering the allowed one (/16)": f"route add 10.1.0.0/16 {via}",
        "a wider prefix covering the allowed one (/8)": f"route add 10.0.0.0/8 {via}",
        "a wider prefix covering the allowed one (/23)": f"route add 10.1.0.0/23 {via}",
        "a narrower prefix inside it (/25)": f"route add 10.1.0.0/25 {via}",
        "one host inside it": f"route add 10.1.0.10/32 {via}",
        "the network without its length": f"route add 10.1.0.0 {via}",
        "the network with a leading zero": f"route add 010.1.0.0/24 {via}",
        "the allowed network via another address": f"route add {NET_A} via 10.2.0.10",
        "the allowed network via gw-b itself": f"route add {NET_A} via {PPP_REMOTE}",
        "the allowed network via the WAN": f"route add {NET_A} via {GW_A_WAN}",
        "the allowed network on lo": f"route add {NET_A} {via} dev lo",
        "the allowed network, dev lo instead of via": f"route add {NET_A} dev lo",
        "the allowed network, onlink": f"route add {NET_A} {via} onlink",
        "the allowed network with encap": f"route add {NET_A} encap ip id 1 dst 10.2.0.10 {via}",
        "the allowed network, encap bpf": f"route add {NET_A} {via} encap bpf in obj /tmp/x.o",
        "the allowed network in another table": f"route add {NET_A} {via} table 7",
        "the allowed network, table first": f"route add table 7 {NET_A} {via}",
        "the allowed network, metric 0": f"route add {NET_A} {via} metric 0",
        "the allowed network, src spoofing": f"route add {NET_A} {via} src 10.2.0.10",
        "route replace": f"route replace {NET_A} {via}",
        "route change": f"route change {NET_A} {via}",
        "route flush": "route flush all",
        "an option before the verb": f"route -6 add {NET_A} {via}",
        "IPv6 default": "route add ::/0 via fe80::1",
        "IPv6 network": "route add 2001:db8::/32 via fe80::1",
        "IPv6 written -6": "route -6 add default via fe80::1",
        "deleting gw-b's own LAN route": "route del 10.2.0.0/24 dev lan0",
        "deleting the WAN route": "route del 198.51.100.0/24 dev wan0",
        "deleting another network": f"route del 10.9.0.0/24 {via}",
        "a route verb in capitals": f"ROUTE add {NET_A} {via}",
        "route with no arguments": "route",
    }


def test_route_and_cleanup_tricks_with_the_link_up(lab: Lab, site: LinkKey) -> None:
    """With the link up (so that any trick let through would take effect): every route trick
    is refused by the helper, the allowed request works, and cleanup tricks touch nothing."""
    started = pppssh(lab, "start", str(site.conf))
    assert started.returncode == 0, show(started)
    if_b = ppp_link(lab, "gw-b", PPP_REMOTE, PPP_LOCAL)
    assert lab.ping("ws-a", WS_B, count=2)
    assert f"{NET_A} via {PPP_LOCAL} dev {if_b}" in lab.routes("gw-b")
    with one_connection(lab, site.key) as over:
        before = gw_state(lab)
        let_through = []
        for what, request in route_tricks().items():
            proc = lab.ssh(LINK_USER, site.key, request, options=over)
            out = proc.stdout + proc.stderr
            report(f"route trick: {what}", request, stopper(out))
            if proc.returncode != 126 or REFUSED not in out:
                let_through.append(f"{what}: {show(proc)}")
            nothing_happened(lab, before, what)
        assert not let_through, "route tricks not refused:\n" + "\n".join(let_through)

        # The control: the allowed request does work while the link is up (del, then add).
        for verb in ("del", "add"):
            request = f"route {verb} {NET_A} via {PPP_LOCAL}"
            proc = lab.ssh(LINK_USER, site.key, request, options=over)
            assert proc.returncode == 0, f"the allowed route {verb}: {show(proc)}"
        assert gw_state(lab) == before

    # cleanup's pidfile: the link account cannot write it, or anything else in /run.
    pidfile = Path(f"/run/ppp-pppssh-{SITE}-{PPP_LOCAL}.pid")
    assert pidfile.exists(), (
        f"the remote pppd's pidfile is elsewhere: {sorted(Path('/run').glob('ppp-*'))}"
    )
    st = pidfile.stat()
    assert st.st_uid == 0 and st.st_mode & 0o022 == 0, (
        f"{pidfile}: uid {st.st_uid} mode {st.st_mode:o}"
    )
    for target in (pidfile, Path(f"/run/ppp-pppssh-{SITE}-10.9.9.9.pid"), Path("/run/pppssh-x")):
        write = lab.run("gw-b", ["sh", "-c", f"echo 1 > {target}"], check=False, user=LINK_USER)
        report(f"the link account writes {target}", f"echo 1 > {target}", stopper(write.stderr))
        assert write.returncode != 0 and "Permission denied" in write.stderr, show(write)
    assert pidfile.read_text().split()[0] in {str(p) for p in lab.pids("gw-b", "pppd")}
    assert lab.ping("ws-a", WS_B), "the link must be untouched by the tricks"
    stopped = pppssh(lab, "stop", SITE)
    assert stopped.returncode == 0, show(stopped)


def ssh_sockets(lab: Lab) -> dict[int, str]:
    """gw-b's established connections to sshd: the client's port -> congestion control."""
    out = lab.run("gw-b", ["ss", "-Htin", "state", "established", "( sport = :22 )"]).stdout
    found: dict[int, str] = {}
    port = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):  # the socket's line: local, peer
            port = int(line.split()[-1].rpartition(":")[2])
        elif port is not None:  # its details: the congestion control is a word of its own
            words = set(line.split())
            found[port] = next((cc for cc in ("bbr", "cubic", "reno") if cc in words), "?")
    return found


def test_congestion_only_of_its_own_connection(lab: Lab, site: LinkKey) -> None:
    """The way down's congestion control: pppssh start has pppssh-congestion set bbr on the
    link's own sshd socket on gw-b, and on no other connection of the same account; run by
    the link account other than from its sshd session, or with another name, it is refused
    (the first by the program, the second by sudo's exact argv) and changes nothing."""
    with one_connection(lab, site.key):  # another connection of the account, idle
        others = ssh_sockets(lab)
        assert len(others) == 1 and set(others.values()) == {"cubic"}, others
        started = pppssh(lab, "start", str(site.conf))
        assert started.returncode == 0, show(started)
        try:
            assert lab.ping("ws-a", WS_B, count=2)
            now = ssh_sockets(lab)
            link = {port: cc for port, cc in now.items() if port not in others}
            assert list(link.values()) == ["bbr"], now  # the link's, set by the program
            assert {port: now[port] for port in others} == others, now  # the other: untouched
            said = (RUN_DIR / f"{SITE}.log").read_text()
            assert "the SSH connection sends with bbr (was cubic)" in said, said
            tries = {
                "the program, run by the link account from outside any sshd session": (
                    ["sudo", "-n", CONGESTION_PATH, "bbr"], "no sshd session of the calling user"),
                "the program with another name": (
                    ["sudo", "-n", CONGESTION_PATH, "cubic"], "a password is required"),
                "the program without sudo": ([CONGESTION_PATH, "bbr"], "run by root only"),
            }  # fmt: skip
            for what, (argv, why) in tries.items():
                proc = lab.run("gw-b", argv, check=False, user=LINK_USER)
                report(f"congestion: {what}", " ".join(argv), stopper(proc.stderr))
                assert proc.returncode != 0 and why in proc.stderr, show(proc)
                assert ssh_sockets(lab) == now, what
        finally:
            stopped = pppssh(lab, "stop", SITE)
        assert stopped.returncode == 0, show(stopped)


# The link account runs the real sshd itself (`sshd -i`, the way inetd would) on a TCP socket
# of its own; a child of that sshd asks sudo for pppssh-congestion, as if from a session.
OWN_SSHD = r"""
import os, socket, subprocess, sys, tempfile
key = os.path.join(tempfile.mkdtemp(), "hostkey")
subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
listener = socket.create_server(("127.0.0.1", 0))
mine = socket.create_connection(listener.getsockname())
peer, _ = listener.accept()  # held by the child below: the connection stays up
if os.fork() == 0:
    mine.close()
    import time; time.sleep(3)  # the parent is sshd by now
    asked = subprocess.run(["sudo", "-n", sys.argv[1], "bbr"], capture_output=True, text=True)
    said = [f"status {asked.returncode}", asked.stdout.strip(), asked.stderr.strip()]
    print(*said, sep="\n", flush=True)
    os._exit(0)
os.dup2(mine.fileno(), 0)
os.dup2(mine.fileno(), 1)
os.execv("/usr/sbin/sshd", ["/usr/sbin/sshd", "-i", "-e", "-f", "/dev/null", "-h", key])
"""


def test_congestion_refused_under_an_sshd_the_account_runs(lab: Lab, site: LinkKey) -> None:
    """The program is run from under the real sshd program, with the link account's real uid
    and one TCP connection: an sshd the account started itself, on a socket of its own (so
    that bbr, which the system may allow only root to choose, would be set on any socket it
    likes). Refused: that sshd's parent is no sshd of root's."""
    argv = ["/usr/bin/python3", "-I", "-c", OWN_SSHD, CONGESTION_PATH]  # the account's own
    proc = lab.run("gw-b", argv, check=False, user=LINK_USER, timeout=60)
    report("congestion: under an sshd the link account ran itself", "sshd -i on its own socket",
           stopper(proc.stdout))  # fmt: skip
    assert proc.stdout.startswith("status 1\n"), show(proc)  # (its exit status is sshd's)
    assert "was not started by the system's sshd" in proc.stdout, show(proc)
    assert "sends with" not in proc.stdout, show(proc)


def test_cleanup_kills_only_pppd(lab: Lab, site: LinkKey) -> None:
    """Even with the site's pidfile pointing at another process (written here as root, since
    the link account cannot), `cleanup` kills nothing: pkill -x ... pppd matches only pppd."""
    pidfile = Path(f"/run/ppp-pppssh-{SITE}-{PPP_LOCAL}.pid")
    assert not pidfile.exists()
    victim = subprocess.Popen(lab.command("gw-b", ["sleep", "300"]), stdin=subprocess.DEVNULL)
    pid = victim.pid  # `ip netns exec` execs sleep in place
    try:
        assert wait_for(lambda: victim.pid in lab.pids("gw-b", "sleep"), timeout=10)
        pidfile.write_text(f"{pid}\n")
        before = gw_state(lab)
        proc = lab.ssh(LINK_USER, site.key, "cleanup")
        report("cleanup with the pidfile pointing at a root sleep", f"pidfile says {pid}",
               f"exit {proc.returncode}; pkill -x -F PIDFILE pppd matches only a pppd")  # fmt: skip
        assert proc.returncode == 0, show(proc)
        assert victim.poll() is None, "cleanup killed a process that is not pppd"
        nothing_happened(lab, before, "cleanup")
    finally:
        pidfile.unlink(missing_ok=True)
        victim.kill()
        victim.wait()


def test_key_holder_pppd_cannot_take_a_lan_address(lab: Lab, site: LinkKey) -> None:
    """The key holder's own pppd (root on gw-a, through `ssh ... pppd`) claims ws-b's address
    and offers gw-b one of gw-a's: gw-b's pppd, whose options are fixed on gw-b, keeps
    192.168.77.2 <-> 192.168.77.1; ws-b stays reached through gw-b's LAN."""
    log = lab.dir / "attack-holder-pppd.log"
    ssh = " ".join(["ssh", *client_options(lab, site.key), "-tt", "-e", "none",
                    f"{LINK_USER}@{GW_B_WAN}", "pppd"])  # fmt: skip
    argv = ["/usr/sbin/pppd", "nodetach", "noauth", "local", "nocrtscts", "debug",
            "logfile", str(log), "linkname", "pppssh-attack-holder", "noccp",
            f"{WS_B}:10.1.0.99", "ipcp-accept-local", "ipcp-accept-remote",
            "lcp-echo-interval", "0", "pty", ssh]  # fmt: skip
    before = gw_state(lab)
    holder = subprocess.Popen(lab.command("gw-a", argv), stdin=subprocess.DEVNULL)
    links: set[tuple[str | None, str | None]] = set()

    def settled() -> bool:
        """IPCP came up on the holder's side, or its pppd ended."""
        links.update((x["local"], x["peer"]) for x in lab.ppp_links("gw-b"))
        text = log.read_text() if log.exists() else ""
        return holder.poll() is not None or "remote IP address" in text

    try:
        assert wait_for(settled, timeout=90, interval=0.2), "the holder's pppd never settled"
        route = lab.run("gw-b", ["ip", "-4", "route", "get", WS_B]).stdout
        links.update((x["local"], x["peer"]) for x in lab.ppp_links("gw-b"))
    finally:
        if holder.poll() is None:
            holder.terminate()
        holder.wait(30)
    assert wait_for(lambda: not lab.pids("gw-b", "pppd"), timeout=20), "gw-b's pppd stays"
    text = log.read_text()
    from_b = re.findall(r"rcvd \[IPCP (ConfReq|ConfAck|ConfNak) id=0x[0-9a-f]+(.*?)\]", text)
    said = [f"{kind}{body}" for kind, body in from_b]
    ipv6cp = re.findall(r"rcvd \[IPV6CP ConfAck[^\]]*\]", text)
    report("the key holder's pppd claims ws-b's address", f"pppd {WS_B}:10.1.0.99 via the key",
           f"gw-b's pppd said {said[-3:]}; gw-b's link {sorted(links, key=str)}; "
           f"IPV6CP acked by gw-b: {ipv6cp or 'no'}")  # fmt: skip
    assert from_b, f"no IPCP from gw-b's pppd:\n{text}"
    for kind, body in from_b:
        for addr in re.findall(r"<addr ([0-9.]+)>", body):
            want = PPP_REMOTE if kind == "ConfReq" else PPP_LOCAL
            assert addr == want, f"gw-b's pppd sent {kind} <addr {addr}>:\n{text}"
    assert links <= {(None, None), (PPP_REMOTE, PPP_LOCAL)}, f"gw-b's ppp link had {links}"
    assert "dev lan0" in route, f"gw-b reaches ws-b through {route}"
    nothing_happened(lab, before, "the key holder's pppd")
    # gw-b's pppd must not agree to IPV6CP either: the site has ipv6 = no, and link-local
    # IPv6 would open gw-b's own IPv6 services (and, with forwarding, its LAN) to the holder.
    assert not ipv6cp, f"gw-b's pppd agreed to IPv6CP with the key holder: {ipv6cp}"


# --- 4. sudo as the link account; from= --------------------------------------------------------


def test_sudo_grants_exact_commands_only(lab: Lab, site: LinkKey) -> None:
    """As the link account itself (a shell it cannot get through the key): `sudo -n true`,
    a shell, pppd with options are refused; `sudo -l` lists only exact commands."""

    def sudo(*argv: str) -> subprocess.CompletedProcess[str]:
        return lab.run("gw-b", ["sudo", "-n", *argv], check=False, user=LINK_USER)

    for argv in (["true"], ["/bin/sh", "-c", PAYLOAD], ["/usr/sbin/pppd", "pty", PAYLOAD],
                 ["/usr/sbin/pppd", "call", f"pppssh-{SITE}", "pty", PAYLOAD],
                 ["/usr/sbin/ip", "route", "add", "default", "via", PPP_LOCAL],
                 ["/usr/bin/pkill", "-TERM", "-x", "-F", "/etc/passwd", "sshd"],
                 ["-e", "/etc/sudoers"]):  # fmt: skip
        proc = sudo(*argv)
        report(f"sudo -n {' '.join(argv)}", "as the link account", stopper(proc.stderr))
        assert proc.returncode != 0, show(proc)
    assert not MARK.exists()
    listed = sudo("-l")
    assert listed.returncode == 0, show(listed)
    commands = [
        line.split("NOPASSWD:", 1)[1].strip()
        for line in listed.stdout.splitlines()
        if "NOPASSWD:" in line
    ]
    assert commands, listed.stdout
    for command in commands:
        assert not re.search(r"[*?\[\]\\]|^ALL$|sudoedit", command), f"sudo grants {command!r}"
        assert command.startswith("/"), command


def test_key_refused_outside_from(lab: Lab, site: LinkKey) -> None:
    """remote-setup writes from="<the site's from>" into the key line; from another address
    of gw-a the key is refused by sshd before the helper ever runs."""
    home = Path(pwd.getpwnam(LINK_USER).pw_dir)
    blob = site.key.with_suffix(".pub").read_text().split()[1]
    lines = [x for x in (home / ".ssh/authorized_keys").read_text().splitlines() if blob in x]
    assert len(lines) == 1, lines
    options = lines[0].split(" ssh-ed25519 ")[0]
    assert f'from="{GW_A_WAN}"' in options.split(","), options
    before = gw_state(lab)
    lab.run("gw-a", ["ip", "addr", "add", f"{SECOND_SOURCE}/24", "dev", "wan0"])
    try:
        proc = lab.ssh(LINK_USER, site.key, "check", source=SECOND_SOURCE)
    finally:
        lab.run("gw-a", ["ip", "addr", "del", f"{SECOND_SOURCE}/24", "dev", "wan0"])
    report("the key from outside from=", f"ssh -b {SECOND_SOURCE} ... check", stopper(proc.stderr))
    assert proc.returncode == 255 and "Permission denied" in proc.stderr, show(proc)
    assert "sudo" not in proc.stdout
    nothing_happened(lab, before, "from=")
