"""FIDO security keys (sk-ssh-ed25519@openssh.com) as `identity`: the key file holds only a
handle, and asyncssh asks the authenticator to sign. No authenticator here: as asyncssh's
own tests do (tests/sk_stub.py), a software one is patched into its sk layer, so what is
proved is pppssh's side (file, offer, label, touch flag), not a device."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pppssh.ssh import TunnelError, close_connection, connect

from .sshserver import SSHTestServer

SK = "sk-ssh-ed25519@openssh.com"


class FakeAuthenticator:
    """A software FIDO authenticator: the key handle names an Ed25519 key it keeps; each
    signature reports whether the user was present (touched it)."""

    def __init__(self) -> None:
        """No credential yet; present: whether a touch happens when asked."""
        self.keys: dict[bytes, Ed25519PrivateKey] = {}
        self.present = True
        self.signed: list[int] = []  # the flags asked for, at each signature
        self.counter = 0

    def enroll(
        self, alg: int, application: str, user: str, pin: str | None, resident: bool
    ) -> tuple[bytes, bytes]:
        """A new credential: (public value, key handle)."""
        key = Ed25519PrivateKey.generate()
        handle = hashlib.sha256(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.keys[handle.digest()] = key
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), handle.digest()

    def sign(
        self, data: bytes, application: str, key_handle: bytes, flags: int,
        is_webauthn: bool = False,
    ) -> tuple[int, int, bytes, bytes]:  # fmt: skip
        """U2F-style: sign sha256(application) | flags | counter | sha256(data)."""
        key = self.keys.get(key_handle)
        if key is None:
            raise ValueError("No matching security key found")
        self.signed.append(flags)
        touch = 0x01 if self.present else 0
        self.counter += 1
        message = (
            hashlib.sha256(application.encode()).digest()
            + bytes([touch])
            + struct.pack(">I", self.counter)
            + hashlib.sha256(data).digest()
        )
        return touch, self.counter, key.sign(message), b""


@pytest.fixture
def authenticator(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAuthenticator]:
    """The fake authenticator, where asyncssh's sk Ed25519 keys enroll and sign."""
    fake = FakeAuthenticator()
    monkeypatch.setattr("asyncssh.sk_eddsa.sk_enroll", fake.enroll)
    monkeypatch.setattr("asyncssh.sk_eddsa.sk_sign", fake.sign)
    yield fake


def _sk_server(tmp_path: Path, touch_required: bool) -> SSHTestServer:
    """A server whose authorised key is a new security key (its handle written as id_ed25519,
    without a passphrase, as ssh-keygen -t ed25519-sk writes it)."""
    srv = SSHTestServer(tmp_path)
    srv.client_key = asyncssh.generate_private_key(SK, touch_required=touch_required)
    return srv


def test_security_key_file_logs_in_and_check_names_it(
    tmp_path: Path, authenticator: FakeAuthenticator
) -> None:
    async def main() -> None:
        async with _sk_server(tmp_path, touch_required=True) as srv:
            conn, client = await connect(srv.cfg())
            await close_connection(conn)
            fingerprint = srv.client_key.get_fingerprint("sha256")
            assert client.accepted == (
                f"{SK} {fingerprint} ({srv.identity}, FIDO security key, touch required)"
            )
            assert authenticator.signed == [0x01], "one signature, asking for a touch"
            assert srv.rec.auth_completed == [srv.user]

    asyncio.run(main())


def test_no_touch_refused_when_the_key_requires_it(
    tmp_path: Path, authenticator: FakeAuthenticator
) -> None:
    """No touch (an unattended reconnect with a touch-required key): the server refuses the
    signature, in one line naming the key; a no-touch-required key does not ask for one."""

    async def main() -> None:
        authenticator.present = False
        async with _sk_server(tmp_path, touch_required=True) as srv:
            with pytest.raises(TunnelError) as info:
                conn, _client = await connect(srv.cfg())
                conn.close()
            assert f"refused the key {srv.identity}" in str(info.value)
            assert "\n" not in str(info.value) and srv.rec.auth_completed == []
        authenticator.present = True  # it answers, but is not asked for a touch
        (tmp_path / "b").mkdir()
        async with _sk_server(tmp_path / "b", touch_required=False) as srv:
            conn, client = await connect(srv.cfg())
            await close_connection(conn)
            assert client.accepted is not None and client.accepted.endswith(
                "FIDO security key, no touch required)"
            )
            assert authenticator.signed[-1] == 0

    asyncio.run(main())


def test_missing_authenticator_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle whose authenticator is not plugged in: one line, nothing started."""
    fake = FakeAuthenticator()
    monkeypatch.setattr("asyncssh.sk_eddsa.sk_enroll", fake.enroll)

    def absent(*_args: object, **_kwargs: object) -> tuple[int, int, bytes, bytes]:
        """asyncssh.sk_sign without a device."""
        raise ValueError("No matching security key found")

    monkeypatch.setattr("asyncssh.sk_eddsa.sk_sign", absent)

    async def main() -> None:
        async with _sk_server(tmp_path, touch_required=True) as srv:
            with pytest.raises(TunnelError) as info:
                conn, _client = await connect(srv.cfg())
                conn.close()
            assert str(info.value) == (
                f"security key {srv.identity}: its authenticator cannot sign: "
                "No matching security key found"
            )

    asyncio.run(main())
