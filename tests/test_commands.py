"""pppssh.commands: one model of every remote operation. Golden files hold what each
derivation renders (argv sent in both modes, sudoers, the helper's policy and script, check's
fix lines, workstation lines); the agreement tests prove that every request the lifecycle
sends is allowed by the sudoers lines resp. the helper, and nothing near it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pppssh import check
from pppssh.config import SiteConfig, parse
from pppssh.plan import (
    full_tunnel_routes,
    local_routes,
    remote_interface_command,
    remote_leftover_check,
    remote_leftover_kill,
    remote_pidfile,
    remote_pppd_argv,
    remote_routes,
    shell_join,
)
from pppssh.remote_setup import helper_text, policy_text, sudo_commands, sudoers_text
from pppssh.workstations import gateway_commands

GOLDEN = Path(__file__).parent / "golden"

BASE = """\
[site]
name = {name}
[remote]
host = 198.51.100.2
user = {user}
identity = id_ed25519
known_hosts = known_hosts
helper = {helper}
[ppp]
local_address = {local_address}
remote_address = {remote_address}
[networks]
{networks}
"""
SITES = {
    # name: (site name, user, helper, local_address, remote_address, [networks] lines)
    "helper": ("site-b", "tunnel", "yes", "192.168.77.1", "192.168.77.2",
               "local = 10.1.0.0/24, 10.3.0.0/16\nremote = 10.2.0.0/24"),
    "plain": ("site-b", "pppssh", "no", "10.99.0.1", "10.99.0.2",
              "local = 10.1.0.0/24\nremote = 10.2.0.0/24, 172.20.0.0/22"),
    "full-tunnel": ("road", "pppssh", "no", "10.99.0.1", "10.99.0.2",
                    "local = 10.1.0.0/24, 10.1.1.0/24, 10.1.2.128/25\nfull_tunnel = yes"),
    "odd-name": ("a.b_c-1", "link.a_b", "yes", "10.255.0.1", "10.255.0.2",
                 "local = 192.168.1.0/24\nremote = 192.168.2.0/24"),
    "odd-plain": ("x_y.z", "x.y", "no", "10.255.0.1", "10.255.0.2",
                  "local = 192.168.1.0/24, 192.168.1.128/32\nremote = 192.168.2.0/24"),
    "no-networks": ("bare", "pppssh", "yes", "10.99.0.1", "10.99.0.2", ""),
}  # fmt: skip


def site(case: str) -> SiteConfig:
    """The site file of one case."""
    name, user, helper, local_address, remote_address, networks = SITES[case]
    text = BASE.format(
        name=name, user=user, helper=helper, local_address=local_address,
        remote_address=remote_address, networks=networks,
    )  # fmt: skip
    return parse(text, Path(f"/etc/pppssh/{name}.conf"))


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; PPPSSH_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("PPPSSH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def sent_text(cfg: SiteConfig) -> str:
    """Everything the lifecycle sends to the remote gateway and runs here, one per line."""
    lines = [
        f"pppd: {shell_join(remote_pppd_argv(cfg))}",
        f"pidfile: {remote_pidfile(cfg)}",
        f"leftover check: {remote_leftover_check(cfg).shown}",
        f"leftover kill: {remote_leftover_kill(cfg).shown}",
        f"leftover kill KILL: {remote_leftover_kill(cfg, 'KILL').shown}",
        f"interface: {remote_interface_command(cfg).shown}",
    ]
    for route in remote_routes(cfg, "ppp3"):
        lines += [f"remote add: {route.add.shown}", f"remote del: {route.delete.shown}"]
    for route in local_routes(cfg, "ppp0") + full_tunnel_routes(cfg, "ppp0"):
        lines += [f"local add: {route.add.shown}", f"local del: {route.delete.shown}"]
    return "\n".join(lines) + "\n"


def fix_text(cfg: SiteConfig) -> str:
    """`pppssh check`'s lines when sudo there refuses everything, and when it allows all."""
    commands = sudo_commands(cfg)
    refused = check._sudo_checks(cfg, [False] * len(commands))
    allowed = check._sudo_checks(cfg, [True] * len(commands))
    return "".join(c.line() + "\n" for c in refused + allowed)


@pytest.mark.parametrize("case", SITES)
def test_sent_golden(case: str) -> None:
    golden(f"commands-{case}.sent", sent_text(site(case)))


@pytest.mark.parametrize("case", SITES)
def test_sudoers_golden(case: str) -> None:
    golden(f"commands-{case}.sudoers", sudoers_text(site(case)))


@pytest.mark.parametrize("case", SITES)
def test_policy_golden(case: str) -> None:
    golden(f"commands-{case}.policy", policy_text(site(case)))


@pytest.mark.parametrize("case", SITES)
def test_check_fix_golden(case: str) -> None:
    golden(f"commands-{case}.check", fix_text(site(case)))


@pytest.mark.parametrize("case", SITES)
def test_gateway_lines_golden(case: str) -> None:
    golden(f"commands-{case}.gateways", gateway_commands(site(case)))


def test_helper_script_golden() -> None:
    golden("pppssh-helper", helper_text())
