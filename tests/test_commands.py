"""pppssh.commands: one model of every remote operation. Golden files hold what each
derivation renders (argv sent in both modes, sudoers, the helper's policy and script, check's
fix lines, workstation lines); the agreement tests prove that every request the lifecycle
sends is allowed by the sudoers lines resp. the helper, and nothing near it is."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pppssh import check
from pppssh.commands import (
    CONGESTION_PATH,
    PKILL,
    RUN_DIR,
    helper_constants,
    helper_requests,
    peers_name,
    root_ops,
    stop_pppd,
    sudoers_rules,
)
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
from pppssh.workstations import gateway_commands, plan_lans

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


# ---------------------------------------------------------------------------- agreement

REFUSED = 126


def rule_argvs(cfg: SiteConfig) -> set[tuple[str, ...]]:
    """The argv each sudoers line allows, read back as sudoers reads it: the words after
    `USER ALL=(root) NOPASSWD: `, split on spaces, backslash escapes undone. A line without
    arguments would allow any; one with a pattern character would match more: neither is
    in the text."""
    head = f"{cfg.user} ALL=(root) NOPASSWD: "
    rules = [line for line in sudoers_text(cfg).splitlines() if "NOPASSWD" in line]
    assert rules and all(line.startswith(head) for line in rules), rules
    argvs = set()
    for line in rules:
        words = line[len(head) :].split(" ")
        assert len(words) > 1 and all(words), line
        assert not any(
            set(w.replace("\\\\", "").replace("\\", "")) & set("*?[]!#\"'") for w in words
        )
        argvs.add(tuple(re.sub(r"\\(.)", r"\1", w) for w in words))
    assert len(argvs) == len(rules)
    return argvs


def sudo_allows(cfg: SiteConfig, sent: Sequence[str]) -> bool:
    """Whether the site's sudoers lines allow what pppssh sends (sudo's own words first)."""
    n = len(cfg.sudo)
    return tuple(sent[:n]) == cfg.sudo and tuple(sent[n:]) in rule_argvs(cfg)


def lifecycle_sends(cfg: SiteConfig) -> dict[str, tuple[str, ...]]:
    """Every privileged command the lifecycle sends to the remote gateway, by what it is for."""
    sends = {
        "pppd": tuple(remote_pppd_argv(cfg)),
        "kill TERM": remote_leftover_kill(cfg).argv,
        "kill KILL": remote_leftover_kill(cfg, "KILL").argv,
    }
    for route in remote_routes(cfg, "ppp3"):
        sends[f"add {route.network}"] = route.add.argv
        sends[f"del {route.network}"] = route.delete.argv
    return sends


def near_misses(cfg: SiteConfig) -> list[tuple[str, ...]]:
    """Root argv that look like the site's but must not be allowed."""
    ip, peer, other = cfg.remote_ip, str(cfg.local_address), str(cfg.remote_address)
    pid = remote_pidfile(cfg)
    nets = [str(n) for n in cfg.local_networks] or ["10.1.0.0/24"]
    misses: list[tuple[str, ...]] = [
        (cfg.remote_pppd,),
        (cfg.remote_pppd, "call", "pppssh-other"),
        (cfg.remote_pppd, "call", peers_name(cfg), "nodetach"),
        (cfg.remote_pppd, "nodetach", "pty", "/bin/sh"),
        (PKILL, "-HUP", "-x", "-F", pid, "pppd"),
        (PKILL, "-TERM", "-x", "-F", "/run/ppp-pppssh-other-10.0.0.1.pid", "pppd"),
        (PKILL, "-TERM", "-x", "-F", pid, "sshd"),
        (PKILL, "-TERM", "-F", pid, "pppd"),
        (ip, "route", "add", "default", "via", peer),
        (ip, "route", "add", "0.0.0.0/0", "via", peer),
        (ip, "route", "add", "10.200.0.0/24", "via", peer),
    ]
    for net in nets:
        network = ipaddress.IPv4Network(net)
        wider = str(network.supernet()) if network.prefixlen else net
        misses += [
            (ip, "route", "add", net, "via", other),
            (ip, "route", "add", net, "via", str(cfg.local_address + 1)),
            (ip, "route", "add", net, "via", peer, "dev", "ppp0"),
            (ip, "route", "add", net, "via", peer, "table", "main"),
            (ip, "route", "replace", net, "via", peer),
            (ip, "route", "add", net),
            (ip, "route", "add", wider, "via", peer),
            (ip, "-6", "route", "add", net, "via", peer),
            ("/sbin/ip", "route", "add", net, "via", peer),
        ]
    return [m for m in misses if m not in {op.argv for op in root_ops(cfg)}]


def as_request(argv: Sequence[str], cfg: SiteConfig) -> str | None:
    """The helper request a root argv would be, if it is shaped like one."""
    if argv[:2] == (cfg.remote_ip, "route"):
        return " ".join(("route", *argv[2:]))
    if argv[:1] == (cfg.remote_pppd,):
        return " ".join(("pppd", *argv[1:]))
    return None


PLAIN = [case for case in SITES if SITES[case][2] == "no"]
HELPED = [case for case in SITES if SITES[case][2] == "yes"]


@pytest.mark.parametrize("case", SITES)
def test_every_root_operation_has_exactly_its_sudoers_line(case: str) -> None:
    cfg = site(case)
    ops = root_ops(cfg)
    assert rule_argvs(cfg) == {op.argv for op in ops} == set(sudo_commands(cfg))
    assert len(ops) == 3 + 2 * len(cfg.local_networks) + 1  # + the way down's congestion
    assert ops[-1].argv == (CONGESTION_PATH, cfg.tcp_congestion_down)
    assert sudoers_rules(cfg) == [
        line for line in sudoers_text(cfg).splitlines() if "NOPASSWD" in line
    ]


@pytest.mark.parametrize("case", PLAIN)
def test_without_helper_sudoers_allow_what_the_lifecycle_sends(case: str) -> None:
    cfg = site(case)
    for what, sent in lifecycle_sends(cfg).items():
        assert sudo_allows(cfg, sent), f"{case}: {what}: {shlex.join(sent)} is not allowed"
    # what runs without sudo is not in the sudoers text
    for command in (remote_interface_command(cfg), remote_leftover_check(cfg)):
        assert command.argv[: len(cfg.sudo)] != cfg.sudo
        assert command.argv not in rule_argvs(cfg)


@pytest.mark.parametrize("case", SITES)
def test_sudoers_allow_no_near_miss(case: str) -> None:
    cfg = site(case)
    misses = near_misses(cfg)
    assert len(misses) >= 11
    for argv in misses:
        assert not sudo_allows(cfg, (*cfg.sudo, *argv)), shlex.join(argv)


@pytest.mark.parametrize("case", HELPED)
def test_with_helper_the_lifecycle_sends_only_requests(case: str) -> None:
    cfg = site(case)
    sends = lifecycle_sends(cfg)
    assert sends.pop("pppd") == ("pppd",)
    assert sends.pop("kill TERM") == sends.pop("kill KILL") == ("cleanup",)
    for what, sent in sends.items():
        verb, net = what.split()
        assert sent == ("route", verb, net, "via", str(cfg.local_address))
    assert remote_interface_command(cfg).argv == ("interface",)


def test_policy_lists_the_networks_and_peer_of_the_remote_routes() -> None:
    for case in SITES:
        cfg = site(case)
        lines = [line.split(" ") for line in policy_text(cfg).splitlines() if line[:1] != "#"]
        keys = dict(line for line in lines if line[0] != "network")
        networks = [line[1] for line in lines if line[0] == "network"]
        assert keys == {"pppd": cfg.remote_pppd, "ip": cfg.remote_ip,
                        "local": str(cfg.remote_address), "peer": str(cfg.local_address),
                        "congestion": cfg.tcp_congestion_down}  # fmt: skip
        assert networks == [str(r.network) for r in remote_routes(cfg, "-")]


@dataclass
class Helper:
    """The rendered helper with its policies, pid files and sudo moved into a directory; its
    sudo records argv, answers `-l` with yes and runs pkill (only on pid files there)."""

    path: Path
    run: Path
    log: Path

    def ask(self, cfg: SiteConfig, request: str) -> tuple[int, str, str, list[tuple[str, ...]]]:
        """Run the helper as sshd would for cfg's key: status, stdout, stderr, sudo argv."""
        self.log.unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "198.51.100.1 40000 22",
               "SSH_ORIGINAL_COMMAND": request}  # fmt: skip
        shell = shutil.which("dash") or "/bin/sh"
        proc = subprocess.run(
            [shell, str(self.path), cfg.name], env=env, capture_output=True, text=True, timeout=30
        )
        ran = self.log.read_text().splitlines() if self.log.exists() else []
        argvs = [
            tuple(w.replace(str(self.run), RUN_DIR) for w in line.split("|")[:-1]) for line in ran
        ]
        return proc.returncode, proc.stdout, proc.stderr, argvs


@pytest.fixture
def helper(tmp_path: Path) -> Helper:
    """The helper as remote-setup renders it, with every site's policy installed where
    remote-setup installs it (by file name) and its settings moved into tmp_path."""
    policies, run = tmp_path / "policies", tmp_path / "run"
    policies.mkdir()
    run.mkdir()
    for case in HELPED:
        cfg = site(case)
        (policies / f"{peers_name(cfg)}.policy").write_text(policy_text(cfg))
    log, sudo, logger = tmp_path / "sudo.log", tmp_path / "sudo", tmp_path / "logger"
    sudo.write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >>{log}\necho >>{log}\n'
        '[ "$1" = -n ] && shift\n[ "$1" = -l ] && exit 0\n'
        f'[ "$1" = {PKILL} ] && exec "$@"\nexit 0\n'
    )
    logger.write_text("#!/bin/sh\nexit 0\n")
    text = helper_text()
    moved = {"POLICY_DIR": policies, "SUDO": sudo, "RUN": run}
    for name, value in helper_constants().items():
        assert text.count(f"\n{name}={value}\n") == 1, name
        if name in moved:
            text = text.replace(f"\n{name}={value}\n", f"\n{name}={moved[name]}\n")
    assert text.count("\tlogger -t ") == 1
    text = text.replace("\tlogger -t ", f"\t{logger} -t ")
    path = tmp_path / "pppssh-helper"
    path.write_text(text)
    for p in (sudo, logger, path):
        p.chmod(0o755)
    return Helper(path, run, log)


@pytest.mark.parametrize("case", HELPED)
def test_helper_runs_exactly_the_sudoers_argv_of_each_request(helper: Helper, case: str) -> None:
    """Each request the lifecycle sends is accepted, and what the helper runs through sudo
    is exactly an argv of a sudoers line of the site (sudo -n before it)."""
    cfg = site(case)
    for what, sent in lifecycle_sends(cfg).items():
        if sent == ("cleanup",):
            continue  # below: it runs sudo only when a pppd is left
        status, _, err, ran = helper.ask(cfg, " ".join(sent))
        assert (status, err) == (0, ""), what
        assert len(ran) == 1 and ran[0][0] == "-n", (what, ran)
        assert ran[0][1:] in rule_argvs(cfg), (what, ran)
    status, _, err, ran = helper.ask(cfg, "interface")
    assert (status, err, ran) == (0, "", [])


@pytest.mark.parametrize("case", HELPED)
def test_helper_cleanup_kills_through_the_sudoers_pkill(
    helper: Helper, tmp_path: Path, case: str
) -> None:
    """A process named pppd whose pid is in the pid file the model names is stopped by the
    sudoers line's pkill; the helper finds that file from the site name and its policy."""
    cfg = site(case)
    fake = tmp_path / "pppd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)  # its comm is pppd
    proc = subprocess.Popen([str(fake), "60"])
    reaper = threading.Thread(target=proc.wait)  # so that no zombie pppd stays behind
    reaper.start()
    try:
        (helper.run / Path(remote_pidfile(cfg)).name).write_text(f"{proc.pid}\nppp0\n")
        status, out, err, ran = helper.ask(cfg, "cleanup")
        assert (status, err) == (0, "")
        assert "stopped the pppd" in out
        assert ran == [("-n", *stop_pppd(cfg, "TERM").argv)]
        assert ran[0][1:] in rule_argvs(cfg)
    finally:
        proc.kill()
        reaper.join()


@pytest.mark.parametrize("case", HELPED)
def test_helper_check_asks_sudo_for_exactly_the_sudoers_lines(helper: Helper, case: str) -> None:
    """`check` asks `sudo -n -l` for each root operation of the model, in check.py's order,
    and says `sudo allowed ARGV` in the words check.py looks for."""
    cfg = site(case)
    status, out, err, ran = helper.ask(cfg, "check")
    assert (status, err) == (0, "")
    assert ran == [("-n", "-l", *op.argv) for op in root_ops(cfg)]
    said = check.parse_helper_check(out.replace(str(helper.run), RUN_DIR))["sudo"]
    assert said == [f"allowed {' '.join(op.argv)}" for op in root_ops(cfg)]


@pytest.mark.parametrize("case", HELPED)
def test_helper_refuses_every_near_miss(helper: Helper, case: str) -> None:
    cfg = site(case)
    requests = {r for r in (as_request(m, cfg) for m in near_misses(cfg)) if r is not None}
    requests |= {"route add default via " + str(cfg.local_address), "cleanup now",
                 "interface ppp0", "check all", "pppd call " + peers_name(cfg)}  # fmt: skip
    requests -= {" ".join(op.request) for op in root_ops(cfg)}  # `pppd` is the bare pppd's
    assert len(requests) >= 10
    for request in sorted(requests):
        status, _, err, ran = helper.ask(cfg, request)
        assert (status, ran) == (REFUSED, []), (request, err)
        assert err.startswith("pppssh-helper: refused: "), err


@pytest.mark.parametrize("case", SITES)
def test_workstations_route_what_the_gateways_route(case: str) -> None:
    """The workstation lines name the networks of the gateways' routes, and the far PPP
    address those go via (as a route or a reason it needs none)."""
    cfg = site(case)
    here = [r.network for r in local_routes(cfg, "ppp0")]
    there = [r.network for r in remote_routes(cfg, "ppp3")]
    for lan in plan_lans(cfg):
        far, ppp = (here, cfg.remote_address) if lan.side == "local" else (there, cfg.local_address)
        nets = [
            r.destination
            for r in lan.routes
            if r.destination.prefixlen < 32 or r.destination in far
        ]
        assert nets == far
        hosts = [r.destination for r in lan.routes if r not in nets] + [
            s.destination for s in lan.skipped
        ]
        assert ipaddress.IPv4Network(f"{ppp}/32") in hosts
        assert all(r.via == lan.gateway and r.via in lan.network for r in lan.routes)


def test_helper_script_knows_exactly_the_models_requests() -> None:
    """The arms of the helper's `case $1 in` are the first words of the model's requests,
    and its refusal names them; each request of a site is accepted by the test above."""
    text = helper_text()
    body = text[text.index("case $1 in\n") : text.index("\nesac\n", text.index("case $1 in\n"))]
    arms = re.findall(r"^([a-z]+)\)$", body, re.MULTILINE)
    for case in SITES:
        firsts = {request[0] for request in helper_requests(site(case))}
        routes = {"route"} if site(case).local_networks else set()
        assert firsts | {"route"} == set(arms) and firsts & {"route"} == routes
    assert sorted(arms) == ["check", "cleanup", "congestion", "interface", "pppd", "route"]
    assert "(those are: pppd, route add|del, interface, cleanup, check, congestion)" in body


def test_helper_congestion_takes_the_name_from_the_policy_only(helper: Helper) -> None:
    """`congestion` runs sudo with the name the policy holds; words after it, or a policy
    without a congestion line (tcp_congestion_down = default), are refused."""
    cfg = site(HELPED[0])
    status, _, err, ran = helper.ask(cfg, "congestion")
    assert (status, err) == (0, "")
    assert ran == [("-n", CONGESTION_PATH, cfg.tcp_congestion_down)]
    for request in ("congestion cubic", "congestion bbr extra", "congestion /tmp/x"):
        status, _, err, ran = helper.ask(cfg, request)
        assert status == 126 and "congestion takes no arguments" in err and ran == [], request
    off = dataclasses.replace(cfg, tcp_congestion_down="")
    policy = helper.path.parent / "policies" / f"{peers_name(cfg)}.policy"
    policy.write_text(policy_text(off))
    status, _, err, ran = helper.ask(off, "congestion")
    assert status == 126 and "names no congestion control" in err and ran == []
    policy.write_text(policy_text(cfg).replace("congestion bbr", "congestion bbr;id"))
    status, _, err, ran = helper.ask(cfg, "congestion")
    assert status == 1 and "is not a congestion control name" in err and ran == []


@pytest.mark.parametrize("case", HELPED)
def test_helper_accepts_every_request_of_the_model(helper: Helper, case: str) -> None:
    cfg = site(case)
    requests = helper_requests(cfg)
    assert ("check",) in requests and ("interface",) in requests
    for request in requests:
        if request == ("cleanup",):
            continue  # with no leftover it ends at once; the cleanup test has one
        status, _, err, _ = helper.ask(cfg, " ".join(request))
        assert (status, err) == (0, ""), request
