"""known_hosts read the way OpenSSH 9's ssh reads it, so asyncssh never matches host names.

OpenSSH looks a host up under one name: the host as given, lowercased, when the port is 22,
and `[host]:port` otherwise (CheckHostIP is off by default since 8.5, so the address is never
looked up). A line matches when its host field is a hashed name (`|1|salt|hmac-sha1`) equal
to that name, or a comma list of `*`/`?` patterns of which one matches and no negated one
(`!pattern`) does: a matching negation rejects the line (match.c match_hostname). So a
port-less entry never vouches for another port, and `![host]:port,*` never matches that host
and port. `@revoked` keys are refused even when also listed; `@cert-authority` keys may sign
host certificates for the matching names. Comments, blank lines and malformed lines (unknown
marker, bad hash, a key that does not decode or whose type differs from its blob) are skipped,
as hostfile.c does. The result goes to asyncssh as explicit key lists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from . import asyncssh_compat
from .asyncssh_compat import asyncssh

__all__ = [
    "HostKeys",
    "lookup_name",
    "match",
    "match_hostname",
    "match_pattern",
    "match_pattern_list",
    "parse",
]

CA_MARKER = "@cert-authority"
REVOKE_MARKER = "@revoked"
HASH_MAGIC = "|1|"
RSA_MIN_BITS = 1024  # sshkey.h SSH_RSA_MINIMUM_MODULUS_SIZE
_SUBPATTERN_MAX = 1024  # match.c: a longer subpattern makes the whole list fail
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """ASCII-only lowercase, as C's tolower in the C locale."""
    return text.translate(_LOWER)


def lookup_name(host: str, port: int) -> str:
    """The one name OpenSSH looks a host up under: `host`, or `[host]:port` off port 22."""
    host = _lower(host)
    return host if port in (0, 22) else f"[{host}]:{port}"


def match_pattern(text: str, pattern: str) -> bool:
    """Whether text matches pattern, where `*` is any run and `?` any one character."""
    # Iterative glob with one backtrack point: linear in practice, no regex escaping to get wrong.
    t = p = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def match_pattern_list(text: str, patterns: str, dolower: bool = True) -> int:
    """-1 if a negated subpattern matches, 1 if a plain one does, 0 otherwise (match.c)."""
    positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= _SUBPATTERN_MAX - 1:
            return 0
        if match_pattern(text, _lower(sub) if dolower else sub):
            if negated:
                return -1
            positive = 1
    return positive


def match_hostname(host: str, patterns: str) -> int:
    """match_pattern_list on the lowercased host name."""
    return match_pattern_list(_lower(host), patterns, True)


def _hash_matches(name: str, field: str) -> bool | None:
    """A hashed host field against name: True/False, or None when the field is malformed."""
    body = field[len(HASH_MAGIC) :] if field.startswith(HASH_MAGIC) else None
    if body is None or "|" not in body:
        return None
    salt_b64 = body.split("|", 1)[0]
    if not salt_b64 or len(salt_b64) > 1024:
        return None
    try:
        salt = base64.b64decode(salt_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(salt) != hashlib.sha1().digest_size:
        return None
    digest = hmac.new(salt, name.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
    encoded = HASH_MAGIC + base64.b64encode(salt).decode() + "|" + base64.b64encode(digest).decode()
    return hmac.compare_digest(encoded, field)


def _match_field(name: str, field: str) -> bool | None:
    """Whether a line's host field vouches for name (hostfile.c match_maybe_hashed)."""
    if field.startswith("|"):
        return _hash_matches(name, field)
    return match_hostname(name, field) == 1


def _marker(rest: str) -> tuple[str, str] | None:
    """Split off a leading marker as hostfile.c check_markers does; None if it is invalid."""
    marker = ""
    while rest.startswith("@"):
        if marker:
            return None  # only one marker
        end = rest.find(" ")
        if end < 0:
            end = rest.find("\t")
        if end < 0 or end <= 1 or end >= 32:
            return None
        marker = rest[:end]
        if marker not in (CA_MARKER, REVOKE_MARKER):
            return None
        rest = rest[end:].lstrip(" \t")
    return marker, rest


def _read_key(text: str) -> asyncssh.SSHKey | None:
    """`type base64 [comment]` to a plain public key, None if malformed (sshkey_read)."""
    words = text.replace("\t", " ").split(" ")
    words = [w for w in words if w]
    if len(words) < 2:
        return None
    kind, blob_b64 = words[0], words[1]
    try:
        blob = base64.b64decode("".join(blob_b64.split()), validate=True)
        (size,) = struct.unpack(">I", blob[:4])
        inner = blob[4 : 4 + size].decode("ascii")
    except (binascii.Error, ValueError, struct.error, UnicodeDecodeError):
        return None
    if inner != kind or kind.endswith("-cert-v01@openssh.com"):
        return None  # type and blob disagree, or a certificate: never a host key line here
    try:
        key = asyncssh.import_public_key(f"{kind} {base64.b64encode(blob).decode()}")
    except (asyncssh.KeyImportError, ValueError):
        return None
    if kind == "ssh-rsa" and asyncssh_compat.key_bits(key) < RSA_MIN_BITS:
        return None  # OpenSSH refuses RSA keys this small outright
    return key


@dataclass(frozen=True)
class Entry:
    """One usable known_hosts line."""

    line: int
    marker: str  # "", CA_MARKER or REVOKE_MARKER
    hosts: str
    key: asyncssh.SSHKey


def parse(data: bytes) -> list[Entry]:
    """Every well-formed line of a known_hosts file; the rest is skipped as OpenSSH does."""
    entries: list[Entry] = []
    text = data.decode("utf-8", "surrogateescape")
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        split = _marker(line)
        if split is None:
            continue
        marker, line = split
        end = next((i for i, c in enumerate(line) if c in " \t"), -1)
        if end < 0:
            continue  # a host field and no key
        hosts, rest = line[:end], line[end + 1 :].lstrip(" \t")
        if not rest or rest.startswith("#"):
            continue
        key = _read_key(rest)
        if key is not None:
            entries.append(Entry(number, marker, hosts, key))
    return entries


@dataclass(frozen=True)
class HostKeys:
    """The keys known_hosts holds for one host and port."""

    name: str  # the name looked up: host or [host]:port
    host_keys: tuple[asyncssh.SSHKey, ...] = ()
    ca_keys: tuple[asyncssh.SSHKey, ...] = ()
    revoked: tuple[asyncssh.SSHKey, ...] = ()

    def trusted(self) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """asyncssh's explicit known_hosts form: (host keys, CA keys, revoked keys)."""
        return list(self.host_keys), list(self.ca_keys), list(self.revoked)

    def is_revoked(self, key: asyncssh.SSHKey) -> bool:
        """Whether key is listed @revoked for this host."""
        return any(key.public_data == r.public_data for r in self.revoked)

    def knows(self, key: asyncssh.SSHKey) -> bool:
        """Whether key is a trusted (listed, not revoked) host key for this host."""
        return not self.is_revoked(key) and any(
            key.public_data == k.public_data for k in self.host_keys
        )

    def key_types(self) -> set[str]:
        """Algorithm names of the trusted host keys (ssh-ed25519, ssh-rsa, ...)."""
        return {k.get_algorithm() for k in self.host_keys}


def match(data: bytes | list[Entry], host: str, port: int) -> HostKeys:
    """The keys of a known_hosts file (bytes or parsed) that vouch for host on port."""
    entries = parse(data) if isinstance(data, bytes) else data
    name = lookup_name(host, port)
    found: dict[str, list[asyncssh.SSHKey]] = {"": [], CA_MARKER: [], REVOKE_MARKER: []}
    for entry in entries:
        if _match_field(name, entry.hosts):
            found[entry.marker].append(entry.key)
    revoked = tuple(found[REVOKE_MARKER])
    revoked_data = {k.public_data for k in revoked}
    return HostKeys(
        name=name,
        host_keys=tuple(k for k in found[""] if k.public_data not in revoked_data),
        ca_keys=tuple(k for k in found[CA_MARKER] if k.public_data not in revoked_data),
        revoked=revoked,
    )
