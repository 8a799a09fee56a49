"""A real in-process SSH server on 127.0.0.1, port 0, that records what its clients do.

Modelled on ronf/asyncssh tests/server.py: keys generated per test and written to a folder,
`asyncssh.listen` with a process_factory. The server never allocates a real pty (asyncssh
does not), and its line editor is off so bytes pass unchanged.

For attacks it can be made to offer only one host key type or algorithm, key exchange or
signature algorithm (asyncssh.listen options), and, with `force_host_key_alg`, to sign with
that host key algorithm whatever the client asked for, as a hostile server would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh

from pppssh import trust
from pppssh.config import SiteConfig, parse

USER = "pppssh"

Handler = Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]]


@dataclass
class SessionRecord:
    """What one client session asked for."""

    command: str | None
    term_type: str | None
    term_modes: dict[int, int]
    username: str | None


@dataclass
class Recorder:
    """Everything the server saw, in order."""

    connections: int = 0
    auth_begun: list[str] = field(default_factory=list)
    keys_offered: list[tuple[str, str, bool]] = field(default_factory=list)  # user, fp, ok
    auth_completed: list[str] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    forwarded: list[tuple[str, int]] = field(default_factory=list)  # direct-tcpip requests
    certificates: list[tuple[str, str, bool]] = field(default_factory=list)  # user, CA fp, ok


class _RecordingServer(asyncssh.SSHServer):
    """Accepts exactly one account with exactly one public key; records every step."""

    def __init__(
        self,
        rec: Recorder,
        user: str,
        authorized: asyncssh.SSHKey,
        algs: tuple[str, ...] | None = None,
        force: str | None = None,
        forwarding: bool = False,
        user_ca: asyncssh.SSHKey | None = None,
    ) -> None:
        """Remember where to record and whom to let in (host key algs to offer, to force;
        whether to forward TCP as a jump host does; a CA whose user certificates it trusts)."""
        self.rec = rec
        self.user = user
        self.authorized = authorized
        self.algs = algs
        self.force = force
        self.forwarding = forwarding
        self.user_ca = user_ca
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        """A jump host's direct-tcpip: allowed only when asked to forward; recorded."""
        self.rec.forwarded.append((dest_host, dest_port))
        return self.forwarding

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """A user certificate is accepted when signed by user_ca (TrustedUserCAKeys)."""
        ok = self.user_ca is not None and key.public_data == self.user_ca.public_data
        self.rec.certificates.append((username, key.get_fingerprint("sha256"), ok))
        return ok

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Count TCP connections that got as far as the SSH layer; turn hostile if asked."""
        self.conn = conn
        self.rec.connections += 1
        if self.algs is not None:  # offer only these host key algorithms, in this order
            keys = conn._server_host_keys  # type: ignore[attr-defined]
            chosen = {a.encode(): keys[a.encode()] for a in self.algs}
            conn._server_host_keys = chosen  # type: ignore[attr-defined]
            conn._server_host_key_algs = list(chosen)  # type: ignore[attr-defined]
        if self.force is not None:
            alg = self.force.encode()

            def choose(_client_algs: list[bytes]) -> bool:
                """Ignore what the client offered: sign with the forced algorithm."""
                keypair = conn._server_host_keys[alg]  # type: ignore[attr-defined]
                keypair.set_sig_algorithm(alg)
                conn._server_host_key = keypair  # type: ignore[attr-defined]
                return True

            conn.choose_server_host_key = choose  # type: ignore[method-assign]

    def begin_auth(self, username: str) -> bool:
        """Authentication is always required."""
        self.rec.auth_begun.append(username)
        return True

    def public_key_auth_supported(self) -> bool:
        """Only public keys."""
        return True

    def password_auth_supported(self) -> bool:
        """Never passwords."""
        return False

    def kbdint_auth_supported(self) -> bool:
        """Never keyboard-interactive."""
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """The configured user with the authorized key, nothing else."""
        ok = username == self.user and key.public_data == self.authorized.public_data
        self.rec.keys_offered.append((username, key.get_fingerprint("sha256"), ok))
        return ok

    def auth_completed(self) -> None:
        """Record who logged in."""
        assert self.conn is not None
        self.rec.auth_completed.append(self.conn.get_extra_info("username"))


class SSHTestServer:
    """`async with SSHTestServer(tmp_path, handler) as srv:` a listening server and its keys.

    Files written to `folder`: host key (ssh_host_ed25519_key), the client key pppssh uses
    (id_ed25519, authorized on the server), a second unauthorized client key
    (id_other), and known_hosts holding the server's key under `[127.0.0.1]:PORT`.
    """

    def __init__(
        self,
        folder: Path,
        handler: Handler | None = None,
        *,
        user: str = USER,
        host_key_type: str = "ssh-ed25519",
        client_key_type: str = "ssh-ed25519",
        host_key_algs: tuple[str, ...] | None = None,
        force_host_key_alg: str | None = None,
        more_host_key_types: tuple[str, ...] = (),
        host_ca: asyncssh.SSHKey | None = None,
        host_ca_sig_alg: str | None = None,
        forwarding: bool = False,
        user_ca: asyncssh.SSHKey | None = None,
        **listen: Any,
    ) -> None:
        """Generate the keys; nothing listens until entered."""
        self.forwarding = forwarding
        self.user_ca = user_ca
        self.folder = folder
        self.handler = handler
        self.user = user
        self.listen_options = listen
        self.host_key_algs = host_key_algs
        self.force_host_key_alg = force_host_key_alg
        self.rec = Recorder()
        self.host_key = asyncssh.generate_private_key(host_key_type)
        self.more_host_keys = [asyncssh.generate_private_key(t) for t in more_host_key_types]
        self.host_ca = host_ca
        self.host_ca_sig_alg = host_ca_sig_alg
        self.client_key = asyncssh.generate_private_key(client_key_type)
        self.other_key = asyncssh.generate_private_key("ssh-ed25519")
        self.identity = folder / "id_ed25519"
        self.other_identity = folder / "id_other"
        self.known_hosts = folder / "known_hosts"
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None
        self._top = trust.TOP

    @property
    def host_key_fingerprint(self) -> str:
        """SHA256:... of the server's host key, as ssh-keygen -l prints it."""
        return self.host_key.get_fingerprint("sha256")

    @property
    def host_key_line(self) -> str:
        """`[127.0.0.1]:PORT ssh-ed25519 AAAA...` as OpenSSH writes it (no comment)."""
        return f"[127.0.0.1]:{self.port} {self.key_text(self.host_key)}"

    @staticmethod
    def key_text(key: asyncssh.SSHKey) -> str:
        """`type base64` of a key's public half, as in known_hosts."""
        algo, blob = key.export_public_key("openssh").decode().split()[:2]
        return f"{algo} {blob}"

    async def __aenter__(self) -> SSHTestServer:
        """Write the key files and start listening on a free port.

        Within, trust.TOP is the folder: pppssh checks the key files from there down (a
        tmp_path lies under /tmp, mode 1777, which rightly is trusted by nobody).
        """
        self._top, trust.TOP = trust.TOP, str(self.folder)
        self.client_key.write_private_key(str(self.identity))
        self.other_key.write_private_key(str(self.other_identity))
        self.identity.chmod(0o600)
        self.other_identity.chmod(0o600)
        (self.folder / "authorized_keys").write_bytes(self.client_key.export_public_key())
        authorized = asyncssh.read_public_key(str(self.folder / "authorized_keys"))
        options: dict[str, Any] = {
            "encoding": None,
            "line_editor": False,
            "gss_host": None,
            "allow_scp": False,
        }
        options.update(self.listen_options)
        host_keys: list[Any] = [self.host_key, *self.more_host_keys]
        if self.host_ca is not None:  # the first host key with a certificate from host_ca
            sig: Any = self.host_ca_sig_alg or ()
            cert = self.host_ca.generate_host_certificate(
                self.host_key, "lab", principals=["127.0.0.1"], sig_alg=sig
            )
            host_keys[0] = (self.host_key, cert)
        self._server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=host_keys,
            server_factory=lambda: _RecordingServer(
                self.rec,
                self.user,
                authorized,
                self.host_key_algs,
                self.force_host_key_alg,
                self.forwarding,
                self.user_ca,
            ),
            process_factory=self._process,
            **options,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.known_hosts.write_text(self.host_key_line + "\n")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening and close every connection."""
        trust.TOP = self._top
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Record the session, then hand it to the test's handler (default: exit 0)."""
        self.rec.sessions.append(
            SessionRecord(
                command=process.command,
                term_type=process.term_type,
                term_modes=dict(process.term_modes),
                username=process.get_extra_info("username"),
            )
        )
        try:
            if self.handler is not None:
                await self.handler(process)
        except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, asyncssh.SignalReceived):
            pass
        except (BrokenPipeError, ConnectionError, asyncssh.DisconnectError):
            return
        if not process.is_closing():
            process.exit(0)

    def site_text(self, extra: str = "", **overrides: str) -> str:
        """A site file pointing at this server (name set, keys relative to the folder;
        extra: more lines for [remote])."""
        values = {
            "name": "lab",
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": self.user,
            "identity": self.identity.name,
            "known_hosts": self.known_hosts.name,
            "connect_timeout": "5",
            "keepalive_interval": "0",
            "helper": "no",
        }
        unknown = set(overrides) - set(values)
        assert not unknown, f"site_text does not know {unknown}"
        values.update(overrides)
        return (
            "[site]\n"
            f"name = {values['name']}\n"
            "[remote]\n"
            f"host = {values['host']}\n"
            f"port = {values['port']}\n"
            f"user = {values['user']}\n"
            f"identity = {values['identity']}\n"
            f"known_hosts = {values['known_hosts']}\n"
            f"connect_timeout = {values['connect_timeout']}\n"
            f"keepalive_interval = {values['keepalive_interval']}\n"
            f"helper = {values['helper']}\n"
            f"{extra}"
            "[ppp]\n"
            "local_address = 10.99.0.1\n"
            "remote_address = 10.99.0.2\n"
            "[networks]\n"
            "local = 10.1.0.0/24\n"
            "remote = 10.2.0.0/24\n"
        )

    def cfg(self, extra: str = "", **overrides: str) -> SiteConfig:
        """The SiteConfig of site_text(), as if read from <folder>/lab.conf."""
        return parse(self.site_text(extra, **overrides), self.folder / "lab.conf")
