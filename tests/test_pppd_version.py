"""pppd versions and ppp-project #323: `lcp-echo-adaptive` only for a pppd that has the fix.

pppd before 2.5.0 (Debian 12 ships 2.4.9) never resets its count of unanswered LCP echoes
while traffic arrives, so with `lcp-echo-adaptive` misses spread over a long busy period add
up and end a working link. The local pppd is asked its version by the very program that then
runs; the remote one by the set-up script (tests/test_remote_setup.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from pppssh.commands import ECHO_ADAPTIVE_FIXED_IN, echo_adaptive_safe, pppd_version
from pppssh.config import SiteConfig, parse
from pppssh.localppp import LocalPppd


def site(ppp: str = "") -> SiteConfig:
    """A typical site file, with extra [ppp] lines."""
    text = (
        "[site]\nname = site-b\n"
        "[remote]\nhost = gw.example.net\nuser = pppssh\n"
        "identity = id_ed25519\nknown_hosts = known_hosts\n"
        f"[ppp]\nlocal_address = 10.99.0.1\nremote_address = 10.99.0.2\n{ppp}"
        "[networks]\nlocal = 10.1.0.0/24\nremote = 10.2.0.0/24\n"
    )
    return parse(text, Path("/etc/pppssh/site-b.conf"))


@pytest.mark.parametrize(
    ("said", "version"),
    [("pppd version 2.4.9\n", (2, 4, 9)), ("pppd version 2.5.0", (2, 5, 0)),
     ("pppd version 2.5", (2, 5, 0)), ("pppd version 2.5.2-rc1", (2, 5, 2)),
     ("warning: x\npppd version 2.4.7\n", (2, 4, 7)), ("", None), ("pppd 2.5.0", None),
     ("pppd: unrecognized option '--version'", None), ("pppd version x.y", None)],
)  # fmt: skip
def test_pppd_version_reads_what_pppd_prints(said: str, version: tuple[int, ...] | None) -> None:
    assert pppd_version(said) == version


def test_only_the_release_with_the_fix_gets_lcp_echo_adaptive() -> None:
    # ppp-project PR #376 (commit 844b69d) is first in 2.5.0
    assert ECHO_ADAPTIVE_FIXED_IN == (2, 5, 0)
    assert not echo_adaptive_safe((2, 4, 9)) and not echo_adaptive_safe(None)
    assert echo_adaptive_safe((2, 5, 0)) and echo_adaptive_safe((2, 5, 2))


def fake_pppd(tmp_path: Path, answer: str) -> Path:
    """A program that answers --version with `answer` and otherwise records its argv."""
    prog = tmp_path / "pppd"
    prog.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then {answer}; fi\n'
        f"printf '%s\\n' \"$@\" > {tmp_path}/argv\n"
    )
    prog.chmod(0o755)
    return prog


@pytest.mark.parametrize(
    ("answer", "adaptive"),
    [("echo 'pppd version 2.4.9'; exit 0", False),
     ("echo 'pppd version 2.5.1'; exit 0", True),
     ("echo \"pppd: unrecognized option '--version'\" >&2; exit 2", False)],
)  # fmt: skip
def test_local_pppd_gets_the_options_its_version_allows(
    tmp_path: Path, answer: str, adaptive: bool
) -> None:
    cfg = replace(site(), local_pppd=str(fake_pppd(tmp_path, answer)))

    async def main() -> list[str]:
        pppd = LocalPppd(cfg)
        argv = pppd.start()
        await asyncio.wait_for(pppd.exited, 30)
        pppd.close()
        return argv

    argv = asyncio.run(main())
    ran = (tmp_path / "argv").read_text().splitlines()
    assert ran == argv[1:]
    assert ("lcp-echo-adaptive" in ran) is adaptive
    assert ran[ran.index("lcp-echo-interval") :][:4] == [
        "lcp-echo-interval", "10", "lcp-echo-failure", "3"
    ]  # fmt: skip
