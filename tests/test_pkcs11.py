"""PKCS#11 keys (pkcs11_provider, pkcs11_pin_file): a real SoftHSM2 token made in a temporary
folder (SOFTHSM2_CONF), holding an RSA key imported into it, against the in-process SSH
server; no key file on disk when the login happens."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from pppssh import cli, config, trust
from pppssh.check import token_check
from pppssh.config import ConfigError, parse
from pppssh.remote_setup import authorised_key
from pppssh.ssh import TunnelError, close_connection, connect, load_token_keys

from .sshserver import SSHTestServer

PROVIDER = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "314159"
IMPORT = """
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.util.rsa import decode_rsa_private_key
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label="pppssh")
with token.open(rw=True, user_pin=sys.argv[2]) as session:
    attrs = decode_rsa_private_key(sys.stdin.buffer.read())
    attrs.update({Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True,
                  Attribute.LABEL: "link", Attribute.ID: b"\\x01"})
    session.create_object(attrs)
"""


@dataclasses.dataclass
class Token:
    """The module's SoftHSM2 token and the key on it."""

    key: asyncssh.SSHKey
    folder: Path


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """One token for the module: the provider reads SOFTHSM2_CONF once per process."""
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n")
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            [shutil.which("softhsm2-util") or "softhsm2-util", "--init-token", "--free",
             "--label", "pppssh", "--pin", PIN, "--so-pin", "27182818"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
        subprocess.run(
            [sys.executable, "-c", IMPORT, PROVIDER, PIN],
            input=key.export_private_key("pkcs1-der"), check=True,
        )  # fmt: skip
        yield Token(key, folder)
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


def _site(srv: SSHTestServer, pin_file: str = "pin") -> str:
    """The server's site file with the token instead of an identity file."""
    extra = f"pkcs11_provider = {PROVIDER}\npkcs11_pin_file = {pin_file}\n"
    return srv.site_text(extra).replace("identity = id_ed25519\n", "")


def _write_pin(folder: Path, pin: str) -> None:
    """The PIN file, root's and 0600."""
    (folder / "pin").write_text(pin + "\n")
    (folder / "pin").chmod(0o600)


def test_login_with_the_tokens_key_and_check_names_it(tmp_path: Path, token: Token) -> None:
    """No key file: the token signs; the accepted key is labelled with its type, fingerprint
    and the token it came from."""

    async def main() -> None:
        srv = SSHTestServer(tmp_path, client_key_type="ssh-rsa")
        srv.client_key = token.key
        async with srv:
            srv.identity.unlink()
            _write_pin(tmp_path, PIN)
            cfg = parse(_site(srv), tmp_path / "lab.conf")
            config.check_files(cfg)
            conn, client = await connect(cfg)
            await close_connection(conn)
            fingerprint = token.key.get_fingerprint("sha256")
            assert client.accepted == (
                f"ssh-rsa {fingerprint} (PKCS#11 token {PROVIDER}, key link)"
            )
            assert srv.rec.auth_completed == [srv.user]
            pub = " ".join(token.key.export_public_key("openssh").decode().split()[:2])
            assert await authorised_key(cfg) == pub, "remote-setup authorises the token's key"

    asyncio.run(main())


def test_wrong_pin_is_one_line_and_nothing_is_offered(tmp_path: Path, token: Token) -> None:
    """A wrong PIN: one line naming the PIN file, before any connection is made."""
    gc.collect()  # asyncssh keeps a token's session open while a key of it lives

    async def main() -> None:
        srv = SSHTestServer(tmp_path, client_key_type="ssh-rsa")
        srv.client_key = token.key
        async with srv:
            _write_pin(tmp_path, "000000")
            cfg = parse(_site(srv), tmp_path / "lab.conf")
            with pytest.raises(TunnelError) as info:
                await connect(cfg)
            assert str(info.value) == (
                f"PKCS#11 token of {PROVIDER}: the PIN in {tmp_path / 'pin'} is wrong"
            )
            assert srv.rec.connections == 0, "no connection before the keys are ready"
            with pytest.raises(TunnelError) as info:  # a reconnect: the token is not asked
                await connect(cfg)
            assert "was refused before and is not tried again" in str(info.value)

    asyncio.run(main())


def test_provider_and_pin_file_are_checked_like_roots_other_files(
    tmp_path: Path, token: Token, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider another user could write (root would load its code) and a PIN file others
    can read are refused with the file, line and key; a relative provider at parse time."""
    lib = tmp_path / "lib"
    lib.mkdir()
    copy = lib / "libsofthsm2.so"
    shutil.copy(PROVIDER, copy)
    _write_pin(tmp_path, PIN)
    top, trust.TOP = trust.TOP, str(tmp_path)
    try:
        base = "[remote]\nhost = 198.51.100.2\nuser = tunnel\nknown_hosts = kh\n"
        rest = (
            "[ppp]\nlocal_address = 192.168.77.1\nremote_address = 192.168.77.2\n"
            "[networks]\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
        )
        (tmp_path / "kh").write_text("")
        text = base + f"pkcs11_provider = {copy}\npkcs11_pin_file = pin\n" + rest
        cfg = parse(text, tmp_path / "lab.conf")
        config.check_files(cfg)  # root's, 0644 library: accepted
        os.chown(lib, 1000, 1000)
        with pytest.raises(ConfigError) as info:
            config.check_files(cfg)
        assert str(info.value).startswith(f"{tmp_path / 'lab.conf'}:5: pkcs11_provider: ")
        assert "1000" in str(info.value)
        with pytest.raises(TunnelError, match="1000"):
            load_token_keys(cfg)  # and again right before it is loaded
        os.chown(lib, 0, 0)
        (tmp_path / "pin").chmod(0o640)
        with pytest.raises(ConfigError) as info:
            config.check_files(cfg)
        assert str(info.value).startswith(f"{tmp_path / 'lab.conf'}:6: pkcs11_pin_file: ")
        with pytest.raises(ConfigError, match=r":5: pkcs11_provider: .*absolute path"):
            parse(text.replace(str(copy), "libsofthsm2.so"), tmp_path / "lab.conf")
        with pytest.raises(ConfigError, match=":6: pkcs11_pin_file: set without pkcs11_prov"):
            parse(text.replace(f"pkcs11_provider = {copy}", "identity = kh"), tmp_path / "x.conf")
        with pytest.raises(ConfigError, match="identity: required key missing"):
            parse(base + rest, tmp_path / "lab.conf")
    finally:
        trust.TOP = top


def test_missing_python_pkcs11_is_one_line(
    tmp_path: Path, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # import pkcs11 raises ImportError
    _write_pin(tmp_path, PIN)
    (tmp_path / "kh").write_text("")
    cfg = parse(
        "[remote]\nhost = 198.51.100.2\nuser = tunnel\nknown_hosts = kh\n"
        f"pkcs11_provider = {PROVIDER}\n[ppp]\nlocal_address = 192.168.77.1\n"
        "remote_address = 192.168.77.2\n[networks]\nlocal = 10.1.0.0/24\n"
        "remote = 10.2.0.0/24\n",
        tmp_path / "lab.conf",
    )
    with pytest.raises(TunnelError) as info:
        load_token_keys(cfg)
    assert str(info.value) == (
        f"pkcs11_provider {PROVIDER}: PKCS#11 keys need the python-pkcs11 package "
        "(pip install python-pkcs11)"
    )
    assert cli  # the CLI turns it into `pppssh: ...` like every TunnelError


def test_check_lists_the_tokens_keys_or_says_why_not(tmp_path: Path, token: Token) -> None:
    """`check`'s PKCS#11 line: the token's key by type and fingerprint; a wrong PIN failed
    with its fix."""
    gc.collect()
    _write_pin(tmp_path, PIN)
    (tmp_path / "kh").write_text("")
    text = (
        "[remote]\nhost = 198.51.100.2\nuser = tunnel\nknown_hosts = kh\n"
        f"pkcs11_provider = {PROVIDER}\npkcs11_pin_file = pin\n[ppp]\n"
        "local_address = 192.168.77.1\nremote_address = 192.168.77.2\n[networks]\n"
        "local = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
    )
    cfg = parse(text, tmp_path / "lab.conf")
    top, trust.TOP = trust.TOP, str(tmp_path)
    try:
        good = asyncio.run(token_check(cfg))
        fingerprint = token.key.get_fingerprint("sha256")
        assert good.ok and good.detail == (
            f"ssh-rsa {fingerprint} (PKCS#11 token {PROVIDER}, key link)"
        )
        del good
        gc.collect()
        _write_pin(tmp_path, "999999")
        bad = asyncio.run(token_check(cfg))
        assert not bad.ok and bad.detail.endswith("is wrong")
    finally:
        trust.TOP = top
