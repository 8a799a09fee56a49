"""`pppssh remote-setup` and pppssh-helper: generated files, and the helper's verdict on every
request, run on the host with its sudo replaced by a recorder (the lab runs the real one)."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest

from pppssh import cli
from pppssh.commands import echo_adaptive_safe, echo_adaptive_shell, pppd_version
from pppssh.config import parse
from pppssh.remote_setup import (
    CONGESTION_PATH,
    HELPER_PATH,
    OLD_POLICY_DIR,
    POLICY_DIR,
    _sudoers_word,
    apply,
    congestion_text,
    filter_lines,
    helper_text,
    hook_files,
    ip_down_text,
    ip_up_text,
    key_line,
    peers_text,
    policy_text,
    public_key,
    removal_script,
    setup_script,
    sudo_commands,
    sudoers_rules,
    sudoers_text,
)
from pppssh.ssh import TunnelError

from .sshserver import SSHTestServer

SITE = """\
[site]
name = site-b
[remote]
host = 198.51.100.2
user = tunnel
identity = id_ed25519
known_hosts = known_hosts
helper = yes
from = 198.51.100.1
[ppp]
local_address = 192.168.77.1
remote_address = 192.168.77.2
remote_options = debug
[networks]
local = 10.1.0.0/24, 10.3.0.0/16
remote = 10.2.0.0/24
"""
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII3nZ3L8OJfutw8ANcOcnl08BEwFN3NZ3mHq0AvMNJqU"
REFUSED = 126


def cfg_of(text: str = SITE, path: Path = Path("/etc/pppssh/site-b.conf")):  # type: ignore[no-untyped-def]
    return parse(text, path)


# ---------------------------------------------------------------------------- generated files


def test_key_line_reaches_only_the_helper() -> None:
    line = key_line(cfg_of(), PUB)
    assert line == (
        f'restrict,pty,command="{HELPER_PATH} site-b",from="198.51.100.1" {PUB} pppssh-site-b'
    )
    without_from = key_line(cfg_of(SITE.replace("from = 198.51.100.1\n", "")), PUB)
    assert without_from.startswith(f'restrict,pty,command="{HELPER_PATH} site-b" ssh-ed25519 ')


def test_policy_lists_exactly_the_local_networks_and_the_peer() -> None:
    lines = [x for x in policy_text(cfg_of()).splitlines() if not x.startswith("#")]
    assert lines == [
        "pppd /usr/sbin/pppd",
        "ip /usr/sbin/ip",
        "local 192.168.77.2",
        "peer 192.168.77.1",
        "network 10.1.0.0/24",
        "network 10.3.0.0/16",
        "congestion bbr",
    ]
    # `tcp_congestion_down = default`: no such line, so the helper refuses the request
    off = cfg_of(SITE.replace("[ppp]", "tcp_congestion_down = default\n[ppp]"))
    assert not any(x.startswith("congestion") for x in policy_text(off).splitlines())


def test_peers_file_holds_the_remote_pppd_options() -> None:
    lines = [x for x in peers_text(cfg_of()).splitlines() if not x.startswith("#")]
    assert "192.168.77.2:192.168.77.1" in lines
    assert "linkname pppssh-site-b-192.168.77.1" in lines and "mtu 1400" in lines
    assert "noproxyarp" in lines and lines[-1] == "debug"
    proxy = SITE.replace("[networks]", "proxyarp = remote\n[networks]").replace(
        "local_address = 192.168.77.1", "local_address = 10.2.0.77"
    )
    assert "proxyarp" in peers_text(cfg_of(proxy)).splitlines()


@pytest.mark.parametrize(
    "said",
    ["pppd version 2.4.9", "pppd version 2.4.7", "pppd version 2.5.0", "pppd version 2.5.2",
     "pppd version 2.5", "pppd version 2.10.1", "pppd version 3.0.0", "pppd version 10.0",
     "pppd version 1.9.9", "pppd version 2.4.10", "", "pppd: unrecognized option '--version'",
     "version 2.5.0", "pppd version 2.5.0\npppd version 2.4.9"],
)  # fmt: skip
def test_setup_script_decides_lcp_echo_adaptive_as_the_model(tmp_path: Path, said: str) -> None:
    # the remote pppd's version is asked where it runs, by the set-up script (root there)
    pppd = tmp_path / "pppd"
    pppd.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] || exit 2\nprintf '%s\\n' '{said}'\n")
    pppd.chmod(0o755)
    script = f'set -eu\n{echo_adaptive_shell(str(pppd))}echo "$echo_adaptive $pppd_version"\n'
    run = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True)
    adaptive, _, version = run.stdout.strip().partition(" ")
    assert adaptive == ("yes" if echo_adaptive_safe(pppd_version(said)) else "no"), said
    expected = pppd_version(said)
    assert (version != "") is (expected is not None)


def test_setup_script_passes_lcp_echo_adaptive_only_to_a_pppd_with_the_fix(tmp_path: Path) -> None:
    cfg = cfg_of()
    fixed, old = peers_text(cfg, True), peers_text(cfg, False)
    assert "lcp-echo-adaptive" in fixed.splitlines()
    assert "lcp-echo-adaptive" not in old.splitlines() and "ppp-project #323" in old
    assert "lcp-echo-interval 10" in old.splitlines() and "lcp-echo-failure 3" in old.splitlines()
    script = setup_script(cfg, PUB)
    branch = script.index('if [ "$echo_adaptive" = yes ]; then\n')
    assert script.index("pppd_version=$('/usr/sbin/pppd' --version") < script.index("useradd")
    assert script.index(fixed, branch) < script.index("else\n", branch) < script.index(old, branch)
    # the script, run for both versions up to the peers file, writes the matching one
    for said, want in (("2.4.9", old), ("2.5.0", fixed)):
        pppd = tmp_path / "pppd"
        pppd.write_text(f"#!/bin/sh\necho 'pppd version {said}'\n")
        pppd.chmod(0o755)
        step = script[branch : script.index("fi\n", script.index(old, branch)) + 3]
        step = step.replace("/etc/ppp/peers/", f"{tmp_path}/")
        shell = "say() { :; }\n" + echo_adaptive_shell(str(pppd)) + step
        subprocess.run(["/bin/sh", "-euc", shell], check=True)
        assert (tmp_path / "pppssh-site-b").read_text() == want, said
    # no LCP echoes at all: one file, nothing to decide
    off = cfg_of(SITE.replace("[networks]", "lcp_echo_interval = 0\n[networks]"))
    assert peers_text(off, True) == peers_text(off, False)
    assert '"$echo_adaptive"' not in setup_script(off, PUB)


def test_sudoers_allows_exact_commands_and_visudo_accepts_it(tmp_path: Path) -> None:
    text = sudoers_text(cfg_of())
    rules = [x for x in text.splitlines() if x.startswith("tunnel ")]
    assert rules == [
        "tunnel ALL=(root) NOPASSWD: /usr/sbin/pppd call pppssh-site-b",
        "tunnel ALL=(root) NOPASSWD: /usr/bin/pkill -TERM -x -F /run/ppp-pppssh-site-b-192.168.77.1.pid pppd",
        "tunnel ALL=(root) NOPASSWD: /usr/bin/pkill -KILL -x -F /run/ppp-pppssh-site-b-192.168.77.1.pid pppd",
        "tunnel ALL=(root) NOPASSWD: /usr/sbin/ip route add 10.1.0.0/24 via 192.168.77.1",
        "tunnel ALL=(root) NOPASSWD: /usr/sbin/ip route del 10.1.0.0/24 via 192.168.77.1",
        "tunnel ALL=(root) NOPASSWD: /usr/sbin/ip route add 10.3.0.0/16 via 192.168.77.1",
        "tunnel ALL=(root) NOPASSWD: /usr/sbin/ip route del 10.3.0.0/16 via 192.168.77.1",
        "tunnel ALL=(root) NOPASSWD: /usr/local/libexec/pppssh-congestion bbr",
    ]
    assert "*" not in text and "ALL:" not in text and "NOPASSWD: ALL" not in text
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    f = tmp_path / "sudoers"
    f.write_text(text)
    f.chmod(0o440)
    check = subprocess.run([visudo, "-cf", str(f)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    f.chmod(0o640)
    f.write_text(text + "tunnel ALL=(root NOPASSWD /bin/sh\n")
    assert subprocess.run([visudo, "-cf", str(f)], capture_output=True).returncode != 0


def test_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: bash scripts/install-deps.sh installs it"
    cfg = cfg_of()
    plain = cfg_of(NO_HELPER)
    files = {
        "helper": helper_text(),
        "setup": setup_script(cfg, PUB),
        "removal": removal_script(cfg, PUB),
        "setup-no-helper": setup_script(plain, PUB),
        "removal-no-helper": removal_script(plain, PUB),
        **{
            path.rsplit("/", 1)[1] + path.split("/")[3]: text
            for path, text in hook_files(cfg).items()
        },
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        proc = subprocess.run([shellcheck, "-s", "sh", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}:\n{proc.stdout}"


def test_setup_script_embeds_each_file_verbatim() -> None:
    cfg = cfg_of()
    script = setup_script(cfg, PUB)
    for text in (helper_text(), policy_text(cfg), peers_text(cfg), sudoers_text(cfg)):
        assert f"<<'PPPSSH_EOF'\n{text}PPPSSH_EOF\n" in script
    # the key line goes in as an argument of the script the link account runs itself
    assert f" {shlex.quote(key_line(cfg, PUB))} <<'PPPSSH_EOF' ||\n" in script
    assert (
        "runuser -u tunnel -- /bin/sh -s" in script and "mktemp" not in script.split("runuser")[0]
    )
    # sudoers is checked with visudo before anything else changes
    assert script.index("visudo -cqf") < script.index("useradd")
    assert script.index("useradd") < script.index("mv -f '/etc/sudoers.d/.pppssh-site-b.new'")


def test_the_congestion_program_is_installed_only_when_the_site_sets_it() -> None:
    """tcp_congestion_down (bbr by default): pppssh-congestion installed, verbatim, 0755,
    with its sudo line; `default`: not installed, and removed once no sudo rule runs it
    (here and on --remove), so that nothing of an earlier set-up is left behind."""
    unused = f"if ! grep -qsF '{CONGESTION_PATH}' '/etc/sudoers.d'/*; then"
    for cfg in (cfg_of(), cfg_of(NO_HELPER)):
        script = setup_script(cfg, PUB)
        assert f"<<'PPPSSH_EOF'\n{congestion_text()}PPPSSH_EOF\n" in script
        assert f"chmod 755 '{CONGESTION_PATH}.new'" in script and unused not in script
        assert f"NOPASSWD: {CONGESTION_PATH} bbr" in sudoers_text(cfg)
        assert unused in removal_script(cfg, PUB)
    off = cfg_of(SITE.replace("[ppp]", "tcp_congestion_down = default\n[ppp]"))
    script = setup_script(off, PUB)
    assert congestion_text() not in script and CONGESTION_PATH not in sudoers_text(off)
    assert script.index(unused) > script.index("mv -f '/etc/sudoers.d/.pppssh-site-b.new'")
    assert congestion_text().startswith("#!/usr/bin/python3 -I\n")


def test_policy_lives_in_its_own_readable_directory_made_right_on_every_run() -> None:
    """/etc/pppssh may be 0700 (site files of a gateway that also runs pppssh): the policy,
    which the helper reads as the link account, is in a root-owned 0755 directory apart."""
    assert not POLICY_DIR.startswith("/etc/pppssh/")
    script = setup_script(cfg_of(), PUB)
    step = script[script.index("# 2. the helper") : script.index("# 3.")]
    lines = step.splitlines()
    assert f"mkdir -p '{POLICY_DIR}'" in lines
    assert f"chown root:root '{POLICY_DIR}'" in lines and f"chmod 755 '{POLICY_DIR}'" in lines
    assert lines.index(f"chmod 755 '{POLICY_DIR}'") < lines.index(
        f"mv -f '{POLICY_DIR}/pppssh-site-b.policy.new' '{POLICY_DIR}/pppssh-site-b.policy'"
    )
    assert f"chmod 644 '{POLICY_DIR}/pppssh-site-b.policy.new'" in lines
    assert f"\nPOLICY_DIR={POLICY_DIR}\n" in helper_text()


def _migration(script: str, top: Path) -> str:
    """The setup script's policy migration, with its directories moved under top."""
    start = script.index(f"if [ -d '{OLD_POLICY_DIR}' ]")
    part = script[start : script.index("\nfi\n", start) + 4]
    part = part.replace(OLD_POLICY_DIR, f"{top}{OLD_POLICY_DIR}")
    return part.replace(f"'{POLICY_DIR}'", f"'{top}{POLICY_DIR}'")


def test_setup_moves_old_policies_out_of_etc_pppssh(tmp_path: Path) -> None:
    old, new = Path(f"{tmp_path}{OLD_POLICY_DIR}"), Path(f"{tmp_path}{POLICY_DIR}")
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    (old / "pppssh-other.policy").write_text("other\n")
    (old / "pppssh-site-b.policy").write_text("stale\n")
    (new / "pppssh-site-b.policy").write_text("current\n")
    part = _migration(setup_script(cfg_of(), PUB), tmp_path)
    say = "say() { printf '%s\\n' \"$*\"; }\n"
    proc = subprocess.run(["sh", "-eu", "-c", say + part], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not old.exists(), "the old directory goes once empty"
    assert (new / "pppssh-other.policy").read_text() == "other\n"
    assert (new / "pppssh-other.policy").stat().st_mode & 0o777 == 0o644
    assert (new / "pppssh-site-b.policy").read_text() == "current\n", "the new one wins"
    assert "moved the helper policy pppssh-other.policy from " in proc.stdout
    assert "removed the outdated helper policy " in proc.stdout
    again = subprocess.run(["sh", "-eu", "-c", say + part], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "", "a second run has nothing to move"


def test_removal_stops_the_link_before_removing_anything() -> None:
    cfg = cfg_of()
    script = removal_script(cfg, PUB)
    pidfile = "/run/ppp-pppssh-site-b-192.168.77.1.pid"
    first_removal = script.index("rm -f '/etc/sudoers.d/pppssh-site-b'")
    for step in (
        f"pkill -TERM -x -F {pidfile} pppd",
        f"pkill -KILL -x -F {pidfile} pppd",
        "pkill -TERM -u tunnel",
        "pkill -KILL -u tunnel",
        'ip -4 rule del iif "$IF" priority 5000',
        'ip -4 rule del iif "$IF" priority 5001',
        'say "stopped the link of site site-b: $did"',
    ):
        assert 0 < script.index(step) < first_removal, step
    assert 'fail "cannot stop pppd $pid of site site-b; nothing removed"' in script
    assert 'fail "cannot stop $left; nothing removed"' in script
    # a process started meanwhile does not leave userdel's raw refusal as the only word
    assert script.index('stop_account || fail "cannot stop $left; account tunnel kept"') < (
        script.index("userdel -r tunnel")
    )


def test_public_key_from_private_key_or_pub(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_name("id_ed25519.pub").read_text().split()
    text = SITE.replace("identity = id_ed25519", f"identity = {key}")
    cfg = cfg_of(text)
    assert public_key(cfg) == f"{pub[0]} {pub[1]}"
    key.chmod(0o000)
    os.rename(key, tmp_path / "hidden")
    assert public_key(cfg) == f"{pub[0]} {pub[1]}", "falls back to the .pub file"
    key.with_name("id_ed25519.pub").unlink()
    with pytest.raises(TunnelError, match="ssh-keygen -t ed25519"):
        public_key(cfg)


NO_HELPER = SITE.replace("helper = yes", "helper = no")


def test_no_helper_mode_is_set_up_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """helper = no: the same exact sudo rules, pppd options and filter; the key line has no
    forced command, and no helper or policy is installed."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "known_hosts").write_text("")  # the site names it: it must be there
    conf = tmp_path / "site-b.conf"
    conf.write_text(NO_HELPER)
    assert cli.main(["remote-setup", str(conf)]) == 0
    script = capsys.readouterr().out
    cfg = parse(NO_HELPER, conf)
    assert script == setup_script(cfg, public_key(cfg))
    assert HELPER_PATH not in script.split("# 0.")[1] and ".policy" not in script
    assert key_line(cfg, PUB) == f'restrict,pty,from="198.51.100.1" {PUB} pppssh-site-b'
    assert sudoers_text(cfg).splitlines()[5:] == sudoers_text(cfg_of()).splitlines()[5:]
    for text in (peers_text(cfg), sudoers_text(cfg), *hook_files(cfg).values()):
        assert f"<<'PPPSSH_EOF'\n{text}PPPSSH_EOF\n" in script


def test_sudoers_text_has_no_pattern_and_escapes_specials() -> None:
    for cfg in (cfg_of(), cfg_of(NO_HELPER)):
        text = sudoers_text(cfg)
        assert not set("*?[]") & set(text), text
        rules = sudoers_rules(cfg)
        assert len(rules) == 3 + 2 * len(cfg.local_networks) + 1  # + congestion
        for net in cfg.local_networks:
            for verb in ("add", "del"):
                line = (
                    f"tunnel ALL=(root) NOPASSWD: /usr/sbin/ip route {verb} {net} via 192.168.77.1"
                )
                assert rules.count(line) == 1
    assert _sudoers_word("a:b,c=d\\e") == "a\\:b\\,c\\=d\\\\e"
    for bad in ("*", "x*", "a b", "[0-9]", "!x", ""):
        with pytest.raises(ValueError, match="cannot be an exact argument"):
            _sudoers_word(bad)


def test_file_names_of_colliding_site_names_differ() -> None:
    dotted = cfg_of(SITE.replace("name = site-b", "name = a.b"))
    under = cfg_of(SITE.replace("name = site-b", "name = a_b"))
    assert set(hook_files(dotted)).isdisjoint(hook_files(under))
    assert setup_script(dotted, PUB).count("/etc/sudoers.d/pppssh-a_2eb'") == 1
    assert "/etc/ppp/peers/pppssh-a_5fb'" in setup_script(under, PUB)


def test_run_parts_runs_the_hook_files(tmp_path: Path) -> None:
    """Debian's run-parts skips names with a dot: the hooks' names must pass its filter."""
    cfg = cfg_of(SITE.replace("name = site-b", "name = a.b_c"))
    for path in hook_files(cfg):
        name = path.rsplit("/", 1)[1]
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    listed = subprocess.run(["run-parts", "--test", str(tmp_path)], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    assert listed == [str(tmp_path / "pppssh-a_2eb_5fc")]


def _run_hook(tmp_path: Path, text: str, env: dict[str, str]) -> list[str]:
    """Run a hook script with `ip` and /proc/sys replaced by recorders; return what it ran."""
    record = tmp_path / "ran"
    record.unlink(missing_ok=True)
    ip = tmp_path / "ip"
    ip.write_text(f'#!/bin/sh\necho "ip $*" >>{record}\n[ "$3" != del ]\n')
    ip.chmod(0o755)
    sysctl = tmp_path / "sysctl"
    sysctl.write_text(f'#!/bin/sh\necho "sysctl $*" >>{record}\n')
    sysctl.chmod(0o755)
    text = text.replace("/usr/sbin/ip ", f"{ip} ").replace("/usr/sbin/sysctl ", f"{sysctl} ")
    script = tmp_path / "hook"
    script.write_text(text)
    subprocess.run(["/bin/sh", str(script)], env=env, check=True, timeout=10)
    return record.read_text().splitlines() if record.exists() else []


def test_link_filter_acts_only_for_this_sites_remote_pppd(tmp_path: Path) -> None:
    cfg = cfg_of()
    assert "ipparam pppssh-site-b" in peers_text(cfg).splitlines(), "the hook tells by ipparam"
    assert "linkname pppssh-site-b-192.168.77.1" in peers_text(cfg).splitlines()
    env = {"PPP_IFACE": "ppp3", "PPP_IPPARAM": "pppssh-site-b",
           "LINKNAME": "pppssh-site-b-192.168.77.1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    up = ip_up_text(cfg)
    assert _run_hook(tmp_path, up, env) == [
        "ip -4 rule del iif ppp3 priority 5000",
        "ip -4 rule del iif ppp3 priority 5001",
        "sysctl -q -w net.ipv4.conf.ppp3.rp_filter=1",
        "ip -4 rule add iif ppp3 to 10.2.0.0/24 priority 5000 lookup main",
        "ip -4 rule add iif ppp3 priority 5001 prohibit",
    ]
    assert _run_hook(tmp_path, ip_down_text(cfg), env) == [
        "ip -4 rule del iif ppp3 priority 5000",
        "ip -4 rule del iif ppp3 priority 5001",
    ]
    others = [
        {**env, "PPP_IPPARAM": "pppssh-site-c"},  # another site
        {**env, "LINKNAME": "pppssh-site-b"},  # this site's local pppd (the lab shares files)
        {**env, "PPP_IFACE": "eth0"},
        {**env, "PPP_IFACE": "ppp3;reboot"},
        {**env, "PPP_IFACE": "ppp"},
        {k: v for k, v in env.items() if k != "PPP_IFACE"},
    ]
    for other in others:
        assert _run_hook(tmp_path, up, other) == [], other
    full = cfg_of(SITE.replace("remote = 10.2.0.0/24", "full_tunnel = yes"))
    assert "prohibit" not in ip_up_text(full) and "rp_filter" in ip_up_text(full)
    assert filter_lines(cfg)[2] == '/usr/sbin/sysctl -q -w "net.ipv4.conf.$IF.rp_filter=1"'


def test_remote_setup_prints_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "known_hosts").write_text("")  # the site names it: it must be there
    conf = tmp_path / "site-b.conf"
    conf.write_text(SITE)
    assert cli.main(["remote-setup", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out == setup_script(parse(SITE, conf), public_key(parse(SITE, conf)))
    assert cli.main(["remote-setup", "--remove", str(conf)]) == 0
    assert capsys.readouterr().out.startswith("#!/bin/sh\n# pppssh remote-setup --remove")


# ---------------------------------------------------------------------------- the helper


@pytest.fixture
def helper(tmp_path: Path) -> tuple[Path, Path]:
    """The helper with its policy directory and sudo moved into tmp_path; sudo records argv."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pppssh-site-b.policy").write_text(policy_text(cfg_of()))
    log = tmp_path / "sudo.log"
    sudo = tmp_path / "sudo"
    sudo.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >>{log}\necho >>{log}\n')
    sudo.chmod(0o755)
    text = helper_text()
    assert "\nPOLICY_DIR=/etc/pppssh-helper\n" in text and "\nSUDO=/usr/bin/sudo\n" in text
    text = text.replace("\nPOLICY_DIR=/etc/pppssh-helper\n", f"\nPOLICY_DIR={policies}\n")
    text = text.replace("\nSUDO=/usr/bin/sudo\n", f"\nSUDO={sudo}\n")
    logger = tmp_path / "logger"  # what the helper sends to syslog
    logger.write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >>{tmp_path / "syslog"}\necho >>{tmp_path / "syslog"}\n'
    )
    logger.chmod(0o755)
    assert text.count("\tlogger -t ") == 1
    text = text.replace("\tlogger -t ", f"\t{logger} -t ")
    path = tmp_path / "pppssh-helper"
    path.write_text(text)
    path.chmod(0o755)
    return path, log


def ask(
    helper: tuple[Path, Path], request: str | None, site: str = "site-b", timeout: float = 10
) -> tuple[int, str, list[str]]:
    """Run the helper as sshd would; return status, stderr and what it gave sudo."""
    path, log = helper
    log.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "SSH_CLIENT": "198.51.100.1 40000 22"}
    if request is not None:
        env["SSH_ORIGINAL_COMMAND"] = request
    shell = shutil.which("dash") or "/bin/sh"
    proc = subprocess.run(
        [shell, str(path), site], env=env, capture_output=True, text=True, timeout=timeout
    )
    ran = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, proc.stderr, ran


@pytest.mark.parametrize(
    ("request_", "sudo_argv"),
    [
        ("pppd", "-n|/usr/sbin/pppd|call|pppssh-site-b|"),
        ("route add 10.1.0.0/24 via 192.168.77.1", "-n|/usr/sbin/ip|route|add|10.1.0.0/24|via|192.168.77.1|"),
        ("route del 10.3.0.0/16 via 192.168.77.1", "-n|/usr/sbin/ip|route|del|10.3.0.0/16|via|192.168.77.1|"),
    ],
)  # fmt: skip
def test_helper_runs_what_the_policy_allows(
    helper: tuple[Path, Path], request_: str, sudo_argv: str
) -> None:
    status, err, ran = ask(helper, request_)
    assert (status, err, ran) == (0, "", [sudo_argv])


def test_helper_cleanup_without_a_leftover_needs_no_sudo(helper: tuple[Path, Path]) -> None:
    status, err, ran = ask(helper, "cleanup")
    assert (status, err, ran) == (0, "", [])


def test_helper_cleanup_stops_the_leftover_pppd(helper: tuple[Path, Path], tmp_path: Path) -> None:
    """A process named pppd whose pid is in the site's pid file is stopped through sudo pkill."""
    path, _ = helper
    text = path.read_text().replace("\nRUN=/run\n", f"\nRUN={tmp_path}\n")
    path.write_text(text)
    fake = tmp_path / "pppd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)  # its comm is pppd
    proc = subprocess.Popen([str(fake), "60"])
    try:
        (tmp_path / "ppp-pppssh-site-b-192.168.77.1.pid").write_text(f"{proc.pid}\nppp0\n")
        status, err, ran = ask(helper, "cleanup", timeout=30)
        # the recorder does not kill: the helper waits 10 s, then asks for SIGKILL
        assert status == 0, err
        pidfile = tmp_path / "ppp-pppssh-site-b-192.168.77.1.pid"
        assert ran == [
            f"-n|/usr/bin/pkill|-TERM|-x|-F|{pidfile}|pppd|",
            f"-n|/usr/bin/pkill|-KILL|-x|-F|{pidfile}|pppd|",
        ]
    finally:
        proc.kill()
        proc.wait()


def test_helper_interface_needs_no_sudo(helper: tuple[Path, Path]) -> None:
    status, err, ran = ask(helper, "interface")
    assert (status, ran) == (0, []), err


HOSTILE = {
    None: "a login shell",
    "": "a login shell",
    " ": "a login shell",
    "   ": "a login shell",
    "id": "'id' is not a pppssh request",
    "sh -c id": "'sh' is not a pppssh request",
    "/bin/sh": "'/bin/sh' is not a pppssh request",
    "scp -t /tmp": "'scp' is not a pppssh request",
    "internal-sftp": "'internal-sftp' is not a pppssh request",
    "pppd debug": "pppd takes no options from the client",
    "pppd pty /bin/sh": "pppd takes no options from the client",
    "pppd file /tmp/options": "pppd takes no options from the client",
    "pppd call other": "pppd takes no options from the client",
    "route add 10.9.0.0/24 via 192.168.77.1": "network 10.9.0.0/24 is not on the allow-list",
    "route add default via 192.168.77.1": "network default is not on the allow-list",
    "route add 0.0.0.0/0 via 192.168.77.1": "network 0.0.0.0/0 is not on the allow-list",
    "route add 10.1.0.0/25 via 192.168.77.1": "network 10.1.0.0/25 is not on the allow-list",
    "route add 10.1.0.0/24 via 192.168.77.9": "go via the link's peer 192.168.77.1, not 192.168.77.9",
    "route add 10.1.0.0/24 via 192.168.77.1 dev lo": "usage: route add|del NETWORK via",
    "route replace 10.1.0.0/24 via 192.168.77.1": "usage: route add|del NETWORK via",
    "route flush 10.1.0.0/24 via 192.168.77.1": "usage: route add|del NETWORK via",
    "route add 10.1.0.0/24": "usage: route add|del NETWORK via",
    "route add 10.1.0.0/24 dev 192.168.77.1": "usage: route add|del NETWORK via",
    "route -6 add 10.1.0.0/24 via 192.168.77.1": "usage: route add|del NETWORK via",
    "interface ppp0": "interface takes no arguments",
    "cleanup 1234": "cleanup takes no arguments",
    "route add 10.1.0.0/24 via 192.168.77.1; id": "characters no pppssh request has",
    "route add 10.1.0.0/24 via 192.168.77.1 && id": "characters no pppssh request has",
    "route add $(id) via 192.168.77.1": "characters no pppssh request has",
    "route add `id` via 192.168.77.1": "characters no pppssh request has",
    "pppd\nid": "characters no pppssh request has",
    "pppd\rid": "characters no pppssh request has",
    "pppd\tdebug": "characters no pppssh request has",
    "pppd | id": "characters no pppssh request has",
    "pppd > /tmp/x": "characters no pppssh request has",
    "route add 10.1.0.0/24 via 192.168.77.*": "characters no pppssh request has",
    "route add 10.1.0.0/24 via ${PEER}": "characters no pppssh request has",
    "route add 'x y' via 192.168.77.1": "characters no pppssh request has",
    "pppd\\": "characters no pppssh request has",
    "pppd é": "characters no pppssh request has",
    "x" * 100000: "'" + "x" * 40 + "' is not a pppssh request",
    f"route add {'1' * 100000} via 192.168.77.1": "network 1111",
}


@pytest.mark.parametrize("request_", list(HOSTILE), ids=lambda r: repr(r)[:40])
def test_helper_refuses_everything_else(helper: tuple[Path, Path], request_: str | None) -> None:
    status, err, ran = ask(helper, request_)
    assert status == REFUSED, err
    assert ran == [], "a refused request reached sudo"
    assert err.startswith("pppssh-helper: refused: ") and err.count("\n") == 1, err
    assert HOSTILE[request_] in err
    assert "parameter not set" not in err and "unbound" not in err


@pytest.mark.parametrize("request_", [None, "", "  "], ids=["unset", "empty", "spaces"])
def test_helper_logs_a_login_shell_attempt(
    helper: tuple[Path, Path], tmp_path: Path, request_: str | None
) -> None:
    """SSH_ORIGINAL_COMMAND unset (a login shell), empty or blank: refused, and logged."""
    status, err, ran = ask(helper, request_)
    assert (status, ran) == (REFUSED, []), err
    assert err == "pppssh-helper: refused: a login shell (this key only makes pppssh requests)\n"
    logged = (tmp_path / "syslog").read_text().splitlines()
    assert len(logged) == 1, logged
    assert logged[0].startswith("-t|pppssh-helper|-p|auth.warning|--|site=site-b user="), logged
    assert "client=198.51.100.1: refused: a login shell" in logged[0], logged


def test_helper_check_reveals_only_what_check_needs(helper: tuple[Path, Path]) -> None:
    """`check`: pppd, sudo's verdicts, ip_forward, rp_filter and each network free or taken;
    not the routing table or the addresses of this gateway."""
    path, log = helper
    env = {"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": "check"}
    proc = subprocess.run(["/bin/sh", str(path), "site-b"], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    keys = [line.split()[0] for line in proc.stdout.splitlines()]
    assert set(keys) == {"pppd", "sudo", "filter", "ip_forward", "rp_filter_all", "network"}, (
        proc.stdout
    )
    networks = [x for x in proc.stdout.splitlines() if x.startswith("network ")]
    assert [x.rsplit(" ", 1)[0] for x in networks] == ["network 10.1.0.0/24", "network 10.3.0.0/16"]
    assert all(x.endswith((" free", " taken")) for x in networks), networks
    sudo = [x for x in proc.stdout.splitlines() if x.startswith("sudo ")]
    assert [x.removeprefix("sudo allowed ") for x in sudo] == [
        " ".join(argv) for argv in sudo_commands(cfg_of())
    ], "the helper asks sudo about exactly the commands remote-setup allows"
    asked = log.read_text().splitlines()
    assert all(x.startswith("-n|-l|") for x in asked), "check only asks sudo, runs nothing"


def test_helper_without_policy_or_with_a_bad_site(helper: tuple[Path, Path]) -> None:
    status, err, ran = ask(helper, "pppd", site="site-c")
    assert (status, ran) == (1, []) and "no readable policy" in err and "site-c" in err
    for site in ("", "../etc", ".hidden", "a b", "a;b"):
        status, err, ran = ask(helper, "pppd", site=site)
        assert (status, ran) == (1, []), (site, err)
        assert "bad site name" in err


def test_helper_refuses_a_broken_policy(helper: tuple[Path, Path]) -> None:
    path, _ = helper
    policy = path.parent / "policies" / "pppssh-site-b.policy"
    good = policy.read_text()
    for bad in ("network 10.1.0.0/24 10.2.0.0/24\n", "shell /bin/sh\n", "peer\n"):
        policy.write_text(good + bad)
        status, err, ran = ask(helper, "pppd")
        assert (status, ran) == (1, []), (bad, err)
    policy.write_text(good.replace("peer 192.168.77.1\n", ""))
    status, err, ran = ask(helper, "pppd")
    assert (status, ran) == (1, []) and "are all required" in err


# ---------------------------------------------------------------------------- --apply


def test_apply_pipes_the_script_to_root_or_through_sudo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over a real (in-process) SSH server: the command, the script on stdin, the status."""
    got: list[bytes] = []

    async def shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
        got.append(await process.stdin.read())
        process.stdout.write(b"pppssh remote-setup: site lab ready\n")
        process.stderr.write(b"a warning\n")
        process.exit(0 if process.command == "sh -s" else 3)

    async def main(admin: str) -> tuple[int, list[str | None]]:
        async with SSHTestServer(tmp_path, shell, user=admin) as srv:
            cfg = srv.cfg(user="tunnel")  # the link account; the admin logs in
            status = await apply(cfg, "echo set up\n", admin, str(srv.identity))
            return status, [s.command for s in srv.rec.sessions]

    assert asyncio.run(main("root")) == (0, ["sh -s"])
    assert got == [b"echo set up\n"]
    out = capsys.readouterr()
    assert out.out == "pppssh remote-setup: site lab ready\n" and out.err == "a warning\n"
    assert asyncio.run(main("alice")) == (3, ["sudo -n sh -s"])


def test_apply_refusals_are_one_line(tmp_path: Path) -> None:
    async def main() -> list[str]:
        async with SSHTestServer(tmp_path, user="root") as srv:
            cfg = srv.cfg(user="tunnel")  # the link account; the admin logs in
            errors = []
            for admin, key in (("root", srv.other_identity), ("bob", srv.identity)):
                with pytest.raises(TunnelError) as info:
                    await apply(cfg, "true\n", admin, str(key))
                errors.append(str(info.value))
            srv.known_hosts.write_text("")
            with pytest.raises(TunnelError) as info:
                await apply(cfg, "true\n", "root", str(srv.identity))
            errors.append(str(info.value))
            assert srv.rec.sessions == [], "nothing may run after a refused login"
            return errors

    port_errors = asyncio.run(main())
    assert port_errors[0].startswith("root@127.0.0.1:") and "refused the login" in port_errors[0]
    assert port_errors[1].startswith("bob@127.0.0.1:") and "refused the login" in port_errors[1]
    assert port_errors[2].startswith("unknown host key: 127.0.0.1:"), "the same check as the link"
    assert all("\n" not in e for e in port_errors)


def test_peers_file_keeps_the_compression_window_on_its_line() -> None:
    text = SITE.replace("[networks]", "compression = deflate\n[networks]")
    lines = peers_text(cfg_of(text)).splitlines()
    assert "deflate 15" in lines and "nobsdcomp" in lines and "noccp" not in lines


def test_ipv6_routes_and_filter_come_from_ipv6_up(tmp_path: Path) -> None:
    """Without the helper, IPv6 routes there are the ipv6-up.d script's: no sudo rule could
    name their interface. The filter forwards only to the site's IPv6 networks there."""
    text = NO_HELPER.replace("remote_options = debug", "ipv6 = yes").replace(
        "local = 10.1.0.0/24, 10.3.0.0/16", "local = 10.1.0.0/24, 2001:db8:a::/64"
    )
    text = text.replace("remote = 10.2.0.0/24", "remote = 10.2.0.0/24, 2001:db8:b::/64")
    cfg = cfg_of(text)
    files = hook_files(cfg)
    assert sorted(p.split("/")[3] for p in files) == [
        "ip-down.d", "ip-up.d", "ipv6-down.d", "ipv6-up.d",
    ]  # fmt: skip
    assert not any(":" in " ".join(argv) for argv in sudo_commands(cfg)), "no IPv6 sudo rule"
    env = {"PPP_IFACE": "ppp3", "PPP_IPPARAM": "pppssh-site-b",
           "LINKNAME": "pppssh-site-b-192.168.77.1", "PATH": "/usr/bin:/bin"}  # fmt: skip
    assert _run_hook(tmp_path, files["/etc/ppp/ipv6-up.d/pppssh-site-b"], env) == [
        "ip -6 route add 2001:db8:a::/64 dev ppp3",
        "ip -6 rule del iif ppp3 priority 5000",
        "ip -6 rule del iif ppp3 priority 5001",
        "ip -6 rule add iif ppp3 from 2001:db8:a::/64 to 2001:db8:b::/64 priority 5000 lookup main",
        "ip -6 rule add iif ppp3 priority 5001 prohibit",
    ]
