"""Reach the first SSH hop through a proxy: HTTP CONNECT, SOCKS5, or a proxy command.

Each returns a connected stream socket that asyncssh runs SSH over (`sock=`), so the proxy
only ever carries SSH's encrypted bytes: host keys are checked end to end as without it. The
proxy's answer is read with a bound on its size and on the time it takes, and a refusal is
reported in one printable line naming the proxy and what it said. Basic authentication for
an HTTP proxy comes from a root-only file (proxy_auth), never from the site file. A proxy
command runs as root without a shell, its program checked by trust.check_program, with %h
and %p replaced by the host and port; it talks SSH on a socketpair.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import trust
from .config import Proxy
from .errors import TunnelError, Unreachable, Untrusted
from .sanitize import printable

__all__ = ["MAX_REPLY", "open_command", "open_proxy", "read_auth", "substitute"]

MAX_REPLY = 8192  # bytes of an HTTP proxy's reply headers read at most


def read_auth(path: Path) -> bytes:
    """`user:password` from a root-only file (secret, like an identity), as one line."""
    try:
        data = trust.read_trusted(path, "proxy_auth", secret=True, limit=4096).data
    except Untrusted as exc:  # Missing and TooLarge are Untrusted too
        raise TunnelError(str(exc)) from None
    line = data.decode("utf-8", "replace").strip("\r\n")
    if ":" not in line or "\n" in line or any(ord(c) < 32 for c in line):
        raise TunnelError(f"proxy_auth {path} must hold one line user:password")
    return line.encode()


def _target(host: str, port: int) -> str:
    """host:port as CONNECT writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """n bytes from sock, or fewer when it closes."""
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _http_connect(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    proxy: Proxy,
    host: str,
    port: int,
    auth: bytes | None,
) -> None:
    """Ask an HTTP proxy to CONNECT; refuse anything but a 2xx status."""
    target = _target(host, port)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth is not None:
        request += f"Proxy-Authorization: Basic {base64.b64encode(auth).decode()}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        if len(reply) >= MAX_REPLY:
            raise TunnelError(f"proxy {proxy} sent more than {MAX_REPLY} bytes of headers")
        # one byte at a time: nothing after the headers (the SSH banner) is taken from asyncssh
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            raise TunnelError(f"proxy {proxy} closed the connection before answering CONNECT")
        reply += chunk
    status = reply.split(b"\r\n", 1)[0].decode("latin-1")
    words = status.split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/1.") or not words[1].isdigit():
        raise TunnelError(f"proxy {proxy} is not an HTTP proxy: {printable(status, 100)}")
    if not words[1].startswith("2"):
        hint = " (proxy_auth names the account)" if words[1] == "407" else ""
        raise TunnelError(f"proxy {proxy} refused CONNECT {target}: {printable(status, 100)}{hint}")


SOCKS5_ERRORS = {
    1: "general failure",
    2: "not allowed by its rules",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


async def _socks5_connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy, host: str, port: int
) -> None:
    """SOCKS5 (RFC 1928) CONNECT without authentication; the proxy resolves names."""
    await loop.sock_sendall(sock, b"\x05\x01\x00")
    hello = await _recv_exactly(loop, sock, 2)
    if hello != b"\x05\x00":
        raise TunnelError(
            f"proxy {proxy} did not accept a SOCKS5 connection without authentication "
            f"(answered {hello.hex() or 'nothing'})"
        )
    try:
        addr = ipaddress.ip_address(host)
        request = (b"\x01" if addr.version == 4 else b"\x04") + addr.packed
    except ValueError:
        name = host.encode("idna")
        request = b"\x03" + bytes([len(name)]) + name
    await loop.sock_sendall(sock, b"\x05\x01\x00" + request + struct.pack(">H", port))
    head = await _recv_exactly(loop, sock, 4)
    if len(head) < 4 or head[0] != 5:
        raise TunnelError(f"proxy {proxy} is not a SOCKS5 proxy (answered {head.hex()})")
    if head[1] != 0:
        why = SOCKS5_ERRORS.get(head[1], f"error {head[1]}")
        raise TunnelError(f"proxy {proxy} refused to connect to {_target(host, port)}: {why}")
    if head[3] == 1:
        rest = 4 + 2
    elif head[3] == 4:
        rest = 16 + 2
    elif head[3] == 3:
        size = await _recv_exactly(loop, sock, 1)
        rest = (size[0] if size else 0) + 2
    else:
        raise TunnelError(f"proxy {proxy} answered with address type {head[3]}")
    if len(await _recv_exactly(loop, sock, rest)) != rest:
        raise TunnelError(f"proxy {proxy} closed the connection while answering")


async def open_proxy(
    proxy: Proxy, host: str, port: int, timeout: float, auth: bytes | None = None
) -> socket.socket:
    """A socket connected through proxy to host:port, within timeout seconds."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM), timeout
        )
    except TimeoutError:
        raise Unreachable(f"cannot resolve proxy {proxy} within {timeout:g}s") from None
    except OSError as exc:
        raise Unreachable(f"cannot resolve proxy {proxy}: {exc.strerror or exc}") from None
    if not infos:
        raise Unreachable(f"cannot connect to proxy {proxy}: no address")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
        except TimeoutError:
            raise Unreachable(f"cannot connect to proxy {proxy}: no answer within "
                              f"{timeout:g}s") from None  # fmt: skip
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise Unreachable(f"cannot connect to proxy {proxy}: {reason}") from None
        try:
            if proxy.scheme == "http":
                step = _http_connect(loop, sock, proxy, host, port, auth)
            else:
                step = _socks5_connect(loop, sock, proxy, host, port)
            await asyncio.wait_for(step, timeout)
        except TimeoutError:
            raise TunnelError(f"proxy {proxy} did not answer within {timeout:g}s") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise TunnelError(f"proxy {proxy}: {reason}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def substitute(argv: Sequence[str], host: str, port: int) -> list[str]:
    """The proxy command with %h, %p and %% replaced (config allows no other token)."""
    out = []
    for word in argv:
        parts = word.split("%%")
        out.append("%".join(p.replace("%h", host).replace("%p", str(port)) for p in parts))
    return out


async def open_command(
    argv: Sequence[str], host: str, port: int
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Start the proxy command (program checked by trust, no shell) on one end of a
    socketpair; return the other end and the process (kill it when done)."""
    try:
        program = trust.check_program(argv[0], "proxy_command program")
    except Untrusted as exc:
        raise TunnelError(str(exc)) from None
    words = substitute(argv, host, port)
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [str(program.path), *words[1:]],
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        raise TunnelError(f"proxy_command {printable(argv[0])}: {exc.strerror or exc}") from None
    finally:
        theirs.close()
    ours.setblocking(False)
    return ours, process


def stop_command(process: subprocess.Popen[bytes]) -> None:
    """End a proxy command (bounded wait)."""
    with contextlib.suppress(OSError):
        process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
