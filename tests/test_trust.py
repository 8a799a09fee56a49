"""Trust on this gateway: the site file and every file it names are root's alone, checked on the
opened descriptor; pppd options by allow-list; collision-free file names.

The autouse `trusted_top` fixture (tests/conftest.py) anchors the check at this test's own
tmp_path (root's, 0755): everything from there down is checked as on a gateway from `/`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pppssh import trust
from pppssh.config import PPPD_ALLOWED, ConfigError, check_files, load, parse, safe_name
from tests.test_config import BASE, insert_after

REPO = Path(__file__).resolve().parent.parent
USER = 1000  # an ordinary account's uid: files are chowned to it, no account is made


def gateway(folder: Path, text: str = BASE) -> Path:
    """A site file as root keeps it (0644) with its identity (0600) and known_hosts (0644)."""
    folder.mkdir(parents=True, exist_ok=True)
    site = folder / "site-b.conf"
    site.write_text(text)
    (folder / "id_ed25519").write_text("key\n")
    (folder / "id_ed25519").chmod(0o600)
    (folder / "known_hosts").write_text("")
    return site


def refusal(path: Path, files: bool = True) -> str:
    """The one-line error load() gives."""
    with pytest.raises(ConfigError) as info:
        load(path, files=files)
    message = str(info.value)
    assert "\n" not in message
    return message


def program(path: Path, mode: int = 0o755) -> Path:
    """An executable file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


# ---------------------------------------------------------------------------- the site file


def test_a_site_file_root_keeps_loads(tmp_path: Path) -> None:
    """The control: root's file, 0644, in root's 0755 directories, with its named files."""
    cfg = load(gateway(tmp_path))
    assert (cfg.name, cfg.identity) == ("site-b", tmp_path / "id_ed25519")


def test_site_file_owned_by_a_user(tmp_path: Path) -> None:
    site = gateway(tmp_path)
    os.chown(site, USER, USER)
    assert refusal(site) == (
        f"{site}: is owned by uid {USER}; only root may own it (chown root {site})"
    )
    assert refusal(site, files=False).endswith("only root may own it (chown root " + f"{site})")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_site_file_writable_by_group_or_others(tmp_path: Path, mode: int) -> None:
    site = gateway(tmp_path)
    site.chmod(mode)
    assert refusal(site) == (
        f"{site}: is writable by group or others (mode {mode:04o}); chmod go-w {site}"
    )


@pytest.mark.parametrize(("mode", "uid"), [(0o775, 0), (0o1777, 0), (0o755, USER)])
def test_site_file_in_a_directory_others_can_write(tmp_path: Path, mode: int, uid: int) -> None:
    """A root-owned file, but in a directory someone else could rename or replace it in."""
    site = gateway(tmp_path / "conf.d")
    site.parent.chmod(mode)
    os.chown(site.parent, uid, 0)
    elsewhere = "keep the file in a directory only root can write, such as /etc/pppssh"
    if uid:
        expected = f"is owned by uid {uid}; only root may own it ({elsewhere})"
    else:
        expected = f"is writable by group or others (mode {mode:04o}); {elsewhere}"
    assert refusal(site) == f"{site}: directory {site.parent} {expected}"


def test_every_directory_up_to_the_top_is_checked(tmp_path: Path) -> None:
    """Not only the file's own directory: one far above it, writable by others, is refused."""
    site = gateway(tmp_path / "a" / "b" / "c")
    (tmp_path / "a").chmod(0o777)
    assert f"directory {tmp_path / 'a'} is writable by group or others" in refusal(site)
    (tmp_path / "a").chmod(0o755)
    assert load(site).name == "site-b"


def test_symlink_swapped_to_a_user_file(tmp_path: Path) -> None:
    """A link in root's directory is walked; whatever it points at is checked when read."""
    real = gateway(tmp_path / "real")
    link = tmp_path / "site-b.conf"
    link.symlink_to("real/site-b.conf")  # relative; identity resolves next to the link
    (tmp_path / "id_ed25519").write_text("key\n")
    (tmp_path / "id_ed25519").chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    assert load(link).name == "site-b"
    hostile = tmp_path / "real" / "hostile.conf"
    hostile.write_text(BASE + "[hooks]\nup = /bin/sh -c 'id > /tmp/owned'\n")
    os.chown(hostile, USER, USER)
    link.unlink()
    link.symlink_to(hostile)  # the swap
    assert refusal(link) == f"{link}: site file {hostile} is owned by uid {USER}; only root may own it (chown root {hostile})"  # fmt: skip
    assert real.exists()


def test_symlink_in_a_user_directory_to_root_s_file(tmp_path: Path) -> None:
    """A user's link to root's own file: refused where it lies, not followed (realpath would
    have taken root's file and let the user choose, and switch, which one root reads)."""
    site = gateway(tmp_path / "etc")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, USER)
    link = home / "site-b.conf"
    link.symlink_to(site)
    assert refusal(link, files=False).startswith(
        f"{link}: directory {home} is owned by uid {USER}; only root may own it"
    )


def test_symlinked_directories_and_dot_dot_are_walked(tmp_path: Path) -> None:
    """Links to directories and `..` go through the same checks (and work when all is root's)."""
    site = gateway(tmp_path / "real" / "conf")
    (tmp_path / "alias").symlink_to("real")
    path = tmp_path / "alias" / "conf" / ".." / "conf" / "site-b.conf"
    assert load(path).name == "site-b"
    (tmp_path / "real").chmod(0o775)
    assert f"directory {tmp_path / 'real'} is writable by group or others" in refusal(path)
    assert site.exists()


def test_symlink_loop_and_dangling(tmp_path: Path) -> None:
    (tmp_path / "loop.conf").symlink_to("loop.conf")
    assert refusal(tmp_path / "loop.conf") == f"{tmp_path / 'loop.conf'}: too many symbolic links"
    (tmp_path / "dangling.conf").symlink_to("nowhere.conf")
    assert refusal(tmp_path / "dangling.conf") == f"{tmp_path / 'dangling.conf'}: no such file"


def test_fifo_in_place_of_the_site_file_never_blocks(tmp_path: Path) -> None:
    """A FIFO (even in root's directory, and with no writer) is refused without waiting."""
    fifo = tmp_path / "site-b.conf"
    os.mkfifo(fifo, 0o644)
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(refusal(fifo)), daemon=True)
    reader.start()
    reader.join(60)  # a guard against a hang only: the refusal is immediate
    assert not reader.is_alive(), "load() blocked on the FIFO"
    assert found == [f"{fifo}: is not a regular file"]


def test_directory_and_device_in_place_of_the_site_file(tmp_path: Path) -> None:
    (tmp_path / "dir.conf").mkdir()
    assert refusal(tmp_path / "dir.conf") == f"{tmp_path / 'dir.conf'}: is a directory, not a file"
    trust_top = trust.TOP
    try:
        trust.TOP = "/dev"  # /dev/null: root's, 0666, and a character device
        assert refusal(Path("/dev/null")) == "/dev/null: is not a regular file"
    finally:
        trust.TOP = trust_top


def test_default_top_is_the_root_directory(tmp_path: Path) -> None:
    """A real process checks from `/`: /tmp (1777) holds no file pppssh trusts."""
    assert str(tmp_path) == trust.TOP  # the fixture's anchor, in this process only
    site = gateway(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pppssh", "routes", "--print", str(site)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    top = next(p for p in [site, *site.parents] if p.parent == Path("/"))
    mode = top.stat().st_mode & 0o7777
    assert mode & 0o022, f"{top} is expected to be writable by others, like /tmp"
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"pppssh: {site}: directory {top} is writable by group or others (mode {mode:04o}); "
        "keep the file in a directory only root can write, such as /etc/pppssh\n"
    )


@pytest.fixture
def shared_top() -> Iterator[Path]:
    """A 0755 directory of root's that other users can enter (tmp_path's parents are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="pppssh-trust-"))
    folder.chmod(0o755)
    old = trust.TOP
    trust.TOP = str(folder)
    try:
        yield folder
    finally:
        trust.TOP = old
        subprocess.run(["rm", "-rf", "--", str(folder)], check=True)


def test_a_user_trusts_their_own_file_root_never_does(shared_top: Path) -> None:
    """`pppssh routes --print` by a user on their own file works; root refuses that file."""
    home = shared_top / "home"
    site = gateway(home)
    for path in (home, site):
        os.chown(path, USER, USER)
    os.seteuid(USER)
    try:
        assert load(site, files=False).name == "site-b"
    finally:
        os.seteuid(0)
    assert f"directory {home} is owned by uid {USER}" in refusal(site, files=False)


# ---------------------------------------------------------------------------- named files


def test_identity_readable_by_group_or_others(tmp_path: Path) -> None:
    site = gateway(tmp_path)
    key = tmp_path / "id_ed25519"
    for mode in (0o600, 0o400):
        key.chmod(mode)
        assert load(site).identity == key
    for mode in (0o644, 0o640, 0o604):
        key.chmod(mode)
        assert refusal(site) == (
            f"{site}:6: identity: identity {key} is readable by group or others (mode "
            f"{mode:04o}), as OpenSSH refuses too; chmod 600 {key}"
        )
    key.chmod(0o600)
    os.chown(key, USER, USER)
    assert refusal(site).startswith(f"{site}:6: identity: identity {key} is owned by uid {USER}")


def test_known_hosts_must_be_root_s(tmp_path: Path) -> None:
    site = gateway(tmp_path)
    known = tmp_path / "known_hosts"
    known.chmod(0o664)
    assert refusal(site).startswith(f"{site}:7: known_hosts: known_hosts {known} is writable")
    known.unlink()
    assert refusal(site) == f"{site}:7: known_hosts: known_hosts {known} does not exist"


def test_local_pppd_owned_by_a_user(tmp_path: Path) -> None:
    evil = program(tmp_path / "evil")
    site = gateway(tmp_path, insert_after(BASE, 10, f"local_pppd = {evil}"))
    assert load(site).local_pppd == str(evil)
    os.chown(evil, USER, USER)
    assert refusal(site) == (
        f"{site}:11: local_pppd: local_pppd {evil} is owned by uid {USER}; only root may own "
        f"it (chown root {evil})"
    )
    os.chown(evil, 0, 0)
    evil.chmod(0o644)
    assert refusal(site) == f"{site}:11: local_pppd: local_pppd {evil} is not executable"


@pytest.mark.parametrize("key", ["up", "down"])
def test_hook_program_in_a_user_writable_directory(tmp_path: Path, key: str) -> None:
    hook = program(tmp_path / "hooks" / "firewall")
    site = gateway(tmp_path, BASE + f"[hooks]\n{key} = {hook} open\n")
    assert load(site)
    hook.parent.chmod(0o777)
    assert refusal(site) == (
        f"{site}:15: {key}: directory {hook.parent} is writable by group or others (mode "
        "0777); keep the file in a directory only root can write, such as /etc/pppssh"
    )


def test_check_reports_missing_files_itself_but_never_takes_untrusted_ones(
    tmp_path: Path,
) -> None:
    """`pppssh check` loads with missing_ok: a missing pppd gets its own line and fix there;
    a present one that is not root's alone is still refused."""
    site = gateway(tmp_path, insert_after(BASE, 10, f"local_pppd = {tmp_path / 'no-pppd'}"))
    assert refusal(site) == (
        f"{site}:11: local_pppd: local_pppd {tmp_path / 'no-pppd'} does not exist"
    )
    cfg = load(site, files=False)
    check_files(cfg, missing_ok=True)
    os.chown(program(tmp_path / "no-pppd"), USER, USER)
    with pytest.raises(ConfigError, match=f"local_pppd: local_pppd .* is owned by uid {USER}"):
        check_files(cfg, missing_ok=True)


def test_read_only_verbs_need_only_the_site_file(tmp_path: Path) -> None:
    """routes, status and stop read the site file alone: a missing key file is no error."""
    site = tmp_path / "site-b.conf"
    site.write_text(BASE)
    assert load(site, files=False).name == "site-b"
    assert refusal(site) == (
        f"{site}:6: identity: identity {tmp_path / 'id_ed25519'} does not exist"
    )


# ---------------------------------------------------------------------------- pppd options

REFUSED = [
    "pty", "plugin", "+ua", "set", "file", "call", "show-password", "ipcp-accept-remote",
    "ipcp-accept-local", "noauth", "auth", "connect", "disconnect", "init", "welcome",
    "socket", "notty", "record", "logfile", "logfd", "linkname", "ipparam", "ifname",
    "unit", "pidfile", "defaultroute", "replacedefaultroute", "usepeerdns", "ms-dns",
    "netmask", "noipdefault", "lock", "nomagic", "maxfail", "persist", "demand", "passive",
    "idle", "name", "user", "remotename", "privgroup", "ip-up-script", "10.0.0.1:10.0.0.2",
    "nodetach", "updetach", "connect-delay", "allow-ip", "lcp-echo-adaptive",
]  # fmt: skip


@pytest.mark.parametrize("option", REFUSED)
@pytest.mark.parametrize("key", ["local_options", "remote_options"])
def test_pppd_options_outside_the_list_are_refused(option: str, key: str) -> None:
    text = insert_after(BASE, 8, f"{key} = debug {option} /tmp/x")
    with pytest.raises(ConfigError) as info:
        parse(text, Path("site-b.conf"))
    assert str(info.value) == (
        f"site-b.conf:9: {key}: pppd option '{option}' is not allowed here; allowed: {PPPD_ALLOWED}"
    )


@pytest.mark.parametrize(
    ("option", "key"),
    [("mtu", "mtu"), ("mru", "mru"), ("proxyarp", "proxyarp"), ("noccp", "compression"),
     ("deflate", "compression"), ("lcp-echo-interval", "lcp_echo_interval"),
     ("lcp-echo-failure", "lcp_echo_failure"), ("+ipv6", "ipv6")],
)  # fmt: skip
def test_options_pppssh_sets_name_their_key(option: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(insert_after(BASE, 8, f"local_options = {option} 1"), Path("site-b.conf"))
    assert str(info.value) == (
        f"site-b.conf:9: local_options: pppd option '{option}' is not allowed here: pppssh "
        f"sets it from the key {key}"
    )


NUMBERS = {
    "kdebug": (0, 7), "lcp-restart": (1, 60), "lcp-max-configure": (1, 100),
    "lcp-max-terminate": (1, 100), "lcp-max-failure": (1, 100), "ipcp-restart": (1, 60),
    "ipcp-max-configure": (1, 100), "ipcp-max-terminate": (1, 100),
    "ipcp-max-failure": (1, 100), "vj-max-slots": (2, 16),
}  # fmt: skip
FLAGS = ["debug", "novj", "novjccomp", "nopcomp", "noaccomp", "default-asyncmap", "receive-all"]


def options(value: str) -> tuple[str, ...]:
    """local_options as parsed, or the error text."""
    return parse(insert_after(BASE, 8, f"local_options = {value}"), Path("x.conf")).local_options


def test_the_allowed_list_is_what_readme_names() -> None:
    names = [word for word in re.split(r",\s*", PPPD_ALLOWED)]
    assert names == ["debug", *(f"{n} N" for n in NUMBERS), *FLAGS[1:], "asyncmap MAP"]
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `local_options` |"))
    for name in names:
        assert f"`{name}`" in row


def test_every_allowed_option_passes_at_its_bounds() -> None:
    assert options(" ".join(FLAGS)) == tuple(FLAGS)
    for name, (lo, hi) in NUMBERS.items():
        assert options(f"{name} {lo} {name} {hi}") == (name, str(lo), name, str(hi))
    assert options("asyncmap 0 asyncmap a0000 asyncmap FFFFFFFF")[-1] == "FFFFFFFF"


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_numbers_out_of_range_or_not_decimal(name: str) -> None:
    lo, hi = NUMBERS[name]
    for bad in (str(lo - 1), str(hi + 1), "010", "0x1", "-1", "1.5", "debug", "\uff11"):
        with pytest.raises(ConfigError) as info:
            options(f"{name} {bad}")
        assert str(info.value) == (
            f"x.conf:9: local_options: pppd option '{name}' needs a number {lo}..{hi}, not '{bad}'"
        )
    with pytest.raises(ConfigError, match=f"'{name}' needs a number {lo}..{hi}, not nothing"):
        options(name)


@pytest.mark.parametrize("bad", ["0xa0000", "123456789", "g", ""])
def test_asyncmap_is_hex(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        options(f"asyncmap {bad}")
    got = f"'{bad}'" if bad else "nothing"
    assert str(info.value).endswith(f"pppd option 'asyncmap' needs 1 to 8 hex digits, not {got}")


# ---------------------------------------------------------------------------- file names


def unsafe(stem: str) -> str:
    """safe_name backwards: the proof that no two names share a stem."""
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), stem)


def test_dot_and_underscore_no_longer_collide() -> None:
    assert (safe_name("a.b"), safe_name("a_b"), safe_name("a-b")) == ("a_2eb", "a_5fb", "a-b")
    assert safe_name("a_2eb") == "a_5f2eb" != safe_name("a.b")
    cfg = parse(BASE.replace("name = site-b", "name = hq.example"), Path("x.conf"))
    assert cfg.file_stem == "hq_2eexample"


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", fullmatch=True))
def test_safe_name_is_one_to_one_and_sudo_safe(name: str) -> None:
    stem = safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", stem), stem  # no '.', no '~': sudo reads it
    assert unsafe(stem) == name
