"""pppssh/asyncssh_compat.py: the installed asyncssh is one it was tested with, every internal
it relies on is there in the expected shape, each patch does what it says, and no other
module of pppssh reaches into asyncssh."""

from __future__ import annotations

import ast
import asyncio
import ctypes.util
import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import pppssh
from pppssh import asyncssh_compat as compat
from pppssh.asyncssh_compat import asyncssh
from pppssh.ssh import connect, server_offer

from .sshserver import SSHTestServer

REPO = Path(__file__).resolve().parents[1]
LIMIT = 20  # seconds: a bound on a hung test, never a synchronisation point


def _requirement() -> Requirement:
    """pyproject.toml's asyncssh dependency."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if d.startswith("asyncssh")]
    assert len(found) == 1, project["dependencies"]
    return found[0]


def test_installed_asyncssh_is_in_the_tested_range() -> None:
    """pyproject's bound is the module's TESTED, with an upper bound, and holds here."""
    req = _requirement()
    assert req.specifier == SpecifierSet(compat.TESTED)
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), "no upper bound"
    installed = Version(asyncssh.__version__)
    assert req.specifier.contains(installed), (
        f"asyncssh {installed} is outside {compat.TESTED}, the versions asyncssh_compat was "
        "tested with: run tests/test_asyncssh_compat.py and tests/test_ssh.py against it, "
        "then widen TESTED and pyproject.toml together"
    )


# ---------------------------------------------------------------- the internals, by name


def _params(func: Callable[..., Any]) -> list[str]:
    """The parameter names of a function, self included."""
    return list(inspect.signature(func).parameters)


def _names_list(module: str, function: str) -> None:
    """asyncssh.<module>.<function>() is a list of bytes names."""
    names = getattr(getattr(asyncssh, module), function)()
    assert isinstance(names, list) and names and all(isinstance(n, bytes) for n in names)


def _finds_libraries_through_ctypes_util() -> None:
    """The modules that load liboqs and nettle call ctypes.util.find_library by attribute."""
    import asyncssh.crypto.umac as umac

    oqs = [m for m in ("pq", "sntrup") if hasattr(asyncssh.crypto, m)]
    assert oqs, "neither asyncssh.crypto.pq nor asyncssh.crypto.sntrup"
    for module in [umac, *(getattr(asyncssh.crypto, m) for m in oqs)]:
        assert "ctypes.util.find_library(" in inspect.getsource(module), module.__name__


def _host_key_validation() -> None:
    """validate_server_host_key(self, key_data) on the client connection class."""
    assert _params(asyncssh.SSHClientConnection.validate_server_host_key) == ["self", "key_data"]
    source = inspect.getsource(asyncssh.kex_dh)
    assert ".validate_server_host_key(" in source and ".verify(h, sig)" in source


def _send_packet() -> None:
    """send_packet(self, pkttype, *args, ...) on the connection class, MSG_IGNORE sent by it."""
    params = inspect.signature(asyncssh.SSHClientConnection.send_packet).parameters
    assert list(params)[:3] == ["self", "pkttype", "args"]
    assert params["args"].kind is inspect.Parameter.VAR_POSITIONAL
    assert "self.send_packet(MSG_IGNORE" in inspect.getsource(asyncssh.connection.SSHConnection)


def _packet_logging() -> None:
    """log_received_packet / log_sent_packet on connections and channels."""
    for cls in (asyncssh.SSHClientConnection, asyncssh.SSHClientChannel):
        for name in ("log_received_packet", "log_sent_packet"):
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"


def _debug_level_attribute() -> None:
    """asyncssh.logging.logger._debug_level is an int set by set_debug_level."""
    assert isinstance(asyncssh.logging.logger._debug_level, int)
    assert "_debug_level = level" in inspect.getsource(asyncssh.logging)


def _data_received() -> None:
    """The connection is the asyncio protocol: data_received(self, data, ...)."""
    params = _params(asyncssh.SSHClientConnection.data_received)
    assert params[:2] == ["self", "data"]


def _instance_attributes() -> None:
    """_server_kexinit, _server_sig_algs and _enc_alg_cs are set on the connection."""
    source = inspect.getsource(asyncssh.connection.SSHConnection)
    for name in ("_server_kexinit", "_server_sig_algs", "_enc_alg_cs"):
        assert f"self.{name} = " in source or f"self.{name}: " in source, name


def _global_request() -> None:
    """_make_global_request(request, *args) is a coroutine that returns at once while
    _transport is None, and is_closed() a method; _transport is set on the connection."""
    method = asyncssh.connection.SSHConnection._make_global_request
    assert inspect.iscoroutinefunction(method)
    assert _params(method)[:2] == ["self", "request"]
    source = inspect.getsource(method)
    assert "if not self._transport:" in source and "want_reply=True" in source
    assert "self._transport = None" in inspect.getsource(asyncssh.connection.SSHConnection)
    assert callable(asyncssh.SSHClientConnection.is_closed)


def _certificate_signer() -> None:
    """A generated certificate's signing_key.public_data is its CA's public key blob."""
    ca = asyncssh.generate_private_key("ssh-ed25519")
    host = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_host_certificate(host, "gw")
    assert compat.certificate_signer(cert) == ca.public_data


def _key_bits() -> None:
    """An RSA key's pyca_key.key_size is its modulus size; an Ed25519 key has a pyca_key."""
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048).convert_to_public()
    assert compat.key_bits(rsa) == 2048
    assert asyncssh.generate_private_key("ssh-ed25519").pyca_key is not None


INTERNALS: dict[str, Callable[[], None]] = {
    "ctypes.util.find_library at import (crypto.umac, crypto.pq/sntrup)": (
        _finds_libraries_through_ctypes_util
    ),
    "asyncssh.kex.get_kex_algs": lambda: _names_list("kex", "get_kex_algs"),
    "asyncssh.public_key.get_public_key_algs": lambda: _names_list(
        "public_key", "get_public_key_algs"
    ),
    "asyncssh.public_key.get_certificate_algs": lambda: _names_list(
        "public_key", "get_certificate_algs"
    ),
    "SSHClientConnection.validate_server_host_key and SSHKey.verify in kex": (_host_key_validation),
    "SSHConnection._server_kexinit, _server_sig_algs, _enc_alg_cs": _instance_attributes,
    "SSHConnection.send_packet": _send_packet,
    "SSHPacketLogger.log_received_packet/log_sent_packet": _packet_logging,
    "asyncssh.logging.logger._debug_level": _debug_level_attribute,
    "SSHConnection.data_received": _data_received,
    "SSHOpenSSHCertificate.signing_key.public_data": _certificate_signer,
    "SSHKey.pyca_key.key_size": _key_bits,
    "SSHConnection._make_global_request, _transport, is_closed": _global_request,
}


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_internal_is_there_in_the_expected_shape(name: str) -> None:
    """Each internal asyncssh_compat relies on, checked alone so a failure names it."""
    try:
        INTERNALS[name]()
    except (AssertionError, AttributeError, TypeError, ValueError, OSError) as exc:
        pytest.fail(
            f"asyncssh {asyncssh.__version__} changed what asyncssh_compat relies on: "
            f"{name} ({type(exc).__name__}: {exc}); adapt pppssh/asyncssh_compat.py",
            pytrace=False,
        )


def test_the_module_docstring_lists_each_reliance() -> None:
    """Every `Relies on:` function of the module is in the table of its docstring."""
    doc = compat.__doc__ or ""
    for name in ("find_library", "get_kex_algs", "validate_server_host_key", "SSHKey.verify",
                 "_server_kexinit", "_server_sig_algs", "signing_key", "send_packet",
                 "_enc_alg_cs", "_debug_level", "data_received", "pyca_key",
                 "_make_global_request"):  # fmt: skip
        assert name in doc, name
    for name in compat.__all__:
        obj = getattr(compat, name)
        if inspect.isfunction(obj) and obj is not compat.ld_cache_lookup:
            assert "Relies on:" in (obj.__doc__ or ""), name


def test_live_connection_has_the_internals(tmp_path: Path) -> None:
    """On a real connection: the server's KEXINIT and server-sig-algs are read, and every
    patch is in place (host key check, signature check, MSG_IGNORE, logging, reads)."""

    async def main() -> None:
        async with SSHTestServer(tmp_path) as srv:
            conn, client = await connect(srv.cfg())
            try:
                payload = compat.server_kexinit(conn)
                assert payload is not None and payload[0] == 20  # SSH_MSG_KEXINIT
                offer = server_offer(conn)
                assert offer is not None and "curve25519-sha256" in offer["kex"]
                algs = compat.server_sig_algs(conn)
                assert algs is not None and "ssh-ed25519" in algs
                cipher = conn._enc_alg_cs  # type: ignore[attr-defined]
                assert cipher == conn.get_extra_info("send_cipher").encode()
                assert client.presented  # the wrapped validation ran
                assert "validate_server_host_key" in vars(conn)
                key = conn.get_server_host_key()
                assert key is not None and "verify" in vars(key)  # the signature check
                for name in ("send_packet", "log_received_packet", "log_sent_packet"):
                    assert name in vars(conn), name
            finally:
                conn.close()
                await conn.wait_closed()

    asyncio.run(asyncio.wait_for(main(), LIMIT))


# ---------------------------------------------------------------- what each patch does


class _Conn:
    """A connection-shaped object: records packets, has a cipher."""

    def __init__(self, cipher: bytes) -> None:
        """Nothing sent yet."""
        self._enc_alg_cs = cipher
        self.sent: list[int] = []

    def send_packet(self, pkttype: int, *args: bytes, **kwargs: object) -> None:
        """Record the packet type."""
        self.sent.append(pkttype)


def test_skip_ignore_packets_drops_only_msg_ignore_and_keeps_it_for_cbc() -> None:
    ctr = _Conn(b"aes128-ctr")
    assert compat.skip_ignore_packets(ctr)
    for pkttype in (2, 94, 2, 1):
        ctr.send_packet(pkttype, b"")
    assert ctr.sent == [94, 1]
    cbc = _Conn(b"aes128-cbc")
    assert compat.skip_ignore_packets(cbc)
    cbc.send_packet(2, b"")
    assert cbc.sent == [2]
    assert not compat.skip_ignore_packets(object())  # nothing to patch: left alone


def test_server_kexinit_and_sig_algs_on_other_shapes() -> None:
    class Shape:
        def __init__(self, sig_algs: set[bytes]) -> None:
            self._server_kexinit = b""
            self._server_sig_algs = sig_algs

    assert compat.server_kexinit(Shape(set())) is None  # not received yet
    assert compat.server_kexinit(object()) is None
    assert compat.server_sig_algs(Shape({b"", b"ssh-rsa"})) == frozenset({"ssh-rsa"})
    assert compat.server_sig_algs(object()) is None
    assert compat.server_sig_algs(Shape({b""})) == frozenset()  # the extension was absent


def test_wraps_leave_an_object_without_the_step_alone() -> None:
    assert not compat.wrap_host_key_validation(object(), lambda f: f)
    assert not compat.wrap_data_received(object(), lambda f: f)
    assert compat.certificate_signer(object()) is None  # a certificate is then refused
    assert compat.key_bits(object()) == 0  # an RSA key is then refused as too small


def test_wrap_data_received_calls_the_original_inside() -> None:
    calls: list[str] = []

    class Proto:
        def data_received(self, data: bytes) -> None:
            calls.append(f"original {data!r}")

    def wrap(receive: Callable[..., None]) -> Callable[..., None]:
        def around(data: bytes, *args: object) -> None:
            calls.append("before")
            receive(data, *args)
            calls.append("after")

        return around

    proto = Proto()
    assert compat.wrap_data_received(proto, wrap)
    proto.data_received(b"x")
    assert calls == ["before", "original b'x'", "after"]


def test_debug_level_follows_asyncssh() -> None:
    assert compat.debug_level() == 1
    asyncssh.set_debug_level(3)
    try:
        assert compat.debug_level() == 3
        assert not compat.skip_packet_logging(_Conn(b""))  # level 3 keeps the log
    finally:
        asyncssh.set_debug_level(1)


def test_find_library_is_restored() -> None:
    assert ctypes.util.find_library.__module__ == "ctypes.util"


# ---------------------------------------------------------------- nobody else reaches in


def _hooked_names() -> set[str]:
    """Method names of the asyncssh objects pppssh holds: replacing one is a patch."""
    names: set[str] = set()
    for cls in (asyncssh.SSHClientConnection, asyncssh.SSHClientChannel, asyncssh.SSHKey):
        names |= {n for n in dir(cls) if callable(getattr(cls, n, None))}
    return names


def _reaches_in(tree: ast.AST, hooked: set[str]) -> list[str]:
    """Where a module reads a private attribute of another object, asks getattr/hasattr/
    setattr for a private name, replaces an asyncssh method, or imports asyncssh itself."""
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}: "
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if not own and not node.attr.startswith("__") and ast.unparse(node) != "os._exit":
                found.append(where + ast.unparse(node))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(where + ast.unparse(node))
        if isinstance(node, ast.Assign):
            for target in node.targets:
                own = isinstance(target, ast.Attribute) and (
                    isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")
                )  # an object setting its own attribute (self.write = ...) patches nothing
                if isinstance(target, ast.Attribute) and target.attr in hooked and not own:
                    found.append(where + ast.unparse(target) + " = ...")
        if isinstance(node, ast.Import) and any(a.name.startswith("asyncssh") for a in node.names):
            found.append(where + ast.unparse(node))
        if (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").startswith("asyncssh")
        ):
            found.append(where + ast.unparse(node))
    return found


def test_only_the_compat_module_reaches_into_asyncssh() -> None:
    hooked = _hooked_names()
    assert {"send_packet", "validate_server_host_key", "verify", "data_received"} <= hooked
    package = Path(pppssh.__file__).parent
    found = {
        path.name: problems
        for path in sorted(package.glob("*.py"))
        if path.name != "asyncssh_compat.py"
        and (problems := _reaches_in(ast.parse(path.read_text()), hooked))
    }
    assert found == {}
    # and the scan sees what it looks for
    sample = "import asyncssh\nx = getattr(conn, '_server_kexinit')\nconn.send_packet = f\nc._k\n"
    assert len(_reaches_in(ast.parse(sample), hooked)) == 4
