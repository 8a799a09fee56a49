"""Every use pppssh makes of asyncssh beyond its documented API, in one place.

Other modules import asyncssh from here and call these functions; none of them reads a
private attribute or replaces a method of asyncssh's own. Each function says what it relies
on; tests/test_asyncssh_compat.py checks each of those in the installed asyncssh, so an
upgrade that moves one fails there, by name, rather than in the field. TESTED is the range
of asyncssh versions this module was checked against (pyproject.toml's bound is the same).

What each reliance is for, and what happens without it:

  import-time find_library      a fast `pppssh start` (no gcc/ld runs)   ctypes as it is
  kex.get_kex_algs & co.        offer only what asyncssh implements      -> import fails
  validate_server_host_key      host key algorithm checks (OpenSSH 9)    refuse to connect
  SSHKey.verify                 signature algorithm check (OpenSSH 9)    refuse to connect
  _server_kexinit               one-line reason for an algorithm refusal a vaguer message
  _server_sig_algs              one-line reason for a SHA-1-only server  a vaguer message
  SSHCertificate.signing_key    refuse a certificate signed with SHA-1   refuse the certificate
  SSHKey.pyca_key.key_size      refuse RSA host keys under 1024 bits     refuse every RSA key
  send_packet, _enc_alg_cs      no MSG_IGNORE before every packet        one packet more each
  logger._debug_level, log_*    no per-packet log formatting             8 us more per packet
  data_received (asyncio)       one pty write per socket read            one loop turn more
  _make_global_request, _transport the keepalive's round trip (metrics)  no RTT is measured
  _deliver_data, _recv_window   a small window given back as it is used  back at half, as always
  sk keys' _flags, _key_handle  check says whether a FIDO key wants touch  not said
  SSHKeyPair.sign               why a FIDO authenticator did not sign    "refused the key"

The import: at import asyncssh looks for liboqs (twice, as "oqs" and "liboqs") and for nettle
(UMAC) with ctypes.util.find_library. For a library the ld.so cache does not list,
find_library then tries to link a program against it with gcc, and after that with ld: up to
ten processes, which on a slow gateway (the lab kernel) is a third of a second of every
`pppssh start`. Here one `ldconfig -p` answers all three names, as find_library's first step
would; a library only gcc or ld could find (one in a directory ldconfig was not run for)
counts as absent: asyncssh then lacks sntrup761, as it would without liboqs. nettle is not
looked for at all: pppssh offers no UMAC (ssh.MACS), and unloaded it is 0.25 MB less RSS.
Every later find_library call is ctypes' own.
"""

from __future__ import annotations

import ctypes.util
import importlib
import os
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "NOT_LOADED",
    "TESTED",
    "asyncssh",
    "certificate_signer",
    "debug_level",
    "eager_window_adjust",
    "global_request_round_trip",
    "implemented_certificate_algs",
    "implemented_kex_algs",
    "implemented_public_key_algs",
    "key_bits",
    "ld_cache_lookup",
    "server_kexinit",
    "server_sig_algs",
    "skip_ignore_packets",
    "skip_packet_logging",
    "wrap_data_received",
    "wrap_host_key_validation",
    "wrap_signature_check",
]

# The asyncssh versions this module was checked against (as in pyproject.toml's dependency):
# 2.14.0 and the last release of each minor line 2.14 to 2.24, each passing
# tests/test_asyncssh_compat.py, test_asyncssh_import.py, test_ssh.py, test_check.py,
# test_known_hosts.py and test_remote_setup.py. Widen it only after the same.
TESTED = ">=2.14,<2.25"

KEEPALIVE_REQUEST = b"keepalive@openssh.com"  # what OpenSSH's ServerAlive and asyncssh send
NOT_LOADED = frozenset({"nettle"})  # UMAC only, which pppssh does not offer
MSG_IGNORE = 2  # RFC 4253, section 11.2
MSG_CHANNEL_WINDOW_ADJUST = 93  # RFC 4254, section 5.2

# ctypes.util's names for this machine's ABI in `ldconfig -p` output
_ABI = {
    "x86_64-64": "libc6,x86-64",
    "ppc64-64": "libc6,64bit",
    "sparc64-64": "libc6,64bit",
    "s390x-64": "libc6,64bit",
    "ia64-64": "libc6,IA-64",
}.get(f"{os.uname().machine}-{8 * struct.calcsize('P')}", "libc6")

Verify = Callable[[bytes, bytes], bool]
Validate = Callable[[bytes], Any]  # key data -> asyncssh.SSHKey
Receive = Callable[..., None]
Sign = Callable[[bytes], bytes]  # data -> an SSH signature


def ld_cache_lookup(listing: str, abi: str = _ABI) -> Callable[[str], str | None]:
    """find_library's ld.so-cache step over one `ldconfig -p` listing: name -> soname."""

    def find(name: str) -> str | None:
        if name in NOT_LOADED:
            return None
        m = re.search(rf"\s+(lib{re.escape(name)}\.[^\s]+)\s+\({re.escape(abi)}", listing)
        return m.group(1) if m else None

    return find


@contextmanager
def _ld_cache_only() -> Iterator[None]:
    """Within: find_library consults the ld.so cache once, and nothing else.

    Relies on: asyncssh.crypto (pq.py or sntrup.py, umac.py) calling
    `ctypes.util.find_library(...)` through the module attribute at import time."""
    real = ctypes.util.find_library
    try:
        listing = subprocess.run(
            ["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True, timeout=10,
            env={"LC_ALL": "C", "LANG": "C"},
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        yield  # no ldconfig: ctypes as it is
        return
    ctypes.util.find_library = ld_cache_lookup(listing)  # type: ignore[assignment]
    try:
        yield
    finally:
        ctypes.util.find_library = real


with _ld_cache_only():
    import asyncssh


# ---------------------------------------------------------------- algorithms it implements


def _names(module: str, function: str) -> frozenset[str]:
    """The names asyncssh.<module>.<function>() lists (bytes in asyncssh), as text."""
    names: list[bytes] = getattr(importlib.import_module(f"asyncssh.{module}"), function)()
    return frozenset(n.decode("ascii") for n in names)


def implemented_kex_algs() -> frozenset[str]:
    """Key exchange algorithms this asyncssh implements (with the libraries it found).

    Relies on: asyncssh.kex.get_kex_algs() -> list[bytes] (not exported at the top)."""
    return _names("kex", "get_kex_algs")


def implemented_public_key_algs() -> frozenset[str]:
    """Public key (and signature) algorithms this asyncssh implements.

    Relies on: asyncssh.public_key.get_public_key_algs() -> list[bytes]."""
    return _names("public_key", "get_public_key_algs")


def implemented_certificate_algs() -> frozenset[str]:
    """OpenSSH certificate algorithms this asyncssh implements.

    Relies on: asyncssh.public_key.get_certificate_algs() -> list[bytes]."""
    return _names("public_key", "get_certificate_algs")


# ---------------------------------------------------------------- what the server sent


def server_kexinit(conn: object) -> bytes | None:
    """The server's KEXINIT payload as the client received it; None before it came.

    Relies on: SSHConnection._server_kexinit, bytes (b'' until the server's KEXINIT), set by
    _process_kexinit to the packet's payload, starting with SSH_MSG_KEXINIT (20)."""
    payload = getattr(conn, "_server_kexinit", None)
    return payload if isinstance(payload, bytes) and payload else None


def server_sig_algs(conn: object) -> frozenset[str] | None:
    """The signature algorithms the server takes (RFC 8308 server-sig-algs); empty when it
    sent none, None when this asyncssh keeps them elsewhere.

    Relies on: SSHConnection._server_sig_algs, a set of bytes (b'' among them when the
    extension was absent), set by _process_ext_info on the client."""
    algs = getattr(conn, "_server_sig_algs", None)
    if not isinstance(algs, set):
        return None
    return frozenset(a.decode("ascii", "replace") for a in algs if isinstance(a, bytes) and a)


def certificate_signer(cert: object) -> bytes | None:
    """The CA key's wire form (an SSH public key blob) an OpenSSH certificate names; None if
    this asyncssh keeps it elsewhere (the certificate is then refused, never let through).

    Relies on: SSHOpenSSHCertificate.signing_key (an SSHKey) and SSHKey.public_data (bytes),
    attributes without an underscore but outside the documented API."""
    data = getattr(getattr(cert, "signing_key", None), "public_data", None)
    return data if isinstance(data, bytes) and data else None


def key_bits(key: object) -> int:
    """The size of a public key in bits (an RSA modulus); 0 when it cannot be told (an RSA
    key is then refused as too small, never let through).

    Relies on: SSHKey.pyca_key (the cryptography key object) and its key_size, attributes
    outside the documented API."""
    size = getattr(getattr(key, "pyca_key", None), "key_size", 0)
    return size if isinstance(size, int) else 0


def sk_touch_required(key: object) -> bool | None:
    """For a FIDO (sk-) private key read from its file: whether it asks the authenticator for
    a touch; None when it cannot be told (a public key, an agent's key).

    Relies on: the sk key classes' _flags (SSH_SK_USER_PRESENCE_REQD = 0x01) and _key_handle
    (None for a public key), attributes outside the documented API."""
    flags = getattr(key, "_flags", None)
    if getattr(key, "_key_handle", None) is None or not isinstance(flags, int):
        return None
    return bool(flags & 0x01)


def wrap_signing(pair: object, wrap: Callable[[Sign], Sign]) -> None:
    """Put wrap(original) in place of a key pair's signing (to keep why it failed: asyncssh
    only logs it and tries the next key).

    Relies on: the client's user authentication calling keypair.sign(data) (directly or in
    an executor) when the pair has no sign_async, as SSHLocalKeyPair has none."""
    pair.sign = wrap(pair.sign)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- checks put in its way


def wrap_host_key_validation(conn: object, wrap: Callable[[Validate], Validate]) -> bool:
    """Put wrap(original) in place of conn's host key validation; False, and nothing
    changed, when this asyncssh has no such step (the caller then must not go on).

    Relies on: SSHClientConnection.validate_server_host_key(key_data) -> SSHKey, called by
    every key exchange (kex_dh, kex_rsa) on the connection object, looked up per call."""
    original = getattr(conn, "validate_server_host_key", None)
    if original is None or not callable(original):
        return False
    conn.validate_server_host_key = wrap(original)  # type: ignore[attr-defined]
    return True


def wrap_signature_check(key: object, wrap: Callable[[Verify], Verify]) -> None:
    """Put wrap(original) in place of key's signature verification.

    Relies on: the key exchange checking the exchange hash's signature with
    host_key.verify(data, sig) on the very key validate_server_host_key returned."""
    key.verify = wrap(key.verify)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- per-packet work left out


def debug_level() -> int | None:
    """asyncssh's debug log level (1 to 3), or None if it is not where expected.

    Relies on: asyncssh.logging.logger._debug_level, an int class attribute that
    set_debug_level() sets (asyncssh has no getter)."""
    level = getattr(
        getattr(getattr(asyncssh, "logging", None), "logger", None), "_debug_level", None
    )
    return level if isinstance(level, int) else None


def skip_packet_logging(obj: object) -> bool:
    """Stop asyncssh from formatting a log line for every packet of obj (a connection or a
    channel) that its logger then drops: it only keeps them at debug level 3, which pppssh
    never sets. About 8 us per packet, a tenth of the receive path (bench.pump profile).
    Unchanged, and False, when the level is 3 or asyncssh is not as expected.

    Relies on: SSHPacketLogger.log_received_packet / log_sent_packet (methods of both
    SSHConnection and SSHChannel), which only log at debug level 3 (debug_level())."""
    level = debug_level()
    if level is None or level >= 3:
        return False
    if not (hasattr(obj, "log_received_packet") and hasattr(obj, "log_sent_packet")):
        return False

    def drop(*_args: object, **_kwargs: object) -> None:
        pass

    obj.log_received_packet = drop
    obj.log_sent_packet = drop
    return True


def skip_ignore_packets(conn: object) -> bool:
    """Stop asyncssh from sending an empty SSH_MSG_IGNORE before every packet.

    asyncssh does that once encryption is on, a countermeasure for CBC ciphers. With the
    ciphers pppssh offers (AEAD and CTR) it buys nothing and costs, per PPP frame, a second
    packet to encrypt, a second send() and a second packet for sshd to decrypt (28 us of a
    213 us frame round trip in bench.pump). Only this connection is changed; if asyncssh's
    internals are not as expected, nothing is, and False says so.

    Relies on: SSHConnection.send_packet(pkttype, *args, **kwargs), looked up on the
    connection for every packet (the MSG_IGNORE too), and SSHConnection._enc_alg_cs, the
    client-to-server cipher's name in bytes.
    """
    send = getattr(conn, "send_packet", None)
    if send is None or not isinstance(getattr(conn, "_enc_alg_cs", None), bytes):
        return False

    def send_packet(pkttype: int, *args: bytes, **kwargs: object) -> None:
        cipher: bytes = conn._enc_alg_cs  # type: ignore[attr-defined]
        if pkttype == MSG_IGNORE and not cipher.endswith(b"-cbc"):
            return
        send(pkttype, *args, **kwargs)

    conn.send_packet = send_packet  # type: ignore[attr-defined]
    return True


def wrap_data_received(conn: object, wrap: Callable[[Receive], Receive]) -> bool:
    """Put wrap(original) in place of conn's data_received (the asyncio protocol's socket
    reads); False, and nothing changed, if it has none.

    Relies on: SSHConnection.data_received(data) being what the transport calls for each
    socket read, looked up per call, and handing every complete packet of that read to its
    channels' sessions before it returns."""
    receive = getattr(conn, "data_received", None)
    if receive is None:
        return False
    conn.data_received = wrap(receive)  # type: ignore[attr-defined]
    return True


# ---------------------------------------------------------------- the keepalive's round trip


async def global_request_round_trip(
    conn: object, request: bytes = KEEPALIVE_REQUEST
) -> float | None:
    """Seconds from sending a global request that wants a reply (by default the keepalive
    OpenSSH's ServerAlive and asyncssh's own keepalive send) to the server's answer, success
    or failure alike (sshd answers a keepalive with a failure: it is a round trip all the
    same). None when this asyncssh has no such step, or when the connection closed before
    the answer came: asyncssh then answers every waiting request itself, at once.

    Relies on: SSHConnection._make_global_request(request, *args), a coroutine that sends
    MSG_GLOBAL_REQUEST with want_reply and waits in the one FIFO of replies asyncssh's own
    keepalives use (so answers never cross), answered at once with MSG_REQUEST_FAILURE when
    SSHConnection._transport is None (the connection is closing: set so before the cleanup
    answers every waiting request); and is_closed()."""
    make = getattr(conn, "_make_global_request", None)
    closed = getattr(conn, "is_closed", None)

    def gone() -> bool:
        """The connection is closing or closed: no answer from the server can come."""
        return closed is None or bool(closed()) or getattr(conn, "_transport", None) is None

    if make is None or gone():
        return None
    start = time.monotonic()
    await make(request)
    took = time.monotonic() - start
    return None if gone() else took


def eager_window_adjust(chan: object, step: int) -> bool:
    """Give the sender window back once step bytes of it are used, not only when half of it
    is: with a window near the path's bandwidth-delay product, asyncssh's half-window rule
    leaves the sender idle for up to half of each round trip. Data the session has not taken
    (reading paused: the pty is full) is not given back, as before. False, and nothing
    changed, if this asyncssh is not as expected.

    Relies on: SSHChannel._deliver_data(data, datatype), called for each data packet the
    session takes, after _accept_data has taken its length off _recv_window (an int), with
    _init_recv_window (an int) the window granted; and SSHChannel.send_packet(pkttype,
    *args) adding the recipient channel, as asyncssh's own adjust does."""
    deliver = getattr(chan, "_deliver_data", None)
    granted = getattr(chan, "_init_recv_window", None)
    if not callable(deliver) or not isinstance(granted, int):
        return False
    if not isinstance(getattr(chan, "_recv_window", None), int):
        return False
    if not callable(getattr(chan, "send_packet", None)):
        return False

    def _deliver_data(data: bytes, datatype: object) -> None:
        used = granted - chan._recv_window  # type: ignore[attr-defined]
        if used >= step:
            chan.send_packet(  # type: ignore[attr-defined]
                MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">I", used)
            )
            chan._recv_window = granted  # type: ignore[attr-defined]
        deliver(data, datatype)

    chan._deliver_data = _deliver_data  # type: ignore[attr-defined]
    return True
