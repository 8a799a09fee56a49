"""pppssh.known_hosts: OpenSSH's matching rules, checked against a table and against
OpenSSH's own matcher (`ssh-keygen -F`, which uses hostfile.c's hostkeys_foreach)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from pppssh.known_hosts import (
    lookup_name,
    match,
    match_hostname,
    match_pattern,
    match_pattern_list,
    parse,
)

KEY = asyncssh.generate_private_key("ssh-ed25519")
OTHER = asyncssh.generate_private_key("ssh-ed25519")
CA = asyncssh.generate_private_key("ssh-ed25519")


def text(key: asyncssh.SSHKey) -> str:
    """`type base64` of a key's public half."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def hashed(name: str, salt: bytes | None = None) -> str:
    """`|1|salt|hmac-sha1(salt, name)`, as ssh-keygen -H writes it."""
    salt = salt or os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def found(lines: str, host: str, port: int) -> bool:
    """Whether KEY is a trusted host key for host:port under these known_hosts lines."""
    return any(
        k.public_data == KEY.public_data for k in match(lines.encode(), host, port).host_keys
    )


# (host field, host, port, matches?, what it shows) — OpenSSH 9 semantics
TABLE = [
    ("gw.example.net", "gw.example.net", 22, True, "plain name, port 22"),
    ("gw.example.net", "gw.example.net", 2222, False, "port-less entry: port 22 only"),
    ("[gw.example.net]:2222", "gw.example.net", 2222, True, "[host]:port on that port"),
    ("[gw.example.net]:2222", "gw.example.net", 22, False, "[host]:port not on 22"),
    ("[gw.example.net]:2222", "gw.example.net", 2223, False, "[host]:port not on another"),
    ("[gw.example.net]:22", "gw.example.net", 22, False, "port 22 is looked up without brackets"),
    ("gw.example.net:2222", "gw.example.net", 2222, False, "host:port is not the form"),
    ("GW.Example.NET", "gw.example.net", 22, True, "patterns are lowercased"),
    ("gw.example.net", "GW.EXAMPLE.NET", 22, True, "the host is lowercased"),
    ("gw.example.net", "gw.example.net.evil.org", 22, False, "whole name only"),
    ("gw.example", "gw.example.net", 22, False, "no prefix match"),
    ("*.example.net", "gw.example.net", 22, True, "* wildcard"),
    ("*.example.net", "gw.example.net", 2222, False, "a wildcard is no port wildcard"),
    ("[*.example.net]:2222", "gw.example.net", 2222, True, "wildcard inside brackets"),
    ("[gw.example.net]:*", "gw.example.net", 2222, True, "any port, written out"),
    ("*", "gw.example.net", 2222, True, "a bare * matches every host and port"),
    ("gw?.example.net", "gw1.example.net", 22, True, "? is one character"),
    ("gw?.example.net", "gw12.example.net", 22, False, "? is exactly one character"),
    ("gw*net", "gw.example.net", 22, True, "* inside"),
    ("10.0.0.*", "10.0.0.7", 22, True, "address patterns are text patterns"),
    ("a.example.net,gw.example.net", "gw.example.net", 22, True, "comma list"),
    ("![gw.example.net]:2222,*", "gw.example.net", 2222, False, "a matching negation rejects"),
    ("![gw.example.net]:2222,*", "other.example.net", 2222, True, "negation of another name"),
    ("*,!gw.example.net", "gw.example.net", 22, False, "negation after the positive"),
    ("!gw.example.net", "other.example.net", 22, False, "a negation alone never matches"),
    ("!*.example.net,gw.example.net", "gw.example.net", 22, False, "negated wildcard"),
    ("[gw.example.net]", "gw.example.net", 22, False, "brackets without a port"),
]


@pytest.mark.parametrize(("field", "host", "port", "expected", "why"), TABLE)
def test_plain_patterns(field: str, host: str, port: int, expected: bool, why: str) -> None:
    assert found(f"{field} {text(KEY)}\n", host, port) is expected, why


@pytest.mark.parametrize(
    ("entry", "host", "port", "expected"),
    [
        ("gw.example.net", "gw.example.net", 22, True),
        ("gw.example.net", "gw.example.net", 2222, False),
        ("[gw.example.net]:2222", "gw.example.net", 2222, True),
        ("[gw.example.net]:2222", "gw.example.net", 22, False),
        ("gw.example.net", "GW.example.net", 22, True),  # the lowercased name is hashed
        ("other.example.net", "gw.example.net", 22, False),
    ],
)
def test_hashed_names(entry: str, host: str, port: int, expected: bool) -> None:
    assert found(f"{hashed(entry)} {text(KEY)}\n", host, port) is expected


def test_malformed_hashes_are_skipped() -> None:
    good = hashed("gw.example.net")
    salt, digest = good[3:].split("|")
    for bad in (
        f"|2|{salt}|{digest}",  # unknown magic
        f"|1|{salt}",  # no hash
        f"|1|{base64.b64encode(b'short').decode()}|{digest}",  # salt not 20 bytes
        f"|1|not*base64|{digest}",
        f"|1||{digest}",
        f"{good},gw.example.net",  # a hashed field is one name, not a list
    ):
        assert not found(f"{bad} {text(KEY)}\n", "gw.example.net", 22), bad
    assert found(f"{good} {text(KEY)}\n", "gw.example.net", 22)


def test_revoked_keys_are_refused_even_when_listed() -> None:
    lines = f"gw.example.net {text(KEY)}\n@revoked * {text(KEY)}\n"
    keys = match(lines.encode(), "gw.example.net", 22)
    assert keys.host_keys == () and keys.is_revoked(KEY) and not keys.knows(KEY)
    # revoked only for another host: still trusted here
    lines = f"gw.example.net {text(KEY)}\n@revoked other.example.net {text(KEY)}\n"
    keys = match(lines.encode(), "gw.example.net", 22)
    assert keys.knows(KEY) and not keys.is_revoked(KEY)
    # a revoked CA is no CA
    lines = f"@cert-authority * {text(CA)}\n@revoked * {text(CA)}\n"
    assert match(lines.encode(), "gw.example.net", 22).ca_keys == ()


def test_cert_authority_lines_follow_the_same_names() -> None:
    lines = f"@cert-authority *.example.net {text(CA)}\ngw.example.net {text(KEY)}\n"
    here = match(lines.encode(), "gw.example.net", 22)
    assert [k.public_data for k in here.ca_keys] == [CA.public_data]
    assert [k.public_data for k in here.host_keys] == [KEY.public_data]
    assert match(lines.encode(), "gw.example.net", 2222).ca_keys == ()
    ported = f"@cert-authority [*.example.net]:2222 {text(CA)}\n"
    assert match(ported.encode(), "gw.example.net", 2222).ca_keys != ()
    assert match(ported.encode(), "gw.example.net", 22).ca_keys == ()
    hosts, cas, revoked = here.trusted()
    assert (len(hosts), len(cas), revoked) == (1, 1, [])


def test_comments_blank_and_malformed_lines_are_skipped() -> None:
    rsa_blob = text(asyncssh.generate_private_key("ssh-rsa")).split()[1]
    ed_blob = text(OTHER).split()[1]
    lines = [
        "",
        "   ",
        "# gw.example.net " + text(OTHER),
        "   # indented comment",
        "@bogus gw.example.net " + text(OTHER),  # unknown marker
        "@revoked @cert-authority gw.example.net " + text(OTHER),  # two markers
        "@revoked",  # a marker and nothing else
        "gw.example.net",  # no key
        "gw.example.net # comment where the key should be",
        "gw.example.net ssh-ed25519",  # no blob
        "gw.example.net ssh-ed25519 !!notbase64!!",
        f"gw.example.net ssh-rsa {ed_blob}",  # type and blob disagree
        f"gw.example.net ssh-ed25519 {rsa_blob}",
        "gw.example.net 2048 35 12345",  # SSH1 RSA
        "gw.example.net\t" + text(KEY).replace(" ", "\t") + "\tcomment",  # tabs are fine
    ]
    entries = parse(("\n".join(lines) + "\r\n").encode())
    assert [(e.line, e.key.public_data) for e in entries] == [(len(lines), KEY.public_data)]
    assert found("\n".join(lines), "gw.example.net", 22)
    assert not any(k.public_data == OTHER.public_data for e in entries for k in [e.key])


def test_crlf_lines_and_non_utf8_comments() -> None:
    assert found(f"gw.example.net {text(KEY)}\r\n", "gw.example.net", 22)
    data = f"gw.example.net {text(KEY)} caf".encode() + b"\xe9\n"
    assert any(
        k.public_data == KEY.public_data for k in match(data, "gw.example.net", 22).host_keys
    )


def _rsa_line(bits: int) -> str:
    """A known_hosts line with an RSA public key of the given modulus size (not a real key)."""

    def mpint(n: int) -> bytes:
        raw = n.to_bytes(n.bit_length() // 8 + 1, "big")
        return len(raw).to_bytes(4, "big") + raw

    n = (1 << (bits - 1)) | 0xFFFF_FFFF_FFFF_FFFF | 1
    blob = len(b"ssh-rsa").to_bytes(4, "big") + b"ssh-rsa" + mpint(65537) + mpint(n)
    return f"h ssh-rsa {base64.b64encode(blob).decode()}\n"


def test_rsa_keys_under_1024_bits_are_skipped() -> None:
    """sshkey.c refuses RSA moduli under SSH_RSA_MINIMUM_MODULUS_SIZE (1024 bits)."""
    assert match(_rsa_line(1024).encode(), "h", 22).host_keys != ()
    assert match(_rsa_line(1016).encode(), "h", 22).host_keys == ()


def test_lookup_name() -> None:
    assert lookup_name("GW.Example.net", 22) == "gw.example.net"
    assert lookup_name("gw", 2222) == "[gw]:2222"
    assert lookup_name("::1", 2222) == "[::1]:2222"


def test_pattern_functions() -> None:
    assert match_pattern("abc", "a*c") and match_pattern("ac", "a*c")
    assert not match_pattern("ab", "a*c") and match_pattern("", "*")
    assert match_pattern("a" * 50, "*a*a*a*a*a*a*a*a*")  # no exponential blow-up
    assert not match_pattern("a" * 50 + "b", "*a*a*a*a*a*a*a*a*c")
    assert match_pattern_list("x", "y,x") == 1
    assert match_pattern_list("x", "y,!x,x") == -1
    assert match_pattern_list("x", "y") == 0
    assert match_pattern_list("X", "x", dolower=False) == 0
    assert match_hostname("GW", "gw") == 1
    assert match_pattern_list("x", "x," + "y" * 1100) == 0  # match.c: a too long subpattern


def _keygen_finds(tmp_path: Path, line: str, name: str) -> bool:
    """OpenSSH's own answer: does `ssh-keygen -F name` find the line?"""
    kh = tmp_path / "known_hosts"
    kh.write_text(line)
    proc = subprocess.run(
        ["ssh-keygen", "-F", name, "-f", str(kh)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0 and text(KEY).split()[1] in proc.stdout


@pytest.mark.parametrize(("field", "host", "port", "expected", "why"), TABLE)
def test_table_agrees_with_openssh(
    tmp_path: Path, field: str, host: str, port: int, expected: bool, why: str
) -> None:
    """The table is OpenSSH's behaviour, not a belief about it: ssh-keygen agrees."""
    line = f"{field} {text(KEY)}\n"
    assert _keygen_finds(tmp_path, line, lookup_name(host, port)) is expected, why
    hashed_line = f"{hashed(lookup_name(host, port))} {text(KEY)}\n"
    assert _keygen_finds(tmp_path, hashed_line, lookup_name(host, port))
    assert found(hashed_line, host, port)
