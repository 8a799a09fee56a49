"""asyncssh, imported with ctypes' find_library answered from the ld.so cache alone.

At import asyncssh looks for liboqs (twice, as "oqs" and "liboqs") and for nettle (UMAC)
with ctypes.util.find_library. For a library the ld.so cache does not list, find_library then
tries to link a program against it with gcc, and after that with ld: up to ten processes,
which on a slow gateway (the lab kernel) is a third of a second of every `pppssh start`.
Here one `ldconfig -p` answers all three names, as find_library's first step would; a
library only gcc or ld could find (one in a directory ldconfig was not run for) counts as
absent: asyncssh then lacks sntrup761, as it would without liboqs. nettle is not looked
for at all: pppssh offers no UMAC (ssh.MACS), and unloaded it is 0.25 MB less RSS. Every
later find_library call is ctypes' own.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["NOT_LOADED", "asyncssh", "ld_cache_lookup"]

NOT_LOADED = frozenset({"nettle"})  # UMAC only, which pppssh does not offer

# ctypes.util's names for this machine's ABI in `ldconfig -p` output
_ABI = {
    "x86_64-64": "libc6,x86-64",
    "ppc64-64": "libc6,64bit",
    "sparc64-64": "libc6,64bit",
    "s390x-64": "libc6,64bit",
    "ia64-64": "libc6,IA-64",
}.get(f"{os.uname().machine}-{8 * struct.calcsize('P')}", "libc6")


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
    """Within: find_library consults the ld.so cache once, and nothing else."""
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
