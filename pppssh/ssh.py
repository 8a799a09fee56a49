"""The SSH side: connect with the host key checked, run remote commands, explain refusals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from collections.abc import Callable

from ._asyncssh import asyncssh
from .bridge import RAW_PTY_MODES, Bridge
from .config import SiteConfig
from .plan import Command

__all__ = [
    "Connection",
    "HostKeyRefused",
    "KeyRefused",
    "RemoteFailed",
    "TunnelError",
    "Unreachable",
    "connect",
    "open_bridge",
    "run_remote",
]

# SSH receive window for the PPP channel: OpenSSH's own size. It covers 160 Mbit/s at 100 ms
# RTT; a larger one buys nothing and, when the pty is slower than the link, holds that much
# data in small packets in memory (8 MiB cost 20 MB of peak RSS in bench.pump).
WINDOW = 2 * 1024 * 1024
# AES-GCM first: one AEAD call per packet in asyncssh, where chacha20-poly1305 takes several
# (about 30% more CPU per GB in bench.pump). No CBC cipher is offered at all.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
# Only SHA-2 MACs, encrypt-then-MAC first; with the AEAD ciphers above none is used at all.
# No UMAC: its library (nettle) is then never loaded (see _asyncssh.py).
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
MAX_PKTSIZE = 256 * 1024
MSG_IGNORE = 2  # RFC 4253, section 11.2


class TunnelError(Exception):
    """A failure explained in one line for the user."""


class Unreachable(TunnelError):
    """The remote gateway's SSH port did not answer."""


class HostKeyRefused(TunnelError):
    """The remote gateway's host key is unknown or has changed."""


class KeyRefused(TunnelError):
    """The remote account refused our key."""


class RemoteFailed(TunnelError):
    """A remote command exited non-zero."""

    def __init__(self, shown: str, status: int | None, stderr: str) -> None:
        """Remember what ran remotely and how it failed."""
        self.shown = shown
        self.status = status
        self.stderr = " | ".join(
            line.strip() for line in stderr.strip().splitlines() if line.strip()
        )
        detail = self.stderr or f"exit status {status}"
        super().__init__(f"remote `{shown}` failed: {detail}")


class Connection(asyncssh.SSHClient):
    """Client callbacks: remember why the connection ended."""

    def __init__(self) -> None:
        """Nothing lost yet."""
        self.lost: asyncio.Future[Exception | None] = asyncio.get_event_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        """Keepalive timeout, network error or a clean close."""
        if not self.lost.done():
            self.lost.set_result(exc)


def _known_hosts_name(cfg: SiteConfig) -> str:
    """The host pattern OpenSSH writes for this host and port."""
    return cfg.host if cfg.port == 22 else f"[{cfg.host}]:{cfg.port}"


async def _host_key_refusal(cfg: SiteConfig, exc: Exception) -> HostKeyRefused:
    """Explain an unknown or changed host key: fingerprint and how to accept it."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(cfg.host, cfg.port, config=None), cfg.connect_timeout
        )
    except (OSError, asyncssh.Error, TimeoutError):
        key = None
    if key is None:
        return HostKeyRefused(f"host key of {cfg.host}:{cfg.port} not accepted: {exc}")
    fingerprint = key.get_fingerprint("sha256")
    line = f"{_known_hosts_name(cfg)} {key.export_public_key('openssh').decode().strip()}"
    line = " ".join(line.split()[:3])  # drop the key comment
    try:
        trusted = asyncssh.match_known_hosts(str(cfg.known_hosts), cfg.host, cfg.host, cfg.port)
        known = bool(trusted[0])
    except (OSError, ValueError, asyncssh.Error):
        known = False
    kh = shlex.quote(str(cfg.known_hosts))
    name, quoted_line = shlex.quote(_known_hosts_name(cfg)), shlex.quote(line)
    if known:
        return HostKeyRefused(
            f"HOST KEY CHANGED: {cfg.host}:{cfg.port} now presents {key.get_algorithm()} "
            f"{fingerprint}, which does not match {kh}; someone may be intercepting the "
            f"connection. Nothing was started. If the gateway's key really changed, check the "
            f"fingerprint on it (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run: "
            f"ssh-keygen -R {name} -f {kh} && echo {quoted_line} >> {kh}"
        )
    return HostKeyRefused(
        f"unknown host key: {cfg.host}:{cfg.port} presents {key.get_algorithm()} {fingerprint}, "
        f"which is not in {kh}. Nothing was started. If that is the remote gateway's key "
        f"(check on it: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), accept it with: "
        f"echo {quoted_line} >> {kh}"
    )


def _load_identity(cfg: SiteConfig) -> asyncssh.SSHKey:
    """Read the client key, with a one-line error when it cannot be used."""
    try:
        return asyncssh.read_private_key(str(cfg.identity))
    except FileNotFoundError:
        raise TunnelError(f"identity {cfg.identity}: no such file") from None
    except PermissionError:
        raise TunnelError(f"identity {cfg.identity}: permission denied") from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        if "passphrase" in str(exc).lower():
            raise TunnelError(
                f"identity {cfg.identity} is protected by a passphrase; "
                "an unattended link needs a key without one"
            ) from None
        raise TunnelError(f"identity {cfg.identity}: {exc}") from None


async def connect(cfg: SiteConfig) -> tuple[asyncssh.SSHClientConnection, Connection]:
    """Open the SSH connection as the restricted user, host key checked, no ~/.ssh/config."""
    if not cfg.known_hosts.is_file():
        raise TunnelError(
            f"known_hosts file {cfg.known_hosts} does not exist; create it with the remote "
            f"gateway's host key (e.g. from its /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    key = _load_identity(cfg)
    client = Connection()
    try:
        conn = await asyncssh.connect(
            cfg.host,
            cfg.port,
            username=cfg.user,
            client_factory=lambda: client,
            client_keys=[key],
            known_hosts=str(cfg.known_hosts),
            config=None,  # ~/.ssh/config could switch host key checking off
            agent_path=None,
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            encryption_algs=list(CIPHERS),
            mac_algs=list(MACS),
            connect_timeout=cfg.connect_timeout,
            keepalive_interval=cfg.keepalive_interval,
            keepalive_count_max=cfg.keepalive_count_max,
        )
    except UnicodeDecodeError as exc:
        raise TunnelError(f"cannot read {cfg.known_hosts}: {exc}") from None
    except asyncssh.HostKeyNotVerifiable as exc:
        raise await _host_key_refusal(cfg, exc) from None
    except asyncssh.PermissionDenied:
        raise KeyRefused(
            f"{cfg.destination} refused the key {cfg.identity} (is it in "
            f"~{cfg.user}/.ssh/authorized_keys there?)"
        ) from None
    except TimeoutError:
        raise Unreachable(
            f"cannot connect to {cfg.host}:{cfg.port}: timed out after {cfg.connect_timeout:g}s"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        raise Unreachable(f"cannot connect to {cfg.host}:{cfg.port}: {reason}") from None
    except asyncssh.Error as exc:
        raise TunnelError(f"SSH to {cfg.destination} failed: {exc.reason}") from None
    skip_ignore_packets(conn)
    skip_packet_logging(conn)
    return conn, client


def skip_packet_logging(obj: object) -> bool:
    """Stop asyncssh from formatting a log line for every packet of obj (a connection or a
    channel) that its logger then drops: it only keeps them at debug level 3, which pppssh
    never sets. About 8 us per packet, a tenth of the receive path (bench.pump profile).
    Unchanged, and False, when the level is 3 or asyncssh is not as expected."""
    level = getattr(getattr(asyncssh, "logging", None), "logger", None)
    if getattr(level, "_debug_level", 3) >= 3:
        return False
    if not (hasattr(obj, "log_received_packet") and hasattr(obj, "log_sent_packet")):
        return False

    def drop(*_args: object, **_kwargs: object) -> None:
        pass

    obj.log_received_packet = drop
    obj.log_sent_packet = drop
    return True


def skip_ignore_packets(conn: asyncssh.SSHClientConnection) -> bool:
    """Stop asyncssh from sending an empty SSH_MSG_IGNORE before every packet.

    asyncssh does that once encryption is on, a countermeasure for CBC ciphers. With the
    ciphers pppssh offers (AEAD and CTR) it buys nothing and costs, per PPP frame, a second
    packet to encrypt, a second send() and a second packet for sshd to decrypt (28 us of a
    213 us frame round trip in bench.pump). Only this connection is changed; if asyncssh's
    internals are not as expected, nothing is, and False says so.
    """
    send = getattr(conn, "send_packet", None)
    if send is None or not hasattr(conn, "_enc_alg_cs"):
        return False

    def send_packet(pkttype: int, *args: bytes, **kwargs: object) -> None:
        cipher: bytes = conn._enc_alg_cs
        if pkttype == MSG_IGNORE and not cipher.endswith(b"-cbc"):
            return
        send(pkttype, *args, **kwargs)

    conn.send_packet = send_packet  # type: ignore[method-assign]
    return True


async def open_bridge(
    conn: asyncssh.SSHClientConnection,
    command: str,
    factory: Callable[[], Bridge] = Bridge,
    window: int = WINDOW,
    max_pktsize: int = MAX_PKTSIZE,
) -> Bridge:
    """Run command on a raw remote pty; return the Bridge that pumps its channel (attach a
    local pty master to it). The session Tunnel.up opens for the remote pppd, and the one
    bench.pump measures."""
    chan, session = await conn.create_session(
        factory, command, term_type="dumb", term_modes=RAW_PTY_MODES, encoding=None,
        window=window, max_pktsize=max_pktsize,
    )  # fmt: skip
    assert isinstance(session, Bridge)
    skip_packet_logging(chan)  # its PPP data packets: the bulk of all packets
    session.flush_per_read(conn)
    return session


async def run_remote(
    conn: asyncssh.SSHClientConnection, command: Command, timeout: float = 60.0
) -> str:
    """Run one command on the remote gateway (no pty); return stdout or raise RemoteFailed."""
    try:
        result = await asyncio.wait_for(
            conn.run(command.shown, check=False, errors="replace"), timeout
        )
    except TimeoutError:
        raise RemoteFailed(command.shown, None, f"no answer within {timeout:g}s") from None
    except (OSError, asyncssh.Error) as exc:
        raise RemoteFailed(command.shown, None, str(exc)) from None
    if result.exit_status != 0:
        stderr = result.stderr if isinstance(result.stderr, str) else ""
        raise RemoteFailed(command.shown, result.exit_status, stderr)
    return result.stdout if isinstance(result.stdout, str) else ""


_ADDR_LINE = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\S+)\s+peer\s+(\S+?)(?:/\d+)?\s")


def find_ppp_interface(ip_output: str, local: str, peer: str) -> str | None:
    """From `ip -o -4 addr show` output, the interface with address local and this peer."""
    for line in ip_output.splitlines():
        m = _ADDR_LINE.match(line)
        if m and m.group(2).split("/")[0] == local and m.group(3) == peer:
            return m.group(1).split("@")[0]
    return None


async def close_connection(conn: asyncssh.SSHClientConnection) -> None:
    """Close the connection and wait (bounded) for it to finish."""
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), 10)
