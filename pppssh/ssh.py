"""The SSH side: connect as strictly as OpenSSH 9, run remote commands, explain refusals.

Strictness, in one place (connect_options): known_hosts is read by pppssh itself (trust,
then known_hosts.match with OpenSSH's rules) and handed to asyncssh as explicit key lists;
the identity is read through trust (secret: closed to group and others) and handed over as
a key, never as a path; key exchange, host key, signature and cipher algorithms are OpenSSH
9's client defaults that asyncssh has (no SHA-1, no DSA). asyncssh's client lets the server
choose the host key algorithm without checking it against the client's list, and accepts
any signature algorithm the host key supports: Connection checks both, as OpenSSH does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shlex
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import asyncssh_compat, known_hosts, proxy, queues, trust
from .asyncssh_compat import asyncssh
from .bridge import RAW_PTY_MODES, Bridge
from .config import NO_IDENTITY, SiteConfig
from .errors import (
    AlgorithmRefused,
    HostKeyRefused,
    KeyRefused,
    Missing,
    RemoteFailed,
    TunnelError,
    Unreachable,
    Untrusted,
)
from .plan import Command
from .sanitize import printable, valid_ifname

__all__ = [
    "CA_SIGNATURE_ALGS",
    "HOST_KEY_ALGS",
    "KEX_ALGS",
    "SIGNATURE_ALGS",
    "AlgorithmRefused",
    "Connection",
    "HostKeyRefused",
    "KeyRefused",
    "RemoteFailed",
    "TunnelError",
    "Unreachable",
    "connect",
    "connect_options",
    "first_hop",
    "load_identity",
    "open_bridge",
    "pin_address",
    "read_identity",
    "read_known_hosts",
    "run_remote",
]

# SSH receive window for the PPP channel: OpenSSH's own size. It covers 160 Mbit/s at 100 ms
# RTT; a larger one buys nothing and, when the pty is slower than the link, holds that much
# data in small packets in memory (8 MiB cost 20 MB of peak RSS in bench.pump).
LOG = logging.getLogger("pppssh.daemon.ssh")  # into the daemon log
WINDOW = queues.WINDOW_MAX
WINDOW_ADJUST_PARTS = 8  # a window sized to the path is given back in eighths
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
# No UMAC: its library (nettle) is then never loaded (see asyncssh_compat.py).
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
MAX_PKTSIZE = 256 * 1024


# OpenSSH 9's client defaults (`ssh -G`, myproposal.h), in its order of preference.
# mlkem768x25519-sha256 is first since 9.9; sntrup761 needs liboqs in asyncssh.
OPENSSH9_KEX = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
# CASignatureAlgorithms, and the plain half of PubkeyAcceptedAlgorithms (our own signatures)
OPENSSH9_SIGNATURES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
# HostKeyAlgorithms: certificates first, then the plain keys
OPENSSH9_HOST_KEY = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    *OPENSSH9_SIGNATURES,  # then the plain keys, in the same order
)
OPENSSH9_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
)
OPENSSH9_MACS = (
    "umac-64-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha1-etm@openssh.com",
    "umac-64@openssh.com",
    "umac-128@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "hmac-sha1",
)
AEAD = frozenset(
    {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}
)
# Why OpenSSH 9 leaves a name out, for the one-line refusal
WEAK = {
    "ssh-rsa": "SHA-1",
    "ssh-rsa-cert-v01@openssh.com": "SHA-1",
    "ssh-dss": "DSA",
    "ssh-dss-cert-v01@openssh.com": "DSA",
    "diffie-hellman-group1-sha1": "SHA-1",
    "diffie-hellman-group14-sha1": "SHA-1",
    "diffie-hellman-group-exchange-sha1": "SHA-1",
    "rsa1024-sha1": "SHA-1",
    "gss-group1-sha1": "SHA-1",
    "gss-group14-sha1": "SHA-1",
    "gss-gex-sha1": "SHA-1",
    "hmac-sha1": "SHA-1",
    "hmac-sha1-etm@openssh.com": "SHA-1",
    "hmac-md5": "MD5",
    "hmac-md5-etm@openssh.com": "MD5",
    "3des-cbc": "CBC",
    "aes128-cbc": "CBC",
    "aes192-cbc": "CBC",
    "aes256-cbc": "CBC",
}
# KEXINIT entries that name no algorithm (RFC 8308 ext-info, OpenSSH's strict kex)
PSEUDO_KEX = frozenset(
    {"ext-info-c", "ext-info-s", "kex-strict-c-v00@openssh.com", "kex-strict-s-v00@openssh.com"}
)
CERT_SUFFIX = "-cert-v01@openssh.com"


_KEX = asyncssh_compat.implemented_kex_algs()
_PUBLIC_KEY = asyncssh_compat.implemented_public_key_algs()
_CERTIFICATE = asyncssh_compat.implemented_certificate_algs()
KEX_ALGS = tuple(a for a in OPENSSH9_KEX if a in _KEX)
HOST_KEY_ALGS = tuple(a for a in OPENSSH9_HOST_KEY if a in _PUBLIC_KEY or a in _CERTIFICATE)
SIGNATURE_ALGS = tuple(a for a in OPENSSH9_SIGNATURES if a in _PUBLIC_KEY)
CA_SIGNATURE_ALGS = SIGNATURE_ALGS


def key_type(alg: str) -> str:
    """The key type a host key algorithm uses: rsa-sha2-512 is an ssh-rsa key."""
    if alg in ("rsa-sha2-256", "rsa-sha2-512"):
        return "ssh-rsa"
    if alg in ("rsa-sha2-256" + CERT_SUFFIX, "rsa-sha2-512" + CERT_SUFFIX):
        return "ssh-rsa" + CERT_SUFFIX
    return alg


def signature_alg(alg: str) -> str:
    """The signature algorithm a host key algorithm signs with."""
    if alg.endswith(CERT_SUFFIX):
        base = alg[: -len(CERT_SUFFIX)]
        return base + "@openssh.com" if base.startswith("sk-") else base
    return alg


def describe(alg: str) -> str:
    """An algorithm name for a message, with why OpenSSH 9 refuses it when it does."""
    note = WEAK.get(alg)
    return f"{alg} ({note})" if note else alg


def _string(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    """One SSH `string` at offset: its bytes and the offset after it."""
    (size,) = struct.unpack_from(">I", data, offset)
    end = offset + 4 + size
    if end > len(data):
        raise ValueError("truncated")
    return data[offset + 4 : end], end


def server_offer(conn: object) -> dict[str, list[str]] | None:
    """The algorithm lists of the server's KEXINIT as the client received it, if it did."""
    payload = asyncssh_compat.server_kexinit(conn)
    if payload is None:
        return None
    offset = 1 + 16 if payload[0] == 20 else 16  # SSH_MSG_KEXINIT, cookie
    lists: list[list[str]] = []
    try:
        for _ in range(6):
            names, offset = _string(payload, offset)
            lists.append([n for n in names.decode("ascii", "replace").split(",") if n])
    except (ValueError, struct.error):
        return None
    kex, host_key, cipher_cs, cipher_sc, mac_cs, mac_sc = lists
    return {
        "kex": [n for n in kex if n not in PSEUDO_KEX],
        "host_key": host_key,
        "cipher_cs": cipher_cs,
        "cipher_sc": cipher_sc,
        "mac_cs": mac_cs,
        "mac_sc": mac_sc,
    }


def _first_common(ours: Sequence[str], theirs: Sequence[str]) -> str | None:
    """The client's first choice the server also has (RFC 4253 7.1)."""
    return next((a for a in ours if a in theirs), None)


def offer_problem(
    where: str, offer: dict[str, list[str]], host_key_algs: Sequence[str] = HOST_KEY_ALGS
) -> str | None:
    """What in the server's offer has nothing in common with ours, in one line; or None."""
    checks: list[tuple[str, str, Sequence[str], Sequence[str]]] = [
        ("kex", "key exchange", KEX_ALGS, OPENSSH9_KEX),
        ("host_key", "host keys", host_key_algs, OPENSSH9_HOST_KEY),
        ("cipher_cs", "ciphers", CIPHERS, OPENSSH9_CIPHERS),
        ("cipher_sc", "ciphers", CIPHERS, OPENSSH9_CIPHERS),
    ]
    for direction in ("cs", "sc"):
        if _first_common(CIPHERS, offer[f"cipher_{direction}"]) not in AEAD:
            checks.append((f"mac_{direction}", "MACs", MACS, OPENSSH9_MACS))
    for kind, label, ours, openssh in checks:
        theirs = offer[kind]
        if _first_common(ours, theirs) is not None:
            continue
        names = ", ".join(describe(a) for a in theirs) or "no"
        if any(a in openssh for a in theirs):
            tail = "none of which pppssh uses (" + ", ".join(ours) + ")"
        else:
            tail = "which OpenSSH 9 refuses too"
        return printable(f"host {where} offers only {names} {label}, {tail}", 400)
    return None


class Connection(asyncssh.SSHClient):
    """Client callbacks: remember why the connection ended; check the host key's algorithm
    and signature as OpenSSH does before asyncssh matches the key."""

    def __init__(
        self,
        where: str = "",
        host_key_algs: Sequence[str] = HOST_KEY_ALGS,
        known: known_hosts.HostKeys | None = None,
    ) -> None:
        """Nothing lost yet; where is host:port for messages."""
        self.lost: asyncio.Future[Exception | None] = asyncio.get_event_loop().create_future()
        self.where = where
        self.host_key_algs = tuple(host_key_algs)
        self.known = known
        self.conn: asyncssh.SSHClientConnection | None = None
        self.presented: bytes | None = None  # the host key (or certificate) the server sent
        self.refusal: str | None = None  # why pppssh refused what the server did
        self.pending: list[tuple[str, asyncssh.SSHKeyPair]] = []  # keys still to offer
        self.offered: list[str] = []  # the keys offered, in order (the last one on success)
        self.accepted: str | None = None  # the key the server accepted
        self.sign_error: str | None = None  # why a security key could not sign
        self.hops: list[asyncssh.SSHClientConnection] = []  # jump hosts under this one
        self.first_peer: str | None = None  # the address of the path's TCP connection
        self.process: subprocess.Popen[bytes] | None = None  # a proxy command under this one

    def public_key_auth_requested(self) -> list[asyncssh.SSHKeyPair] | None:
        """The next key to offer (asyncssh asks when the one before was refused)."""
        if not self.pending:
            return None
        label, keypair = self.pending.pop(0)
        self.offered.append(label)
        _watch_signing(self, label, keypair)
        return [keypair]

    def auth_completed(self) -> None:
        """The key offered last is the one the server accepted."""
        self.accepted = self.offered[-1] if self.offered else None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        """Put the algorithm checks in front of asyncssh's host key validation (and refuse
        to go on, rather than go on unchecked, if this asyncssh has no such step)."""
        self.conn = conn

        def wrap(
            original: Callable[[bytes], asyncssh.SSHKey],
        ) -> Callable[[bytes], asyncssh.SSHKey]:
            """The checks around asyncssh's own validation (its known_hosts match)."""

            def validate(key_data: bytes) -> asyncssh.SSHKey:
                self.presented = key_data
                expected = self._check_host_key(conn, key_data)
                key: asyncssh.SSHKey = original(key_data)
                self._check_signatures(key, expected)
                return key

            return validate

        if not asyncssh_compat.wrap_host_key_validation(conn, wrap):
            self._refuse("this asyncssh has no validate_server_host_key to check host keys at")

    def _refuse(self, message: str) -> NoReturn:
        """Record why, and end the key exchange."""
        self.refusal = printable(message, 400)
        raise asyncssh.KeyExchangeFailed(self.refusal)

    def _check_host_key(self, conn: object, key_data: bytes) -> set[str]:
        """Refuse a host key whose type we did not agree on; return the signature algs
        the key exchange may then be signed with."""
        try:
            kind = _string(key_data)[0].decode("ascii")
        except (ValueError, struct.error, UnicodeDecodeError):
            self._refuse(f"host {self.where} sent a malformed host key")
        offer = server_offer(conn)
        if offer is not None:
            agreed = _first_common(self.host_key_algs, offer["host_key"])
            if agreed is None:
                self._refuse(
                    offer_problem(self.where, offer, self.host_key_algs)
                    or f"host {self.where}: no host key algorithm in common"
                )
            if kind != key_type(agreed):
                self._refuse(
                    f"host {self.where} sent a {describe(kind)} host key after agreeing on "
                    f"{agreed}; OpenSSH 9 refuses that too"
                )
            expected = {signature_alg(agreed)}
        else:
            expected = {signature_alg(a) for a in self.host_key_algs if key_type(a) == kind}
            if not expected:
                self._refuse(
                    f"host {self.where} sent a {describe(kind)} host key, which OpenSSH 9 "
                    "refuses too"
                )
        if kind.endswith(CERT_SUFFIX):
            ca_alg = _certificate_signature_alg(key_data)
            if ca_alg not in CA_SIGNATURE_ALGS:
                self._refuse(
                    f"host {self.where} presented a certificate signed with "
                    f"{describe(ca_alg or 'an unreadable signature')}, which OpenSSH 9 "
                    "refuses too"
                )
        return expected

    def _check_signatures(self, key: asyncssh.SSHKey, expected: set[str]) -> None:
        """Make key accept only signatures made with an expected algorithm."""

        def wrap(verify: Callable[[bytes, bytes], bool]) -> Callable[[bytes, bytes], bool]:
            """Check the algorithm, then let asyncssh check the signature."""

            def strict_verify(data: bytes, sig: bytes) -> bool:
                try:
                    alg = _string(sig)[0].decode("ascii")
                except (ValueError, struct.error, UnicodeDecodeError):
                    return False
                if alg not in expected:
                    self.refusal = printable(
                        f"host {self.where} signed the key exchange with {describe(alg)} "
                        f"instead of {', '.join(sorted(expected))}; OpenSSH 9 refuses that too",
                        400,
                    )
                    return False
                return bool(verify(data, sig))

            return strict_verify

        asyncssh_compat.wrap_signature_check(key, wrap)

    def connection_lost(self, exc: Exception | None) -> None:
        """Keepalive timeout, network error or a clean close; the jump hosts and proxy
        command under this connection go with it."""
        if not self.lost.done():
            self.lost.set_result(exc)
        for hop in reversed(self.hops):
            hop.close()
        if self.process is not None:
            proxy.stop_command(self.process)
            self.process = None


def _certificate_signature_alg(cert_data: bytes) -> str | None:
    """The algorithm of the CA's signature on an OpenSSH certificate (its last field)."""
    try:
        cert = asyncssh.import_certificate(
            _string(cert_data)[0] + b" " + base64.b64encode(cert_data)
        )
        signer_key = asyncssh_compat.certificate_signer(cert)
        if signer_key is None:
            return None
        signer = _wire_string(signer_key)
        at = cert_data.rfind(signer)
        if at < 0:
            return None
        signature, end = _string(cert_data, at + len(signer))
        if end != len(cert_data):
            return None
        return _string(signature)[0].decode("ascii")
    except (ValueError, struct.error, UnicodeDecodeError, asyncssh.KeyImportError):
        return None


def _wire_string(data: bytes) -> bytes:
    """An SSH `string`: length, then bytes."""
    return struct.pack(">I", len(data)) + data


def _known_hosts_name(cfg: SiteConfig) -> str:
    """The host pattern OpenSSH writes for this host and port."""
    return known_hosts.lookup_name(cfg.host, cfg.port)


def read_known_hosts(
    cfg: SiteConfig, host: str | None = None, port: int | None = None
) -> known_hosts.HostKeys:
    """The keys cfg's known_hosts (checked and read through trust) holds for its host (or
    for a jump host's host and port)."""
    try:
        data = trust.read_trusted(cfg.known_hosts, "known_hosts").data
    except Missing:
        raise TunnelError(
            f"known_hosts file {cfg.known_hosts} does not exist; create it with the remote "
            f"gateway's host key (e.g. from its /etc/ssh/ssh_host_ed25519_key.pub)"
        ) from None
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    return known_hosts.match(data, host or cfg.host, port or cfg.port)


def host_key_algs(known: known_hosts.HostKeys) -> tuple[str, ...]:
    """HOST_KEY_ALGS with those known_hosts has keys for first (sshconnect2.c
    order_hostkeyalgs): a server with several keys then shows the one we know."""
    first = [
        a
        for a in HOST_KEY_ALGS
        if (a.endswith(CERT_SUFFIX) and known.ca_keys) or key_type(a) in known.key_types()
    ]
    return tuple(first) + tuple(a for a in HOST_KEY_ALGS if a not in first)


def read_identity(path: Path, what: str = "identity") -> asyncssh.SSHKey:
    """A private key file, checked and read through trust (secret), as an asyncssh key."""
    try:
        data = trust.read_trusted(path, what, secret=True).data
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        if encrypted_key(data):
            raise TunnelError(
                f"{what} {path} is protected by a passphrase; "
                "an unattended link needs a key without one"
            ) from None
        raise TunnelError(f"{what} {path}: {printable(str(exc))}") from None


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
OPENSSH_KEY_MAGIC = b"openssh-key-v1\0"


def encrypted_key(data: bytes) -> bool:
    """Whether a private key file is encrypted (it needs a passphrase), read from its format:
    OpenSSH's (cipher name not "none"), PKCS#8's ENCRYPTED PRIVATE KEY, a PEM Proc-Type
    ENCRYPTED header, PuTTY's Encryption line."""
    if re.search(rb"^Encryption: *(?!none\s)\S", data, re.M):
        return True
    m = _PEM.search(data)
    if m is None:
        return False
    kind, body = m.groups()
    if kind == b"ENCRYPTED PRIVATE KEY" or re.search(rb"^Proc-Type: *4, *ENCRYPTED", body, re.M):
        return True
    if kind != b"OPENSSH PRIVATE KEY":
        return False
    try:
        blob = base64.b64decode(b"".join(body.split()), validate=True)
        if not blob.startswith(OPENSSH_KEY_MAGIC):
            return False
        return _string(blob, len(OPENSSH_KEY_MAGIC))[0] != b"none"
    except (ValueError, struct.error):
        return False


def load_identity(cfg: SiteConfig) -> asyncssh.SSHKey:
    """The site's client key, with a one-line error when it cannot be used."""
    if cfg.identity == NO_IDENTITY:
        raise TunnelError(f"{cfg.path}: no identity file (the keys are the agent's)")
    return read_identity(cfg.identity)


def read_certificate(path: Path) -> asyncssh.SSHCertificate:
    """An OpenSSH user certificate, checked and read through trust."""
    try:
        data = trust.read_trusted(path, "certificate").data
        return asyncssh.import_certificate(data)
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise TunnelError(f"certificate {path}: {printable(str(exc))}") from None


def _label(key: asyncssh.SSHKey, source: str) -> str:
    """How check names a key: its algorithm, SHA256 fingerprint and where it came from (and
    for a FIDO key, that it is one and, from its file, whether it wants a touch)."""
    alg = key.get_algorithm()
    if alg.startswith("sk-"):
        source += ", FIDO security key"
        touch = asyncssh_compat.sk_touch_required(key)
        if touch is not None:
            source += ", touch required" if touch else ", no touch required"
    return f"{alg} {key.get_fingerprint('sha256')} ({source})"


def _watch_signing(client: Connection, label: str, pair: asyncssh.SSHKeyPair) -> None:
    """For a FIDO key: remember why its authenticator could not sign (absent, no touch, a
    PIN), which asyncssh only logs before it tries the next key, for a one-line refusal."""
    if not pair.algorithm.startswith(b"sk-"):
        return
    source = label.partition("(")[2].partition(",")[0]

    def wrap(original: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """The key's own signing, its failure kept."""

        def sign(data: bytes) -> bytes:
            """Sign, or remember why the authenticator did not."""
            try:
                return original(data)
            except ValueError as exc:
                client.sign_error = (
                    f"security key {source}: its authenticator cannot sign: "
                    f"{printable(str(exc), 200)}"
                )
                raise

        return sign

    asyncssh_compat.wrap_signing(pair, wrap)


def file_offers(identity: Path, certificate: Path | None) -> list[tuple[str, asyncssh.SSHKeyPair]]:
    """The identity file's key (with its certificate first, when one is given) to offer."""
    key = read_identity(identity)
    offers: list[tuple[str, asyncssh.SSHKeyPair]] = []
    if certificate is not None:
        cert = read_certificate(certificate)
        if cert.key.public_data != key.public_data:
            raise TunnelError(f"certificate {certificate} is not for the key in {identity}")
        for pair in asyncssh.load_keypairs([(key, cert)]):
            offers.append((_label(key, f"{identity} with certificate {certificate}"), pair))
    for pair in asyncssh.load_keypairs([key]):
        offers.append((_label(key, str(identity)), pair))
    return offers


def agent_socket(cfg: SiteConfig) -> tuple[int, str]:
    """The agent socket, checked: root's (or ours), in a directory that is root's and closed to
    group and others. Returns the directory's descriptor (close it) and a path through it, so
    that what was checked is what is connected to."""
    path = os.environ.get("SSH_AUTH_SOCK", "") if cfg.agent == "env" else cfg.agent
    if not path.startswith("/") or "\0" in path:
        raise TunnelError("agent = env, but SSH_AUTH_SOCK is not an absolute path")
    parent, name = os.path.split(path)
    owners = {0, os.geteuid()}
    try:
        dfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TunnelError(f"agent socket {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(dfd)
        if st.st_uid not in owners or st.st_mode & 0o077:
            raise TunnelError(
                f"agent socket {printable(path)}: its directory is owned by uid {st.st_uid} "
                f"with mode {stat.S_IMODE(st.st_mode):04o}; only an agent in a directory "
                "that is root's alone (0700) is used"
            )
        try:
            sst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            raise TunnelError(f"agent socket {printable(path)}: {exc.strerror}") from None
        if not stat.S_ISSOCK(sst.st_mode) or sst.st_uid not in owners:
            raise TunnelError(
                f"agent socket {printable(path)} is not a socket owned by root "
                f"(uid {sst.st_uid}); only root's own agent is used"
            )
    except BaseException:
        os.close(dfd)
        raise
    return dfd, f"/proc/self/fd/{dfd}/{name}"


async def agent_offers(
    cfg: SiteConfig,
) -> tuple[list[tuple[str, asyncssh.SSHKeyPair]], asyncssh.SSHAgentClient]:
    """The keys (and certificates) the site's agent holds; close the client after login."""
    dfd, path = agent_socket(cfg)
    try:
        agent = await asyncio.wait_for(asyncssh.connect_agent(path), cfg.connect_timeout)
        if agent is None:
            raise TunnelError(f"agent socket {cfg.agent}: cannot connect")
        try:
            pairs = await asyncio.wait_for(agent.get_keys(), cfg.connect_timeout)
        except (OSError, asyncssh.Error, ValueError, TimeoutError) as exc:
            agent.close()
            raise TunnelError(f"agent socket {cfg.agent}: {printable(str(exc))}") from None
    except (OSError, TimeoutError) as exc:
        raise TunnelError(f"agent socket {cfg.agent}: {printable(str(exc))}") from None
    finally:
        os.close(dfd)
    offers = []
    for pair in pairs:
        try:
            text = _string(pair.public_data)[0] + b" " + base64.b64encode(pair.public_data)
            if text.split(b" ", 1)[0].endswith(CERT_SUFFIX.encode()):
                label = _label(asyncssh.import_certificate(text).key, "agent, with certificate")
            else:
                label = _label(asyncssh.import_public_key(text), "agent")
        except (asyncssh.KeyImportError, ValueError, struct.error):
            continue  # a key this asyncssh cannot use
        offers.append((label, pair))
    return offers, agent


def _pin(cfg: SiteConfig) -> str | None:
    """The token's user PIN, from its root-only file (first line), or None."""
    if cfg.pkcs11_pin_file is None:
        return None
    try:
        data = trust.read_trusted(cfg.pkcs11_pin_file, "pkcs11_pin_file", secret=True).data
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    try:
        return data.decode("utf-8").splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        raise TunnelError(f"pkcs11_pin_file {cfg.pkcs11_pin_file}: not UTF-8 text") from None


# (provider, sha256 of a PIN) the token refused: never offered to it again by this process,
# since a token locks itself after a few wrong PINs and a reconnecting daemon would use them up
_REFUSED_PINS: set[tuple[str, str]] = set()


def load_token_keys(cfg: SiteConfig) -> list[tuple[str, asyncssh.SSHKeyPair]]:
    """The keys on cfg's PKCS#11 token, labelled for check; one-line errors for a provider
    that fails the trust checks, a missing python-pkcs11, a wrong PIN or no token."""
    provider = cfg.pkcs11_provider
    try:
        real = trust.check_file(provider, "pkcs11_provider").path
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    try:
        import pkcs11
    except ImportError:
        raise TunnelError(
            f"pkcs11_provider {provider}: PKCS#11 keys need the python-pkcs11 package "
            "(pip install python-pkcs11)"
        ) from None
    from pkcs11 import exceptions as p11

    pin = _pin(cfg)
    tried = (str(real), hashlib.sha256((pin or "").encode()).hexdigest())
    if pin is not None and tried in _REFUSED_PINS:
        raise TunnelError(
            f"PKCS#11 token of {provider}: the PIN in {cfg.pkcs11_pin_file} was refused "
            "before and is not tried again (a token locks after a few); correct the file"
        )
    try:
        pairs: list[asyncssh.SSHKeyPair] = []
        for slot in pkcs11.lib(str(real)).get_slots(token_present=True):
            token = slot.get_token()
            if token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:  # not a blank slot
                pairs += asyncssh.load_pkcs11_keys(
                    str(real), pin, load_certs=False, token_serial=token.serial
                )
    except p11.PinIncorrect:
        _REFUSED_PINS.add(tried)
        raise TunnelError(
            f"PKCS#11 token of {provider}: the PIN in {cfg.pkcs11_pin_file} is wrong"
        ) from None
    except p11.PinLocked:
        raise TunnelError(f"PKCS#11 token of {provider}: its PIN is locked") from None
    except (p11.PKCS11Error, RuntimeError, OSError, ValueError) as exc:
        why = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        raise TunnelError(f"PKCS#11 token of {provider}: {printable(why, 200)}") from None
    offers: list[tuple[str, asyncssh.SSHKeyPair]] = []
    for pair in pairs:
        key = asyncssh.import_public_key(
            _string(pair.public_data)[0] + b" " + base64.b64encode(pair.public_data)
        )
        name = printable(pair.get_comment() or "", 64)
        offers.append((_label(key, f"PKCS#11 token {provider}, key {name}"), pair))
    if not offers:
        raise TunnelError(f"PKCS#11 token of {provider}: no RSA or ECDSA key found on it")
    return offers


async def token_offers(cfg: SiteConfig) -> list[tuple[str, asyncssh.SSHKeyPair]]:
    """load_token_keys off the event loop (a token may be slow), bounded by connect_timeout."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(load_token_keys, cfg), cfg.connect_timeout)
    except TimeoutError:
        raise TunnelError(
            f"PKCS#11 token of {cfg.pkcs11_provider}: no answer in {cfg.connect_timeout:g}s"
        ) from None


def first_hop(cfg: SiteConfig) -> tuple[str, int]:
    """Where the SSH path's TCP connection goes, as configured: the proxy, else the first
    jump host, else the remote gateway (for `routes --print`); SiteConfig.first_hop."""
    return cfg.first_hop


def pin_address(client: Connection) -> str | None:
    """The address of the connected path's TCP peer (proxy, first jump host or gateway), for
    the full tunnel's host route; None when a proxy command carries it."""
    return client.first_peer


def connect_options(
    cfg: SiteConfig,
    client: Connection | None = None,
    *,
    username: str | None = None,
    client_keys: Sequence[asyncssh.SSHKey] | None = None,
    default_keys: bool = False,
) -> dict[str, Any]:
    """asyncssh.connect keywords for cfg's remote gateway, as strict as OpenSSH 9.

    known_hosts and the identity are read here (through trust) and passed as keys. The
    login is cfg.user with cfg's identity unless username/client_keys say otherwise;
    default_keys=True leaves the keys to asyncssh's defaults (ssh-agent, ~/.ssh/id_*),
    for an administrator's own login. client, if given, is the Connection asyncssh will use.
    """
    offers = None
    if not default_keys:
        if client_keys:
            offers = [(_label(k, "given"), p) for k in client_keys
                      for p in asyncssh.load_keypairs([k])]  # fmt: skip
        else:
            offers = file_offers(cfg.identity, cfg.certificate)
    return hop_options(cfg, cfg.host, cfg.port, username or cfg.user, offers, client)


def hop_options(
    cfg: SiteConfig,
    host: str,
    port: int,
    username: str,
    offers: Sequence[tuple[str, asyncssh.SSHKeyPair]] | None,
    client: Connection | None = None,
) -> dict[str, Any]:
    """asyncssh.connect keywords for one SSH hop (a jump host or the gateway), the same for
    every hop: its keys from cfg's known_hosts under its own name, OpenSSH 9's algorithms,
    public keys only, offered one at a time (offers None: asyncssh's defaults)."""
    known = read_known_hosts(cfg, host, port)
    algs = host_key_algs(known)
    where = f"{host}:{port}"
    if client is None:
        client = Connection(where, algs, known)
    else:
        client.where, client.host_key_algs, client.known = where, algs, known
    chosen = client
    options: dict[str, Any] = {
        "username": username,
        "client_factory": lambda: chosen,
        "known_hosts": known.trusted(),  # explicit keys: asyncssh matches no names
        "x509_trusted_certs": None,  # OpenSSH has no X.509 host certificates
        "config": None,  # ~/.ssh/config could switch host key checking off
        "password_auth": False,
        "kbdint_auth": False,
        "gss_auth": False,
        "gss_kex": False,
        "host_based_auth": False,
        "kex_algs": list(KEX_ALGS),
        "server_host_key_algs": list(algs),
        "signature_algs": list(SIGNATURE_ALGS),
        "encryption_algs": list(CIPHERS),
        "mac_algs": list(MACS),
        "connect_timeout": cfg.connect_timeout,
        "keepalive_interval": cfg.keepalive_interval,
        "keepalive_count_max": cfg.keepalive_count_max,
    }
    if offers is not None:
        if not offers:
            raise TunnelError(f"no key to offer to {username}@{where}")
        # the first key now, the others one at a time as each is refused (auth_requested)
        label, first = offers[0]
        client.pending = list(offers[1:])
        client.offered = [label]
        _watch_signing(client, label, first)
        options["client_keys"] = [first]
        options["agent_path"] = None
    return options


def _host_key_refusal(
    cfg: SiteConfig,
    client: Connection,
    exc: Exception,
    host: str | None = None,
    port: int | None = None,
) -> HostKeyRefused:
    """Explain an unknown, changed or revoked host key: fingerprint and how to accept it
    (for the gateway, or the jump host at host:port)."""
    if host is not None and port is not None:
        cfg = dataclasses.replace(cfg, host=host, port=port)
    key: asyncssh.SSHKey | None = None
    cert = False
    data = client.presented
    if data:
        try:
            text = _string(data)[0] + b" " + base64.b64encode(data)
            cert = text.split(b" ", 1)[0].decode("ascii", "replace").endswith(CERT_SUFFIX)
            key = (
                asyncssh.import_certificate(text).key if cert else asyncssh.import_public_key(text)
            )
        except (ValueError, struct.error, asyncssh.KeyImportError):
            key = None
    if key is None:
        return HostKeyRefused(
            f"host key of {cfg.host}:{cfg.port} not accepted: {printable(str(exc))}"
        )
    known = client.known or known_hosts.HostKeys(_known_hosts_name(cfg))
    fingerprint = key.get_fingerprint("sha256")
    line = f"{_known_hosts_name(cfg)} {key.export_public_key('openssh').decode().strip()}"
    line = " ".join(line.split()[:3])  # drop the key comment
    kh = shlex.quote(str(cfg.known_hosts))
    name, quoted_line = shlex.quote(_known_hosts_name(cfg)), shlex.quote(line)
    if known.is_revoked(key):
        return HostKeyRefused(
            f"REVOKED HOST KEY: {cfg.host}:{cfg.port} presents {key.get_algorithm()} "
            f"{fingerprint}, which {kh} marks @revoked. Nothing was started."
        )
    if cert:
        return HostKeyRefused(
            f"host certificate of {cfg.host}:{cfg.port} not accepted ({printable(str(exc))}); "
            f"its key is {key.get_algorithm()} {fingerprint}. Nothing was started. To trust "
            f"that key itself (check on the gateway: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub): echo {quoted_line} >> {kh}"
        )
    if known.host_keys:
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


def _signature_refusal(client: Connection, who: str) -> str | None:
    """When the server takes only signatures OpenSSH 9 will not make (ssh-rsa SHA-1): why."""
    server_sig_algs = asyncssh_compat.server_sig_algs(client.conn)
    if server_sig_algs is None:
        return None
    theirs = sorted(server_sig_algs)
    if not theirs or set(theirs) & set(SIGNATURE_ALGS):
        return None
    shown = ", ".join(describe(a) for a in theirs)
    return printable(
        f"{who} accepts only {shown} signatures (server-sig-algs), which OpenSSH 9 refuses "
        "to make too; use an ed25519 key",
        400,
    )


async def connect(
    cfg: SiteConfig,
    *,
    username: str | None = None,
    client_keys: Sequence[asyncssh.SSHKey] | None = None,
    default_keys: bool = False,
) -> tuple[asyncssh.SSHClientConnection, Connection]:
    """Open the SSH connection (as cfg.user with cfg's keys unless told otherwise), through
    the site's proxy and jump hosts, each hop as strict as OpenSSH 9, no ~/.ssh/config;
    failures are one-line TunnelErrors. Connection.pin_address: the path's TCP peer."""
    agent: asyncssh.SSHAgentClient | None = None
    opened: list[asyncssh.SSHClientConnection] = []
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    try:
        offers: list[tuple[str, asyncssh.SSHKeyPair]] | None = None
        if client_keys:
            offers = [(_label(k, "given"), p) for k in client_keys
                      for p in asyncssh.load_keypairs([k])]  # fmt: skip
        elif not default_keys:
            offers = []
            if cfg.agent:
                offers, agent = await agent_offers(cfg)
            if cfg.pkcs11_provider:
                offers += await token_offers(cfg)
            if cfg.identity != NO_IDENTITY:
                offers += file_offers(cfg.identity, cfg.certificate)
        host, port = (cfg.jump[0].host, cfg.jump[0].port) if cfg.jump else (cfg.host, cfg.port)
        first_peer: str | None = None
        if cfg.proxy is not None:
            auth = proxy.read_auth(cfg.proxy_auth) if cfg.proxy_auth is not None else None
            sock = await proxy.open_proxy(cfg.proxy, host, port, cfg.connect_timeout, auth)
            first_peer = str(sock.getpeername()[0])
        elif cfg.proxy_command:
            sock, process = await proxy.open_command(cfg.proxy_command, host, port)
        tunnel: asyncssh.SSHClientConnection | None = None
        for hop in cfg.jump:
            hop_offers = offers
            if cfg.jump_identity is not None and not client_keys and not default_keys:
                hop_offers = file_offers(cfg.jump_identity, None)
            conn, _ = await _connect_hop(
                cfg, hop.host, hop.port, hop.user, hop_offers, sock, tunnel, "jump host "
            )
            sock, tunnel = None, conn
            opened.append(conn)
            if first_peer is None and process is None:
                first_peer = str(conn.get_extra_info("peername")[0])
        conn, client = await _connect_hop(
            cfg, cfg.host, cfg.port, username or cfg.user, offers, sock, tunnel, "",
            custom=bool(client_keys) or default_keys,
        )  # fmt: skip
        sock = None
    except BaseException:
        for hop_conn in reversed(opened):
            hop_conn.close()
        if process is not None:
            proxy.stop_command(process)
        if sock is not None:
            sock.close()
        raise
    finally:
        if agent is not None:
            agent.close()
    if first_peer is None and process is None:
        first_peer = str(conn.get_extra_info("peername")[0])
    client.hops, client.process, client.first_peer = opened, process, first_peer
    return conn, client


async def _connect_hop(
    cfg: SiteConfig,
    host: str,
    port: int,
    user: str,
    offers: Sequence[tuple[str, asyncssh.SSHKeyPair]] | None,
    sock: socket.socket | None,
    tunnel: asyncssh.SSHClientConnection | None,
    role: str,
    custom: bool = False,
) -> tuple[asyncssh.SSHClientConnection, Connection]:
    """One SSH hop (over sock, or tunnelled through the hop before it); one-line errors."""
    client = Connection(f"{host}:{port}")
    options = hop_options(cfg, host, port, user, offers, client)
    who = f"{user}@{host}:{port}"
    if sock is not None:
        options["sock"] = sock
    if tunnel is not None:
        options["tunnel"] = tunnel
    try:
        conn = await asyncssh.connect(host, port, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        refusal = _host_key_refusal(cfg, client, exc, host, port)
        raise HostKeyRefused(role + str(refusal) if role else str(refusal)) from None
    except asyncssh.PermissionDenied:
        if client.sign_error:
            raise KeyRefused(f"{role}{client.sign_error}") from None
        weak = _signature_refusal(client, who)
        if weak:
            raise AlgorithmRefused(weak) from None
        if custom or offers is None:
            raise KeyRefused(f"{who} refused the login") from None
        if (not cfg.agent and not cfg.pkcs11_provider and cfg.certificate is None
                and len(client.offered) == 1):  # fmt: skip
            key_file = cfg.jump_identity if role and cfg.jump_identity else cfg.identity
            raise KeyRefused(
                f"{role}{who} refused the key {key_file} (is it in "
                f"~{user}/.ssh/authorized_keys there?)"
            ) from None
        tried = "; ".join(client.offered) or "no key"
        raise KeyRefused(
            f"{role}{who} refused the keys offered ({printable(tried, 300)}; is the key in "
            f"~{user}/.ssh/authorized_keys there?)"
        ) from None
    except TimeoutError:
        raise Unreachable(
            f"cannot connect to {role}{host}:{port}: timed out after {cfg.connect_timeout:g}s"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        raise Unreachable(f"cannot connect to {role}{host}:{port}: {reason}") from None
    except asyncssh.ChannelOpenError as exc:
        raise Unreachable(
            f"cannot connect to {host}:{port} through the jump host: {printable(exc.reason)}"
        ) from None
    except asyncssh.Error as exc:
        if client.refusal:
            raise AlgorithmRefused(client.refusal) from None
        offer = server_offer(client.conn)
        problem = offer_problem(client.where, offer, client.host_key_algs) if offer else None
        if problem:
            raise AlgorithmRefused(problem) from None
        raise TunnelError(f"SSH to {role}{who} failed: {printable(exc.reason)}") from None
    asyncssh_compat.skip_ignore_packets(conn)
    asyncssh_compat.skip_packet_logging(conn)
    return conn, client


async def open_bridge(
    conn: asyncssh.SSHClientConnection,
    command: str,
    factory: Callable[[], Bridge] = Bridge,
    window: int = WINDOW,
    max_pktsize: int = MAX_PKTSIZE,
    cfg: SiteConfig | None = None,
) -> Bridge:
    """Run command on a raw remote pty; return the Bridge that pumps its channel (attach a
    local pty master to it). The session the lifecycle opens for the remote pppd, and the one
    bench.pump measures. With cfg, its SSH socket and window levers apply (tune_link)."""
    tuning = tune_link(conn, cfg) if cfg is not None else None
    if tuning is not None:
        window = tuning.window
        max_pktsize = min(max_pktsize, max(queues.WINDOW_MIN, window // 2))
    chan, session = await conn.create_session(
        factory, command, term_type="dumb", term_modes=RAW_PTY_MODES, encoding=None,
        window=window, max_pktsize=max_pktsize,
    )  # fmt: skip
    assert isinstance(session, Bridge)
    asyncssh_compat.skip_packet_logging(chan)  # its PPP data packets: the bulk of all packets
    session.flush_per_read(conn)
    if tuning is not None and cfg is not None:
        if window < WINDOW:  # a window near the BDP: give it back as it is used, not at half
            asyncssh_compat.eager_window_adjust(chan, max(1, window // WINDOW_ADJUST_PARTS))
        if tuning.sock_fd >= 0 and tuning.notsent_lowat:
            session.send_limit(cfg.tcp_notsent_lowat, tuning.sock_fd, codel=cfg.pump_codel)
        session.delay_control(
            cfg.delay_target / 1000, cfg.delay_target_up / 1000, tuning.sock_fd,
            cfg.window_target / 1000, cfg.window_target_up / 1000,
        )  # fmt: skip
    return session


@dataclasses.dataclass(frozen=True)
class LinkTuning:
    """What tune_link applied to the SSH connection: the socket's congestion control as in
    effect (None: no TCP socket of ours), TCP_NOTSENT_LOWAT, the handshake's RTT, the window."""

    congestion: str | None
    notsent_lowat: bool
    rtt: float | None
    window: int
    sock_fd: int = -1


def tune_link(conn: asyncssh.SSHClientConnection, cfg: SiteConfig) -> LinkTuning:
    """Apply the site's socket levers to the SSH connection's TCP socket, and size the window
    from its RTT and cfg.bandwidth. Through a proxy, a proxy command or jump hosts the socket
    does not reach the gateway (or is not ours): the window stays at its default there."""
    extra = getattr(conn, "get_extra_info", None)
    raw = extra("socket") if callable(extra) else None
    fd = raw.fileno() if raw is not None else -1
    direct = cfg.proxy is None and not cfg.proxy_command and not cfg.jump
    inet = (socket.AF_INET, socket.AF_INET6)
    if raw is None or fd < 0 or raw.type != socket.SOCK_STREAM or raw.family not in inet:
        return LinkTuning(None, False, None, WINDOW)
    sock = socket.socket(fileno=os.dup(fd))  # the same socket, for setsockopt/getsockopt
    try:
        congestion = queues.set_congestion(sock, cfg.tcp_congestion)
        auto = cfg.tcp_notsent_lowat == queues.NOTSENT_AUTO
        first = queues.AUTO_MIN if auto else cfg.tcp_notsent_lowat
        lowat = bool(first) and queues.set_notsent_lowat(sock, first)
        rtt = queues.tcp_rtt(sock) if direct else None
        paced = bool(cfg.pace and cfg.bandwidth) and queues.set_pacing(sock, cfg.bandwidth)
    finally:
        sock.close()
    tuning = LinkTuning(congestion, lowat, rtt, queues.channel_window(cfg.bandwidth, rtt), fd)
    LOG.info(
        "SSH socket: congestion control %s, notsent limit %s, paced %s, RTT %s, window %d",
        congestion or "none",
        (f"auto (from {first})" if auto else first) if lowat else "none",
        f"{cfg.bandwidth * queues.PACING_SHARE:g} Mbit/s" if paced else "no",
        f"{rtt * 1000:.1f} ms" if rtt is not None else "unknown", tuning.window,
    )  # fmt: skip
    return tuning


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
        raise RemoteFailed(command.shown, None, str(exc)) from None  # made printable there
    if result.exit_status != 0:
        stderr = result.stderr if isinstance(result.stderr, str) else ""
        raise RemoteFailed(command.shown, result.exit_status, stderr)
    return result.stdout if isinstance(result.stdout, str) else ""


_ADDR_LINE = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\S+)\s+peer\s+(\S+?)(?:/\d+)?\s")


def find_ppp_interface(ip_output: str, local: str, peer: str) -> str | None:
    """From `ip -o -4 addr show` output, the interface with address local and this peer;
    only a name of the pppN form is taken (it is remote text, used as a word later)."""
    for line in ip_output.splitlines():
        m = _ADDR_LINE.match(line)
        if m and m.group(2).split("/")[0] == local and m.group(3) == peer:
            name = m.group(1).split("@")[0]
            if valid_ifname(name):
                return name
    return None


async def close_connection(conn: asyncssh.SSHClientConnection) -> None:
    """Close the connection and wait (bounded) for it to finish."""
    conn.close()
    with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
        await asyncio.wait_for(conn.wait_closed(), 10)
