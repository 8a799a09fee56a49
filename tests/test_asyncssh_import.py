"""asyncssh is imported without ctypes linking test programs (pppssh/asyncssh_compat.py)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pppssh.asyncssh_compat import ld_cache_lookup

REPO = Path(__file__).resolve().parents[1]

LISTING = """\
742 libs found in cache `/etc/ld.so.cache'
\tlibffi.so.8 (libc6,x86-64) => /lib/x86_64-linux-gnu/libffi.so.8
\tlibnettle.so.8 (libc6,x86-64) => /lib/x86_64-linux-gnu/libnettle.so.8
\tlibnettle.so.6 (libc6) => /lib/i386-linux-gnu/libnettle.so.6
\tliboqs.so.5 (libc6) => /usr/lib/i386-linux-gnu/liboqs.so.5
"""


def test_lookup_answers_from_the_listing_for_this_abi() -> None:
    find = ld_cache_lookup(LISTING, "libc6,x86-64")
    assert find("ffi") == "libffi.so.8"
    assert find("nettle") is None  # listed, but UMAC's library is not wanted
    assert find("oqs") is None  # listed, but for another ABI
    assert find("liboqs") is None
    assert ld_cache_lookup(LISTING, "libc6")("oqs") == "liboqs.so.5"


def test_find_library_is_ctypes_own_after_the_import() -> None:
    assert ctypes.util.find_library.__module__ == "ctypes.util"


def _linkers_run(tmp_path: Path, code: str) -> list[str]:
    """Run code in a fresh interpreter whose gcc, cc and ld only log that they ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "ran.log"
    log.unlink(missing_ok=True)
    for name in ("gcc", "cc", "ld"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexit 1\n')
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    return log.read_text().split() if log.exists() else []


def test_importing_pppssh_runs_no_linker(tmp_path: Path) -> None:
    if not Path("/sbin/ldconfig").exists():
        pytest.skip("no /sbin/ldconfig: ctypes' own find_library runs, nothing to compare")
    if "liboqs" in subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout:
        pytest.skip("liboqs is in the ld.so cache: no find_library here reaches gcc or ld")
    plain = _linkers_run(tmp_path, "import asyncssh")
    assert plain, "asyncssh alone should have tried gcc or ld for liboqs here"
    code = "import pppssh.adapters, pppssh.check, pppssh.remote_setup"
    assert _linkers_run(tmp_path, code) == []


def test_nettle_is_not_loaded(tmp_path: Path) -> None:
    code = (
        "import pppssh.adapters; print(any('nettle' in line for line in open('/proc/self/maps')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout  # fmt: skip
    assert out.split() == ["False"]
