"""The pppssh command runs without the ssl module (pppssh/__main__.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = """
import sys
import pppssh.__main__ as main
main.without_tls()
import asyncio
import pppssh.tunnel, pppssh.check, pppssh.remote_setup

async def echo_once():
    async def serve(reader, writer):
        writer.write(await reader.read(5))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(b"hello")
    got = await reader.read(5)
    writer.close()
    server.close()
    return got

print(asyncio.run(echo_once()).decode(), sys.modules.get("ssl"),
      any("libssl" in line for line in open("/proc/self/maps")))
"""


def test_command_line_runs_asyncio_without_ssl() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    ).stdout.split()  # fmt: skip
    assert out == ["hello", "None", "False"]


def test_ssl_is_there_without_it() -> None:
    """The contrast: imported as usual, asyncio loads ssl (and libssl) here."""
    code = "import asyncio, sys; print(sys.modules.get('ssl') is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()  # fmt: skip
    assert out == ["True"]
