"""pppssh.proxy against in-process fake proxies (HTTP CONNECT, SOCKS5) and real programs."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pppssh import proxy, trust
from pppssh.config import Proxy
from pppssh.errors import TunnelError, Unreachable

T = TypeVar("T")
LIMIT = 20  # seconds: a bound on a hung test, never a synchronisation point


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine in a fresh event loop, bounded by LIMIT seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(make(), LIMIT)

    return asyncio.run(bounded())


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    """A TCP server on 127.0.0.1 and its port."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The target: send back what comes in, prefixed."""
    data = await reader.read(100)
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF."""
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


def http_proxy(seen: list[bytes], answer: bytes | None = None) -> Handler:
    """A CONNECT proxy that records the request; answers 200 and relays, or `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
            writer.close()
            return
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        up_r, up_w = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\nVia: fake\r\n\r\n")
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    return handle


def socks_proxy(seen: list[bytes], status: int = 0, methods: bytes = b"\x05\x00") -> Handler:
    """A SOCKS5 proxy without authentication that relays to IPv4 targets (or refuses)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await reader.readexactly(3)
        seen.append(hello)
        writer.write(methods)
        if methods != b"\x05\x00":
            writer.close()
            return
        head = await reader.readexactly(4)
        if head[3] == 1:
            addr = socket.inet_ntoa(await reader.readexactly(4))
        else:
            addr = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        (port,) = struct.unpack(">H", await reader.readexactly(2))
        seen.append(f"{addr}:{port}".encode())
        writer.write(b"\x05" + bytes([status]) + b"\x00\x01" + bytes(4) + b"\x00\x00")
        await writer.drain()
        if status:
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection(addr, port)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    return handle


async def through(sock: socket.socket, data: bytes) -> bytes:
    """Send data over a connected socket and read what comes back until EOF."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    out = b""
    while chunk := await loop.sock_recv(sock, 4096):
        out += chunk
    sock.close()
    return out


def test_http_connect_relays_and_sends_basic_auth() -> None:
    seen: list[bytes] = []

    async def go() -> bytes:
        target, tport = await serve(echo)
        server, port = await serve(http_proxy(seen))
        async with target, server:
            sock = await proxy.open_proxy(
                Proxy("http", "127.0.0.1", port), "127.0.0.1", tport, 5, b"u:p w"
            )
            assert sock.getpeername()[1] == port
            return await through(sock, b"SSH-2.0-x\r\n")

    assert run(go) == b"echo:SSH-2.0-x\r\n"
    request = seen[0].decode()
    assert request.startswith("CONNECT 127.0.0.1:")
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'u:p w').decode()}" in request


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
         "refused CONNECT 127.0.0.1:22: HTTP/1.1 407 Proxy Authentication Required "
         "(proxy_auth names the account)"),
        (b"HTTP/1.0 403 \x1b[2Jgo\taway\r\n\r\n", "refused CONNECT 127.0.0.1:22: HTTP/1.0 403 "),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "is not an HTTP proxy: SSH-2.0-OpenSSH_9.2"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000, "sent more than 8192 bytes of headers"),
    ],
)  # fmt: skip
def test_http_refusals_are_one_printable_line(answer: bytes, message: str) -> None:
    async def go() -> str:
        server, port = await serve(http_proxy([], answer))
        async with server:
            with pytest.raises(TunnelError) as info:
                await proxy.open_proxy(Proxy("http", "127.0.0.1", port), "127.0.0.1", 22, 5)
            return str(info.value)

    got = run(go)
    assert message in got
    assert got.startswith("proxy http://127.0.0.1:")
    assert got.isprintable()


def test_socks5_relays_names_and_addresses() -> None:
    seen: list[bytes] = []

    async def go() -> bytes:
        target, tport = await serve(echo)
        server, port = await serve(socks_proxy(seen))
        async with target, server:
            sock = await proxy.open_proxy(Proxy("socks5", "127.0.0.1", port), "127.0.0.1",
                                          tport, 5)  # fmt: skip
            return await through(sock, b"hi")

    assert run(go) == b"echo:hi"
    assert seen[0] == b"\x05\x01\x00"
    assert seen[1].startswith(b"127.0.0.1:")


@pytest.mark.parametrize(
    ("status", "methods", "message"),
    [
        (5, b"\x05\x00", "refused to connect to gw.example:22: connection refused"),
        (2, b"\x05\x00", "refused to connect to gw.example:22: not allowed by its rules"),
        (0, b"\x05\xff", "did not accept a SOCKS5 connection without authentication"),
        (0, b"HT", "did not accept a SOCKS5 connection"),
    ],
)
def test_socks5_refusals(status: int, methods: bytes, message: str) -> None:
    async def go() -> str:
        server, port = await serve(socks_proxy([], status, methods))
        async with server:
            with pytest.raises(TunnelError) as info:
                await proxy.open_proxy(Proxy("socks5", "127.0.0.1", port), "gw.example", 22, 5)
            return str(info.value)

    assert message in run(go)


def test_unreachable_and_silent_proxies() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    async def go() -> tuple[str, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(Unreachable) as refused:
                await proxy.open_proxy(Proxy("http", "127.0.0.1", closed), "h", 22, 5)
        server, port = await serve(silent)
        async with server:
            with pytest.raises(TunnelError) as info:
                await proxy.open_proxy(Proxy("socks5", "127.0.0.1", port), "h", 22, 0.3)
        return str(refused.value), str(info.value)

    refused, silent_msg = run(go)
    assert refused == f"cannot connect to proxy http://127.0.0.1:{refused.split(':')[-2]}: " \
        "Connection refused"  # fmt: skip
    assert silent_msg.endswith("did not answer within 0.3s")


@pytest.fixture
def top(tmp_path: Path) -> Iterator[Path]:
    """A private folder trust accepts as the top (tmp_path lies under /tmp)."""
    saved, trust.TOP = trust.TOP, str(tmp_path)
    try:
        yield tmp_path
    finally:
        trust.TOP = saved


def test_read_auth_is_a_secret_file(top: Path) -> None:
    path = top / "proxy.auth"
    path.write_text("alice:s3cret word\n")
    path.chmod(0o644)
    with pytest.raises(TunnelError, match="readable by group or others"):
        proxy.read_auth(path)
    path.chmod(0o600)
    assert proxy.read_auth(path) == b"alice:s3cret word"
    path.write_text("no colon\n")
    with pytest.raises(TunnelError, match="must hold one line user:password"):
        proxy.read_auth(path)
    path.write_text("a:b\nc:d\n")
    with pytest.raises(TunnelError, match="must hold one line user:password"):
        proxy.read_auth(path)


def test_substitute_only_h_p_and_percent() -> None:
    assert proxy.substitute(["/x", "%h:%p", "100%%", "%%h"], "gw", 2222) == [
        "/x", "gw:2222", "100%", "%h",
    ]  # fmt: skip


def test_proxy_command_talks_on_its_stdio() -> None:
    async def go() -> bytes:
        sock, process = await proxy.open_command(["/bin/echo", "to", "%h", "%p"], "gw", 2222)
        try:
            out = b""
            loop = asyncio.get_running_loop()
            while chunk := await loop.sock_recv(sock, 100):
                out += chunk
            return out
        finally:
            sock.close()
            proxy.stop_command(process)

    assert run(go) == b"to gw 2222\n"


def test_proxy_command_program_must_be_trusted(top: Path) -> None:
    program = top / "connect"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o777)

    async def go() -> str:
        with pytest.raises(TunnelError) as info:
            await proxy.open_command([str(program), "%h"], "gw", 22)
        return str(info.value)

    assert "proxy_command program" in run(go)
    assert "writable by group or others" in run(go)
