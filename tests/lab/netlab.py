"""Two sites joined by a WAN, in network namespaces, with a real OpenSSH server: pppssh's lab.

Runs as root in a kernel with PPP (/dev/ppp): inside UML (see uml.py) or on a host that has it.

      ws-a                gw-a                              gw-b                 ws-b
    10.1.0.10 ──── 10.1.0.1    198.51.100.1 ════ 198.51.100.2    10.2.0.1 ──── 10.2.0.10
      eth0   veth    lan0          wan0      veth     wan0           lan0   veth   eth0

    ws-a: default route via 10.1.0.1       ws-b: default route via 10.2.0.1
    gw-a: ip_forward=1; pppssh runs here as root, with <lab dir>/id_ed25519 and
          <lab dir>/known_hosts (gw-b's host key for 198.51.100.2)
    gw-b: ip_forward=1, rp_filter of all 0; Debian's sshd on 198.51.100.2:22, key login
          only, for user vpn. Each site file the lab writes is set up there the way a user
          would: `pppssh remote-setup SITE.conf | sh` as root (the gateways share one
          filesystem), with the site's own key <lab dir>/id_SITE; helper = yes unless the
          test asks for remote_helper="no". vpn may sudo exactly the sites' commands.

    net A 10.1.0.0/24            WAN 198.51.100.0/24             net B 10.2.0.0/24
    The tunnel (made by the tests): ppp gw-a 192.168.77.1  <->  gw-b 192.168.77.2

Namespaces are named PREFIX + ws-a/gw-a/gw-b/ws-b; methods take the short names.
Without the tunnel ws-a cannot reach ws-b: the gateways have no route to the far LAN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pppssh.linkfilter import PRIORITY

log = logging.getLogger("tests.lab")

WS_A, GW_A_LAN, GW_A_WAN = "10.1.0.10", "10.1.0.1", "198.51.100.1"
GW_B_WAN, GW_B_LAN, WS_B = "198.51.100.2", "10.2.0.1", "10.2.0.10"
NET_A, WAN, NET_B = "10.1.0.0/24", "198.51.100.0/24", "10.2.0.0/24"
PPP_LOCAL, PPP_REMOTE = "192.168.77.1", "192.168.77.2"
NAMESPACES = ("ws-a", "gw-a", "gw-b", "ws-b")
# (namespace, interface, address/prefix) at each end of a veth pair
LINKS = (
    (("ws-a", "eth0", f"{WS_A}/24"), ("gw-a", "lan0", f"{GW_A_LAN}/24")),
    (("gw-a", "wan0", f"{GW_A_WAN}/24"), ("gw-b", "wan0", f"{GW_B_WAN}/24")),
    (("gw-b", "lan0", f"{GW_B_LAN}/24"), ("ws-b", "eth0", f"{WS_B}/24")),
)
DEFAULT_ROUTES = {"ws-a": GW_A_LAN, "ws-b": GW_B_LAN}
ROUTER = "wan-r"  # the router namespace routed_wan() puts between the gateways
ROUTER_ADDR = "198.51.100.254"  # its address, on both of its links
USER = "vpn"
ADMIN = "lab-admin"  # an administrator with sudo, made on demand (make_admin)
LINK_USER = "tunnel"  # the account `pppssh remote-setup` creates in the tests
SUDOERS_DIR = Path("/etc/sudoers.d")
ASIDE = ".lab-aside"  # a site's sudoers drop-in while a test replaces the policy (set_sudoers)
RULE_PRIORITIES = (str(PRIORITY), str(PRIORITY + 1))  # the link filter's ip rules
SITE_CONF: dict[str, dict[str, str]] = {
    "site": {"name": "site-b"},
    "remote": {"host": GW_B_WAN, "port": "22", "user": USER, "identity": "", "known_hosts": ""},
    "ppp": {"local_address": PPP_LOCAL, "remote_address": PPP_REMOTE, "proxyarp": "no"},
    "networks": {"local": NET_A, "remote": NET_B},
}
SSHD_CONFIG = """\
# pppssh lab: sshd in {ns}, key authentication for {user} only
ListenAddress {addr}:22
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AllowUsers {user} {admin} {link_user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
AuthorizedKeysFile .ssh/authorized_keys
LogLevel VERBOSE
"""
_PREFIX = re.compile(r"[a-z0-9-]*")


class LabError(RuntimeError):
    """The lab cannot be built here, or it is not in the state it should be."""


class CommandError(subprocess.CalledProcessError):
    """A lab command failed; its message shows the command's output."""

    def __str__(self) -> str:
        """Return the failure with the command's stdout and stderr."""
        out = "\n".join(s.strip() for s in (self.stdout or "", self.stderr or "") if s.strip())
        return f"{super().__str__()}\n{out}" if out else super().__str__()


def wait_for(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.1) -> bool:
    """Poll predicate until it is true or timeout seconds pass; return its last truth."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _ns_inode(path: str) -> int | None:
    """Return the inode of a network namespace file, or None if it is gone."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class Lab:
    """The four-namespace lab; build it with `with Lab() as lab:`."""

    def __init__(
        self, prefix: str = "", *, ws_default_routes: bool = True, user: str = USER
    ) -> None:
        """Describe a lab (nothing is built before __enter__); refuse a kernel without PPP."""
        if not os.path.exists("/dev/ppp"):
            raise LabError(
                "no /dev/ppp: this kernel has no PPP. Run the lab inside UML: "
                "python3 -m tests.lab run -- CMD (pytest does it for @pytest.mark.lab tests)"
            )
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, sshd, useradd, sudoers)")
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"lab prefix must match {_PREFIX.pattern}: {prefix!r}")
        self.prefix = prefix
        self.ws_default_routes = ws_default_routes
        self.user = user
        self.dir = Path()
        self.key = Path()
        self.known_hosts = Path()
        self.sudoers = SUDOERS_DIR / ("pppssh-lab" + (f"-{prefix.strip('-')}" if prefix else ""))
        self._sshd: subprocess.Popen[bytes] | None = None
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._made_ns: list[str] = []
        self._made_user = False
        self._made_admin = False
        self._key_line = ""
        self._baseline: dict[str, list[str]] = {}
        self._rule_baseline: dict[str, list[str]] = {}
        self._setup: dict[str, str] = {}  # site -> the site file text it was last set up with
        self.spokes: list[Spoke] = []

    # --- building -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        """Build the lab; on any failure tear down what was built and re-raise."""
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Tear the lab down."""
        self.close()

    def _build(self) -> None:
        """Make namespaces, links, addresses, routes, the vpn account, keys, sshd and sudoers."""
        # Under /run (root's, 0755), not /tmp: pppssh trusts site files and the keys they name
        # only in directories no one but root can write, all the way up from /.
        self.dir = Path(tempfile.mkdtemp(prefix=f"pppssh-lab-{self.prefix}", dir="/run"))
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        for ns in NAMESPACES:
            if os.path.exists(f"/run/netns/{self.ns(ns)}"):
                raise LabError(f"namespace {self.ns(ns)} exists: ip netns del {self.ns(ns)}")
            _run(["ip", "netns", "add", self.ns(ns)])
            self._made_ns.append(ns)
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        for (ns1, if1, addr1), (ns2, if2, addr2) in LINKS:
            _run(["ip", "-n", self.ns(ns1), "link", "add", if1, "type", "veth",
                  "peer", "name", if2, "netns", self.ns(ns2)])  # fmt: skip
            for ns, ifname, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
                self.run(ns, ["ip", "addr", "add", addr, "dev", ifname])
                self.run(ns, ["ip", "link", "set", ifname, "up"])
        for gw in ("gw-a", "gw-b"):
            self.run(gw, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # as `pppssh check` asks: a loose rp_filter of all would void the link's strict one
        self.run("gw-b", ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
        if self.ws_default_routes:
            for ws, via in DEFAULT_ROUTES.items():
                self.run(ws, ["ip", "route", "add", "default", "via", via])
        self._make_user()
        self._start_sshd()
        self._baseline = {ns: self.routes(ns) for ns in NAMESPACES}
        self._rule_baseline = {ns: self.rules(ns) for ns in NAMESPACES}

    def _make_user(self) -> None:
        """Create the non-root account sshd lets in, and the lab's own key for it: a login
        with no sudo rule of its own (sites get theirs from remote-setup, each its own key)."""
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/sh", self.user])
            _run(["usermod", "-p", "*", self.user])  # useradd leaves it locked: sshd refuses
            self._made_user = True
            pw = pwd.getpwnam(self.user)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pppssh-lab-{self.dir.name}",
              "-f", str(self.key)])  # fmt: skip
        # As README.md advises: no forwarding, agent or X11; a pty for pppd.
        pub = (self.dir / "id_ed25519.pub").read_text().strip()
        self._key_line = f"restrict,pty {pub}"
        ssh_dir = Path(pw.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        with keys.open("a") as f:
            f.write(self._key_line + "\n")
        for path in (ssh_dir, keys):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        keys.chmod(0o600)

    def _start_sshd(self) -> None:
        """Start Debian's sshd in gw-b with its own host key; write known_hosts for gw-a."""
        host_key = self.dir / "ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        kind, blob = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"{GW_B_WAN} {kind} {blob}\n")
        config = self.dir / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                ns=self.ns("gw-b"),
                user=self.user,
                addr=GW_B_WAN,
                dir=self.dir,
                admin=ADMIN,
                link_user=LINK_USER,
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        _run(["/usr/sbin/sshd", "-t", "-f", str(config)])
        self._launch_sshd()

    def _launch_sshd(self) -> None:
        """Run the listening sshd in gw-b and wait until it listens."""
        config = self.dir / "sshd_config"
        sshd_log = self.dir / "sshd.log"
        self._sshd = subprocess.Popen(
            ["ip", "netns", "exec", self.ns("gw-b"),
             "/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(sshd_log)],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        sshd = self._sshd

        def listening() -> bool:
            """Tell whether sshd listens (raise if it died)."""
            if sshd.poll() is not None:
                raise LabError(f"sshd exited {sshd.returncode}: {sshd_log.read_text()}")
            return GW_B_WAN in self.run("gw-b", ["ss", "-Hltn", "sport = :22"]).stdout

        if not wait_for(listening, timeout=30):
            raise LabError(f"sshd does not listen on {GW_B_WAN}:22")

    def restart_sshd(self, sessions: bool = False, down: float = 0.0) -> None:
        """Restart gw-b's sshd: the listener only (sessions live on, as with `systemctl
        restart ssh`), or with every session killed too; stay down `down` seconds."""
        if self._sshd is not None and self._sshd.poll() is None:
            self._sshd.terminate()
            self._sshd.wait(10)
        if sessions:
            self._kill(self.pids("gw-b", "sshd"), "sshd sessions in gw-b", quiet=True)
        time.sleep(down)
        self._launch_sshd()

    def added_routes(self, ns: str) -> list[str]:
        """Routes of namespace ns that were not there when the lab was built."""
        return [r for r in self.routes(ns) if r not in self._baseline.get(ns, [])]

    def make_admin(self) -> tuple[str, Path]:
        """An administrator gw-b's sshd lets in, with sudo for everything: (name, key file)."""
        key = self.dir / "admin_ed25519"
        if self._made_admin:
            return ADMIN, key
        try:
            pwd.getpwnam(ADMIN)
        except KeyError:
            pass
        else:
            raise LabError(f"account {ADMIN} exists already: userdel -r {ADMIN}")
        _run(["useradd", "-m", "-s", "/bin/sh", ADMIN])
        self._made_admin = True
        _run(["usermod", "-p", "*", ADMIN])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        pw = pwd.getpwnam(ADMIN)
        ssh_dir = Path(pw.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(key.with_suffix(".pub").read_text())
        for path in (ssh_dir, keys):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        keys.chmod(0o600)
        sudoers = SUDOERS_DIR / "pppssh-lab-admin"
        sudoers.write_text(f"{ADMIN} ALL=(root) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        return ADMIN, key

    def ssh(
        self,
        user: str,
        key: Path,
        *command: str,
        source: str | None = None,
        tty: bool = False,
        options: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Log in to gw-b's sshd from gw-a with OpenSSH's client, host key checked."""
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10",
            "-tt" if tty else "-T",
        ]  # fmt: skip
        if source:
            argv += ["-b", source]
        argv += [*options, f"{user}@{GW_B_WAN}", *command]
        return self.run("gw-a", argv, check=False, timeout=60)

    def sudo_check(self, site: str = "site-b") -> dict[str, bool]:
        """Ask sudo, as the vpn user in gw-b, about site's exact commands and a few others
        (`sudo -n -l`: it runs nothing); the site is set up first if it is not yet."""
        from pppssh.config import load
        from pppssh.remote_setup import sudo_commands

        conf = self.dir / f"{site}.conf"
        if site not in self._setup:
            conf = self.write_site_conf(site)
        commands = sudo_commands(load(conf))

        def allowed(*argv: str) -> bool:
            """Tell whether sudo -n -l allows argv for the vpn user."""
            proc = self.run("gw-b", ["sudo", "-n", "-l", *argv], check=False, user=self.user)
            return proc.returncode == 0

        pppd, route_add, route_del = commands[0], commands[3], commands[4]
        found = {"sudo pppd allowed": allowed(*pppd)}
        found["sudo ip route add allowed"] = allowed(*route_add)
        found["sudo ip route del allowed"] = allowed(*route_del)
        found["sudo pkill of the pid file allowed"] = allowed(*commands[1])
        found["sudo id refused"] = not allowed("/usr/bin/id")
        found["sudo ip link refused"] = not allowed("/usr/sbin/ip", "link", "show")
        found["sudo pppd with options refused"] = not allowed("/usr/sbin/pppd", "--version")
        found["sudo other route refused"] = not allowed(
            "/usr/sbin/ip", "route", "add", "203.0.113.7/32", "dev", "lo"
        )
        return found

    def add_spoke(self, index: int, workstation: bool = True) -> Spoke:
        """One more remote gateway for gw-a, the hub: its own namespace, WAN, sshd, LAN.

        Spoke i: namespace PREFIX+gw-sI with WAN 100.64.I.2/24 (gw-a: 100.64.I.1 on spI),
        LAN 10.(10+I).0.0/24 (gateway .1, workstation PREFIX+ws-sI at .10 if asked), its
        own sshd for the same vpn account and key, its host key in known_hosts, PPP link
        192.168.(100+I).1 <-> .2. remove_spokes() (and close()) take them away again.
        """
        if not 1 <= index <= 200 or any(sp.index == index for sp in self.spokes):
            raise ValueError(f"spoke index {index} is taken or out of range 1..200")
        spoke = Spoke(index, self.prefix, workstation)
        self.spokes.append(spoke)
        for ns in spoke.namespaces:
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.ns("gw-a"), "link", "add", spoke.hub_if, "type", "veth",
              "peer", "name", "wan0", "netns", spoke.gw])  # fmt: skip
        ends = [(self.ns("gw-a"), spoke.hub_if, f"{spoke.hub_wan}/24"),
                (spoke.gw, "wan0", f"{spoke.wan}/24")]  # fmt: skip
        if workstation:
            _run(["ip", "-n", spoke.gw, "link", "add", "lan0", "type", "veth",
                  "peer", "name", "eth0", "netns", spoke.ws])  # fmt: skip
            ends += [
                (spoke.gw, "lan0", f"{spoke.lan_gw}/24"),
                (spoke.ws, "eth0", f"{spoke.ws_addr}/24"),
            ]
        else:
            _run(["ip", "-n", spoke.gw, "link", "add", "lan0", "type", "dummy"])
            ends.append((spoke.gw, "lan0", f"{spoke.lan_gw}/24"))
        for ns, ifname, addr in ends:
            _run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        _run(["ip", "netns", "exec", spoke.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _run(["ip", "netns", "exec", spoke.gw, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])
        if workstation:
            _run(["ip", "-n", spoke.ws, "route", "add", "default", "via", spoke.lan_gw])
        config = self.dir / f"sshd_config.s{index}"
        text = SSHD_CONFIG.format(ns=spoke.gw, user=self.user, addr=spoke.wan, dir=self.dir,
                                  admin=ADMIN, link_user=LINK_USER)  # fmt: skip
        config.write_text(text.replace("sshd.pid", f"sshd.s{index}.pid"))
        kind, blob = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        with self.known_hosts.open("a") as f:
            f.write(f"{spoke.wan} {kind} {blob}\n")
        spoke.sshd = subprocess.Popen(
            ["ip", "netns", "exec", spoke.gw, "/usr/sbin/sshd", "-D", "-f", str(config),
             "-E", str(self.dir / f"sshd.s{index}.log")],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        sshd = spoke.sshd

        def listening() -> bool:
            """Tell whether the spoke's sshd listens (raise if it died)."""
            if sshd.poll() is not None:
                raise LabError(f"sshd of spoke {index} exited {sshd.returncode}")
            out = _run(["ip", "netns", "exec", spoke.gw, "ss", "-Hltn", "sport = :22"]).stdout
            return spoke.wan in out

        if not wait_for(listening, timeout=30):
            raise LabError(f"sshd of spoke {index} does not listen on {spoke.wan}:22")
        return spoke

    def spoke_site_conf(self, spoke: Spoke, **overrides: object) -> Path:
        """A site file on gw-a for one spoke (name spoke-I), like write_site_conf's."""
        sections: dict[str, dict[str, object]] = {
            "remote": {"host": spoke.wan},
            "ppp": {"local_address": spoke.ppp_local, "remote_address": spoke.ppp_remote},
            "networks": {"remote": spoke.lan},
        }
        return self.write_site_conf(spoke.site, sections=sections, **overrides)

    def remove_spokes(self) -> None:
        """Stop the spokes' sshds and everything in their namespaces; delete them."""
        for spoke in self.spokes:
            if spoke.sshd is not None and spoke.sshd.poll() is None:
                spoke.sshd.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spoke.sshd.wait(5)
            for ns in spoke.namespaces:
                pids = self.pids(ns, None)
                self._kill(pids, f"processes left in {ns}", quiet=True)
                _run(["ip", "netns", "del", ns], check=False)
        self.spokes = []

    @contextlib.contextmanager
    def routed_wan(self) -> Iterator[str]:
        """Put a router between the gateways for the duration; yield its namespace's name.

        The direct WAN veth gives way to gw-a wan0 <-> PREFIX+wan-r (to-a, to-b) <-> gw-b
        wan0: each gateway keeps its address as a /32 with the router (198.51.100.254) as
        its peer and a route to the WAN /24 through it, so every packet between them is
        forwarded once. The router's to-a and to-b egress are where a benchmark shapes the
        WAN. Afterwards the router goes and the direct veth comes back as built.
        """
        router = self.prefix + ROUTER
        before = {gw: self._baseline.get(gw, []) for gw in ("gw-a", "gw-b")}
        _run(["ip", "netns", "add", router])
        try:
            _run(["ip", "-n", router, "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            _run(["ip", "-n", self.ns("gw-a"), "link", "del", "wan0"])  # and its peer
            for side, gw, addr in (("a", "gw-a", GW_A_WAN), ("b", "gw-b", GW_B_WAN)):
                _run(["ip", "-n", self.ns(gw), "link", "add", "wan0", "type", "veth",
                      "peer", "name", f"to-{side}", "netns", router])  # fmt: skip
                self.run(gw, ["ip", "addr", "add", addr, "peer", ROUTER_ADDR, "dev", "wan0"])
                self.run(gw, ["ip", "link", "set", "wan0", "up"])
                _run(["ip", "-n", router, "addr", "add", ROUTER_ADDR, "peer", addr,
                      "dev", f"to-{side}"])  # fmt: skip
                _run(["ip", "-n", router, "link", "set", f"to-{side}", "up"])
                self.run(gw, ["ip", "route", "add", WAN, "via", ROUTER_ADDR, "dev", "wan0"])
            for gw in before:
                self._baseline[gw] = self.routes(gw)
            if not self.ping("gw-a", GW_B_WAN, count=2):
                raise LabError("gw-a cannot ping gw-b through the WAN router")
            yield router
        finally:
            _run(["ip", "netns", "del", router], check=False)  # its veths and the gw ends go
            (ns1, if1, addr1), (ns2, if2, addr2) = LINKS[1]
            if wait_for(lambda: "wan0" not in self.run(ns1, ["ip", "-o", "link"]).stdout, 5):
                _run(["ip", "-n", self.ns(ns1), "link", "add", if1, "type", "veth",
                      "peer", "name", if2, "netns", self.ns(ns2)])  # fmt: skip
                for ns, ifname, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
                    self.run(ns, ["ip", "addr", "add", addr, "dev", ifname])
                    self.run(ns, ["ip", "link", "set", ifname, "up"])
            self._baseline.update(before)

    # --- using ----------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """Return the real namespace name for a short name (ws-a, gw-a, gw-b, ws-b)."""
        if any(name in spoke.namespaces for spoke in self.spokes):
            return name  # a spoke's namespace, already in full
        if name not in NAMESPACES:
            raise ValueError(f"unknown lab namespace {name!r}; known: {', '.join(NAMESPACES)}")
        return self.prefix + name

    def command(self, ns: str | None, argv: list[str], user: str | None = None) -> list[str]:
        """Return argv wrapped to run in namespace ns (None: here) as user (None: root)."""
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        return ["ip", "netns", "exec", self.ns(ns), *argv] if ns else list(argv)

    _argv = command  # the first name, still used by tests/lab/demo.py

    def run(
        self,
        ns: str | None,
        argv: list[str],
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in namespace ns (None: the current one), capture text output."""
        proc = subprocess.run(
            self.command(ns, argv, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=None if env is None else {**os.environ, **env},
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode:
            raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def spawn(
        self, ns: str | None, argv: list[str], user: str | None = None, **popen: object
    ) -> subprocess.Popen[bytes]:
        """Start argv in the background in namespace ns; teardown stops it."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.command(ns, argv, user),
            **popen,  # type: ignore[call-overload]
        )
        self._spawned.append(proc)
        return proc

    def ping(self, ns: str | None, addr: str, count: int = 1, wait: float = 2) -> bool:
        """Tell whether addr answers ping from namespace ns."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), addr]
        return self.run(ns, argv, check=False, timeout=count * (wait + 1) + 10).returncode == 0

    def routes(self, ns: str | None) -> list[str]:
        """Return the IPv4 routes of namespace ns as `ip -4 route show` lines.

        The `linkdown` flag (a cable pulled, the WAN cut) is state, not part of the route.
        """
        out = self.run(ns, ["ip", "-4", "route", "show"]).stdout
        lines = (line.strip().removesuffix(" linkdown") for line in out.splitlines())
        return [line for line in lines if line]

    def rules(self, ns: str | None) -> list[str]:
        """Return the policy rules of namespace ns, IPv4 then IPv6, as `ip rule show` lines
        after the family (`-4 5000: from all iif ppp0 to 10.1.0.0/24 lookup main`).

        `[detached]` (the rule's interface is gone) is state, not part of the rule.
        """
        found = []
        for family in ("-4", "-6"):
            out = self.run(ns, ["ip", family, "rule", "show"]).stdout
            lines = (" ".join(line.replace("[detached]", "").split()) for line in out.splitlines())
            found += [f"{family} {line}" for line in lines if line]
        return found

    def ppp_links(self, ns: str | None) -> list[dict[str, str | None]]:
        """Return the ppp interfaces of namespace ns: name, local and peer IPv4 address."""
        links = json.loads(self.run(ns, ["ip", "-j", "addr", "show", "type", "ppp"]).stdout or "[]")
        found: list[dict[str, str | None]] = []
        for link in links:
            inet = [a for a in link.get("addr_info", []) if a.get("family") == "inet"]
            addr = inet[0] if inet else {}
            found.append(
                {"name": link["ifname"], "local": addr.get("local"), "peer": addr.get("address")}
            )
        return found

    def pids(self, ns: str | None, name: str | None) -> list[int]:
        """Return ids of live processes called name (None: any) in namespace ns (None: any)."""
        want = _ns_inode(f"/run/netns/{self.ns(ns)}") if ns else None
        if ns and want is None:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.split(")")[-1][1]
                if state in "ZX" or (name is not None and comm != name[:15]):
                    continue
                if want is not None and os.stat(f"{entry.path}/ns/net").st_ino != want:
                    continue
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or a kernel thread without a net namespace link
            found.append(int(entry.name))
        return sorted(found)

    def site_key(self, name: str) -> Path:
        """The site's own link key, <lab dir>/id_NAME (made on first use)."""
        key = self.dir / f"id_{name}"
        if not key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pppssh-lab-{name}",
                  "-f", str(key)])  # fmt: skip
        return key

    def write_site_conf(
        self,
        name: str = "site-b",
        sections: Mapping[str, Mapping[str, object]] | None = None,
        setup: bool = True,
        **overrides: object,
    ) -> Path:
        """Write <lab dir>/<name>.conf, a pppssh site config for this lab, and return its path;
        then set the site up on the remote gateway with `pppssh remote-setup` (setup=False:
        leave the remote side as it is).

        Overrides are section_key=value keywords (ppp_proxyarp="remote", remote_helper="no"
        for the no-helper mode) or a dict {section: {key: value}}; a None value drops the
        key; unknown sections are written too. The identity is the site's own key.
        """
        conf = {section: dict(keys) for section, keys in SITE_CONF.items()}
        conf["site"]["name"] = name
        conf["remote"].update(identity=str(self.site_key(name)), known_hosts=str(self.known_hosts))
        changes: list[tuple[str, str, object]] = []
        for section, keys in (sections or {}).items():
            changes += [(section, key, value) for key, value in keys.items()]
        for word, value in overrides.items():
            section, sep, key = word.partition("_")
            if not sep:
                raise ValueError(f"override {word!r} is not section_key")
            changes.append((section, key, value))
        for section, key, value in changes:
            keys = conf.setdefault(section, {})
            if value is None:
                keys.pop(key, None)
            else:
                keys[key] = str(value)
        text = "".join(
            f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
            for section, keys in conf.items()
        )
        path = self.dir / f"{name}.conf"
        path.write_text(text)
        if setup:
            self.remote_setup(path)
        return path

    def remote_setup(self, conf: Path, remove: bool = False) -> bool:
        """Run `pppssh remote-setup [--remove] CONF` and its script as root in gw-b, as a user
        would; False (nothing done) if pppssh refuses the site file. A site whose file is
        unchanged since its last set-up is not set up again."""
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from pppssh import cli

        text = conf.read_text()
        if not remove and self._setup.get(conf.stem) == text:
            return True
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = cli.main(["remote-setup", *(["--remove"] if remove else []), str(conf)])
        if status == 2:  # a bad site file: the test is about pppssh refusing it
            self._setup.pop(conf.stem, None)
            return False
        if status != 0:
            raise LabError(f"pppssh remote-setup {conf} exited {status}: {err.getvalue()}")
        done = self.run("gw-b", ["sh", "-s"], check=False, input=out.getvalue(), timeout=120)
        if done.returncode:
            raise LabError(f"remote-setup script of {conf} failed: {done.stdout}{done.stderr}")
        if self.sudoers.exists():  # a test's own policy stays the whole policy until reset
            for drop_in in self._site_sudoers():
                os.replace(drop_in, drop_in.with_name(f".{drop_in.name}{ASIDE}"))
        if remove:
            self._setup.pop(conf.stem, None)
        else:
            self._setup[conf.stem] = text
        return True

    def set_sudoers(self, text: str) -> None:
        """Make text the vpn account's whole sudo policy (the sites' drop-ins are put aside
        until restore_sudoers), after visudo accepts it."""
        tmp = self.sudoers.with_name(f".{self.sudoers.name}.new")  # a dot: sudo ignores it
        tmp.write_text(text if text.endswith("\n") or not text else text + "\n")
        tmp.chmod(0o440)
        check = _run(["visudo", "-cf", str(tmp)], check=False)
        if check.returncode:
            tmp.unlink()
            raise ValueError(f"visudo refuses the sudoers text: {check.stdout}{check.stderr}")
        for drop_in in self._site_sudoers():
            os.replace(drop_in, drop_in.with_name(f".{drop_in.name}{ASIDE}"))
        os.replace(tmp, self.sudoers)

    def restore_sudoers(self) -> None:
        """Back to the sites' own policies, as remote-setup wrote them."""
        self.sudoers.unlink(missing_ok=True)
        for aside in SUDOERS_DIR.glob(f".pppssh-*{ASIDE}"):
            os.replace(aside, aside.with_name(aside.name[1 : -len(ASIDE)]))

    def _site_sudoers(self) -> list[Path]:
        """The sudoers drop-ins remote-setup wrote for the vpn account's sites."""
        found = []
        for path in SUDOERS_DIR.glob("pppssh-*"):
            with contextlib.suppress(OSError):
                if f"\n{self.user} ALL=(root) NOPASSWD: " in path.read_text():
                    found.append(path)
        return found

    # --- checking and tearing down --------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Describe pppd processes, ppp interfaces and changed routes left in the namespaces."""
        found = [f"pppd pid {pid} in {ns}" for ns in NAMESPACES for pid in self.pids(ns, "pppd")]
        for ns in NAMESPACES:
            found += [f"ppp interface {link['name']} in {ns}" for link in self.ppp_links(ns)]
        for ns, before in self._baseline.items():
            now = self.routes(ns)
            found += [f"route in {ns} added: {r}" for r in now if r not in before]
            found += [f"route in {ns} removed: {r}" for r in before if r not in now]
        for ns, before in self._rule_baseline.items():
            if ns == "gw-b":  # the remote pppd's ip-down removes those (see reset)
                continue
            found += [f"rule in {ns} added: {r}" for r in self.rules(ns) if r not in before]
        return found

    def reset(self, grace: float = 5) -> list[str]:
        """Bring the lab back to as built (pppd, ppp links, routes, sudoers); say what was off."""
        self.restore_sudoers()
        wait_for(lambda: not self.leftovers(), timeout=grace, interval=0.2)
        found = self.leftovers()
        if not self.ppp_links("gw-b"):  # rules a SIGKILLed remote pppd's ip-down never removed
            for prio in RULE_PRIORITIES:
                while self.run("gw-b", ["ip", "-4", "rule", "del", "priority", prio],
                               check=False).returncode == 0:  # fmt: skip
                    pass
        if found:
            for ns in NAMESPACES:
                self._kill(self.pids(ns, "pppd"), f"pppd in {ns}")
            wait_for(lambda: not any(self.ppp_links(ns) for ns in NAMESPACES), timeout=5)
            for ns, before in self._baseline.items():
                now = self.routes(ns)
                for r in (r for r in now if r not in before):
                    self.run(ns, ["ip", "route", "del", *r.split()], check=False)
                for r in (r for r in before if r not in now):
                    self.run(ns, ["ip", "route", "add", *r.split()], check=False)
            for ns, before in self._rule_baseline.items():
                for r in (r for r in self.rules(ns) if r not in before):
                    family, prio, spec = r.split(maxsplit=2)
                    self.run(ns, ["ip", family, "rule", "del", "priority", prio.rstrip(":"),
                                  *spec.removeprefix("from all ").split()], check=False)  # fmt: skip
        return found

    def _kill(self, pids: list[int], what: str, quiet: bool = False) -> None:
        """Stop processes: SIGTERM, then SIGKILL after 3 s; log them unless quiet."""
        if not pids:
            return
        if not quiet:
            log.warning("lab teardown: killing %s: pids %s", what, pids)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if wait_for(lambda: not any(os.path.exists(f"/proc/{p}/ns") for p in pids), 3):
                break

    def close(self) -> None:
        """Tear down: stop sshd and everything in the namespaces, delete them, undo files."""
        self.remove_spokes()
        for proc in [p for p in (self._sshd, *self._spawned) if p is not None]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._sshd, self._spawned = None, []
        for ns in self._made_ns:
            pids = self.pids(ns, None)
            names = sorted({_comm(pid) for pid in pids})
            self._kill(pids, f"{', '.join(names)} left in {self.ns(ns)}", quiet=names == ["sshd"])
        for ns in self._made_ns:
            if not wait_for(lambda ns=ns: not self.ppp_links(ns), timeout=5):  # type: ignore[misc]
                log.warning("lab teardown: ppp interfaces stay in %s", self.ns(ns))
            _run(["ip", "netns", "del", self.ns(ns)], check=False)
        self._made_ns = []
        self.restore_sudoers()
        for site in list(self._setup):
            with contextlib.suppress(LabError, OSError):
                self.remote_setup(self.dir / f"{site}.conf", remove=True)
        self._remove_user()
        if self._made_admin:
            (SUDOERS_DIR / "pppssh-lab-admin").unlink(missing_ok=True)
            _run(["userdel", "-r", ADMIN], check=False)
            self._made_admin = False
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        stray = self.pids(None, "pppd")
        if stray:
            log.warning("lab teardown: pppd still runs outside the lab namespaces: %s", stray)

    def _remove_user(self) -> None:
        """Delete the vpn account if the lab made it, else only the lab's authorized key."""
        if self._made_user:
            _run(["userdel", "-r", self.user], check=False)
            self._made_user = False
        elif self._key_line:
            try:
                keys = Path(pwd.getpwnam(self.user).pw_dir) / ".ssh" / "authorized_keys"
                lines = keys.read_text().splitlines(keepends=True)
                keys.write_text("".join(x for x in lines if x.strip() != self._key_line))
            except (KeyError, OSError):
                pass
        self._key_line = ""


def _comm(pid: int) -> str:
    """Return a process's command name, or '?' if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a setup command in the current namespace and capture its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@dataclass
class Spoke:
    """One extra remote gateway (and maybe workstation) of the hub gw-a: see Lab.add_spoke."""

    index: int
    prefix: str
    workstation: bool
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def gw(self) -> str:
        """The spoke gateway's namespace."""
        return f"{self.prefix}gw-s{self.index}"

    @property
    def ws(self) -> str:
        """The spoke workstation's namespace."""
        return f"{self.prefix}ws-s{self.index}"

    @property
    def namespaces(self) -> list[str]:
        """Its namespaces, gateway first."""
        return [self.gw, self.ws] if self.workstation else [self.gw]

    @property
    def site(self) -> str:
        """The site name of the link from the hub."""
        return f"spoke-{self.index}"

    hub_if = property(lambda self: f"sp{self.index}", doc="The hub's WAN interface to it.")
    hub_wan = property(lambda self: f"100.64.{self.index}.1", doc="The hub's WAN address.")
    wan = property(lambda self: f"100.64.{self.index}.2", doc="Its WAN (SSH) address.")
    lan = property(lambda self: f"10.{10 + self.index}.0.0/24", doc="Its LAN.")
    lan_gw = property(lambda self: f"10.{10 + self.index}.0.1", doc="Its LAN address.")
    ws_addr = property(lambda self: f"10.{10 + self.index}.0.10", doc="Its workstation.")
    ppp_local = property(lambda self: f"192.168.{100 + self.index}.1", doc="Hub's PPP end.")
    ppp_remote = property(lambda self: f"192.168.{100 + self.index}.2", doc="Its PPP end.")


# --------------------------------------------------------------------------- reaching gw-b
# An addition for tests/lab/test_reach.py; the four-namespace lab above stays as it is.

BASTION_WAN, BASTION_INNER, GW_B_INNER = "100.66.0.2", "100.67.0.1", "100.67.0.2"
GW_A_BASTION = "100.66.0.1"
HTTP_PROXY_PORT, SOCKS_PORT = 8888, 1080
PROXY_USER, PROXY_PASSWORD = "pppssh", "s3cret-lab"
BASTION_SSHD = """\
# pppssh lab: a bastion in {ns}; vpn logs in with the jump key, which may open {target} only
ListenAddress {addr}:22
HostKey {dir}/bastion_host_key
PidFile {dir}/bastion-sshd.pid
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
AuthorizedKeysFile {dir}/bastion_authorized_keys
AllowTcpForwarding yes
LogLevel VERBOSE
"""
INNER_SSHD = """\
# pppssh lab: gw-b's sshd on the address only the bastion reaches; it trusts the lab's user CA
ListenAddress {addr}:22
HostKey {host_key}
PidFile {dir}/inner-sshd.pid
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
AuthorizedKeysFile .ssh/authorized_keys
TrustedUserCAKeys {dir}/user_ca.pub
LogLevel VERBOSE
"""
TINYPROXY_CONF = """\
User nobody
Group nogroup
Port {port}
Listen {addr}
Timeout 600
LogFile "{dir}/tinyproxy.log"
LogLevel Info
PidFile "{dir}/tinyproxy.pid"
MaxClients 10
Allow {client}
BasicAuth {proxy_user} {proxy_password}
ConnectPort 22
"""


@dataclass
class Bastion:
    """A bastion namespace between gw-a and gw-b (see add_bastion); close() removes it."""

    lab: Lab
    dir: Path
    ns: str
    jump_key: Path
    user_ca: Path
    known_hosts: Path  # the bastion's key and gw-b's under GW_B_INNER
    procs: dict[str, subprocess.Popen[bytes]]
    routes: dict[str, list[str]] = field(default_factory=dict)  # its links' routes, per ns

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run argv in the bastion namespace."""
        return _run(["ip", "netns", "exec", self.ns, *argv], check=check)

    def start(self, name: str, argv: list[str], ns: str | None = None) -> None:
        """Start a daemon (in the bastion, or in a lab namespace) that close() stops."""
        where = self.ns if ns is None else self.lab.ns(ns)
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", where, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / f"{name}.err").open("wb"),
        )

    def stop(self, name: str) -> None:
        """Stop one daemon started by start()."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def listening(self, ns: str, addr: str, port: int, name: str) -> None:
        """Wait until something listens on addr:port in ns; raise if its daemon died."""

        def up() -> bool:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                err = (self.dir / f"{name}.err").read_text(errors="replace")
                raise LabError(f"{name} exited {proc.returncode}: {err}")
            out = _run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"]).stdout
            return addr in out

        if not wait_for(up, timeout=30):
            raise LabError(f"{name} does not listen on {addr}:{port}")

    def start_http_proxy(self) -> None:
        """tinyproxy in the bastion on BASTION_WAN:8888, basic auth, CONNECT to port 22."""
        conf = self.dir / "tinyproxy.conf"
        conf.write_text(TINYPROXY_CONF.format(
            port=HTTP_PROXY_PORT, addr=BASTION_WAN, dir=self.dir, client=GW_A_BASTION,
            proxy_user=PROXY_USER, proxy_password=PROXY_PASSWORD,
        ))  # fmt: skip
        for name in ("tinyproxy.log", "tinyproxy.pid"):
            path = self.dir / name
            path.touch()
            os.chown(path, 65534, 65534)
        self.start("tinyproxy", ["tinyproxy", "-d", "-c", str(conf)])
        self.listening(self.ns, BASTION_WAN, HTTP_PROXY_PORT, "tinyproxy")

    def start_socks_proxy(self) -> None:
        """`ssh -D` in the bastion on BASTION_WAN:1080, through its own sshd (the jump key)."""
        self.start("socks", [
            "ssh", "-N", "-D", f"{BASTION_WAN}:{SOCKS_PORT}", "-i", str(self.jump_key),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
            f"{self.lab.user}@{BASTION_WAN}",
        ])  # fmt: skip
        self.listening(self.ns, BASTION_WAN, SOCKS_PORT, "socks")

    def close(self) -> None:
        """Stop the daemons, delete the namespace and gw-a's and gw-b's links to it."""
        for name in list(self.procs):
            self.stop(name)
        out = _run(["ip", "netns", "pids", self.ns], check=False).stdout
        pids = [int(word) for word in out.split() if word.isdigit()]
        self.lab._kill(pids, f"processes left in {self.ns}", quiet=True)
        _run(["ip", "netns", "del", self.ns], check=False)
        for ns in ("gw-a", "gw-b"):
            _run(["ip", "-n", self.lab.ns(ns), "link", "del", "bst0"], check=False)
        for ns, added in self.routes.items():  # the lab's baseline is as built again
            self.lab._baseline[ns] = [r for r in self.lab._baseline[ns] if r not in added]
        self.routes = {}
        shutil.rmtree(self.dir, ignore_errors=True)


def add_bastion(lab: Lab) -> Bastion:
    """A bastion namespace: gw-a bst0 100.66.0.1 <-> bastion wan0 100.66.0.2, bastion inner0
    100.67.0.1 <-> gw-b bst0 100.67.0.2. gw-a has no route to 100.67.0.0/24: it reaches gw-b's
    second sshd (100.67.0.2:22, gw-b's host key, TrustedUserCAKeys = the lab's user CA) only
    through the bastion's sshd (100.66.0.2:22, its own host key, the jump key only, which may
    open 100.67.0.2:22 and nothing else), or the proxies started in the bastion."""
    folder = Path(tempfile.mkdtemp(prefix="pppssh-reach-", dir="/run"))
    folder.chmod(0o755)  # sshd reads the bastion's authorized keys as vpn
    ns = lab.prefix + "bastion"
    bastion = Bastion(lab, folder, ns, folder / "id_jump", folder / "user_ca",
                      folder / "known_hosts", {})  # fmt: skip
    before = {outer: lab.routes(outer) for outer in ("gw-a", "gw-b")}
    try:
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for outer, ifname, outer_addr, inner_if, inner_addr in (
            ("gw-a", "bst0", f"{GW_A_BASTION}/24", "wan0", f"{BASTION_WAN}/24"),
            ("gw-b", "bst0", f"{GW_B_INNER}/24", "inner0", f"{BASTION_INNER}/24"),
        ):
            _run(["ip", "-n", lab.ns(outer), "link", "add", ifname, "type", "veth",
                  "peer", "name", inner_if, "netns", ns])  # fmt: skip
            for where, dev, addr in (
                (lab.ns(outer), ifname, outer_addr),
                (ns, inner_if, inner_addr),
            ):
                _run(["ip", "-n", where, "addr", "add", addr, "dev", dev])
                _run(["ip", "-n", where, "link", "set", dev, "up"])
        for outer, old in before.items():  # the links' own routes are part of the lab now
            bastion.routes[outer] = [r for r in lab.routes(outer) if r not in old]
            lab._baseline[outer] = lab._baseline[outer] + bastion.routes[outer]
        for key in ("bastion_host_key", "id_jump", "user_ca"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"lab-{key}",
                  "-f", str(folder / key)])  # fmt: skip
        (folder / "user_ca").chmod(0o600)
        jump_pub = (folder / "id_jump.pub").read_text().strip()
        (folder / "bastion_authorized_keys").write_text(
            f'restrict,port-forwarding,permitopen="{GW_B_INNER}:22" {jump_pub}\n'
        )
        kind, blob = (folder / "bastion_host_key.pub").read_text().split()[:2]
        gkind, gblob = (lab.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        bastion.known_hosts.write_text(
            f"{BASTION_WAN} {kind} {blob}\n{GW_B_INNER} {gkind} {gblob}\n"
        )
        (folder / "sshd_config.bastion").write_text(
            BASTION_SSHD.format(
                ns=ns, target=f"{GW_B_INNER}:22", addr=BASTION_WAN, dir=folder, user=lab.user
            )
        )
        (folder / "sshd_config.inner").write_text(
            INNER_SSHD.format(
                addr=GW_B_INNER,
                host_key=lab.dir / "ssh_host_ed25519_key",
                dir=folder,
                user=lab.user,
            )
        )
        for name, where, addr in (("bastion", None, BASTION_WAN), ("inner", "gw-b", GW_B_INNER)):
            config = folder / f"sshd_config.{name}"
            _run(["/usr/sbin/sshd", "-t", "-f", str(config)])
            bastion.start(f"sshd-{name}", ["/usr/sbin/sshd", "-D", "-f", str(config), "-E",
                                           str(folder / f"sshd-{name}.log")], ns=where)  # fmt: skip
            bastion.listening(ns if where is None else lab.ns(where), addr, 22, f"sshd-{name}")
    except BaseException:
        bastion.close()
        raise
    return bastion
