"""A PPP address that is the SSH server's: refused at parse time for an IP-literal host, and
by start (over fake ports) once a host name is resolved, before anything changes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from pppssh import check
from pppssh.config import parse, server_address_error
from tests.fakes import PEER, site
from tests.sshserver import SSHTestServer
from tests.test_check import PLAIN_OK, _answers
from tests.test_config import BASE, CONF
from tests.test_lifecycle import harness


def test_ppp_address_equal_to_resolved_ssh_server_is_named_by_the_usual_error() -> None:
    cfg = parse(BASE, CONF)  # host = gw.example.net: the parser cannot know its address
    number = BASE.split("\n").index("remote_address = 10.99.0.2") + 1
    error = server_address_error(cfg, "10.99.0.2")
    assert error is not None and str(error) == (
        f"site-b.conf:{number}: remote_address: 10.99.0.2 is the SSH server (host "
        "gw.example.net resolves to it): the link would carry its own SSH connection; use an "
        "address the server does not have"
    )
    assert server_address_error(cfg, "::ffff:10.99.0.1") is not None  # local_address
    assert server_address_error(cfg, "10.99.0.3") is None
    assert server_address_error(cfg, "2001:db8::2") is None


def test_start_refuses_a_resolved_server_address_before_anything_changes() -> None:
    """The fake server resolves to the site's remote_address: the attempt ends right after
    the connection, with the file:line: key line, no command run and an empty ledger."""
    h = harness(stop_when_up=False)
    h.supervisor.cfg = h.cfg = dataclasses.replace(h.cfg, reconnect=False)
    h.world.server = str(PEER)
    assert h.run() == 1
    line = h.cfg.lines["remote_address"]
    assert h.lines()[-1] == (
        f"pppssh: site-b: {h.cfg.path}:{line}: remote_address: {PEER} is the SSH server (host "
        "gw.example.net resolves to it): the link would carry its own SSH connection; use an "
        "address the server does not have"
    )
    assert h.world.calls == [("ssh", "connect"), ("ssh", "close")]
    assert h.ledger() == [] and h.readiness.said == []


def test_start_goes_on_when_the_server_is_another_address() -> None:
    h = harness(site())
    assert h.run() == 0
    assert ("pppd", "start") in h.world.calls


def test_check_names_a_resolved_server_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check, its connection's peer standing in for a name that resolves to the site's
    remote_address (the test server listens on loopback, never a PPP address): one failed
    line with the usual error, and its fix; the login itself passed."""
    monkeypatch.setattr(check, "pin_address", lambda client: "10.99.0.2")

    async def main_() -> None:
        async with SSHTestServer(tmp_path, _answers(PLAIN_OK)) as srv:
            cfg = srv.cfg()
            checks = {c.what: c for c in await check._remote_checks(cfg)}
            clash = checks["PPP addresses not the SSH server's"]
            number = srv.site_text().split("\n").index("remote_address = 10.99.0.2") + 1
            assert not clash.ok and clash.detail == (
                f"{cfg.path}:{number}: remote_address: 10.99.0.2 is the SSH server (host "
                "127.0.0.1 resolves to it): the link would carry its own SSH connection; use "
                "an address the server does not have"
            )
            assert "does not have" in clash.fix and checks["key accepted"].ok

    asyncio.run(main_())
