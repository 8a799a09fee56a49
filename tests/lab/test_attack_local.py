"""A local user attacks root's pppssh on gw-a through the files it trusts, and is refused.

mallory, an ordinary account on the gateway, tries to make root's `pppssh start` run her
program or read her text: a site file she owns naming her pppd; a root-owned site file in a
directory she can write (or that her group can); a symbolic link she controls, to a FIFO she
feeds while root reads it (the swap that beat a check made by path after the read), or to
root's own file; a private key left readable by everyone. Each attack prints what it tried and
what stopped it; each must exit 2 with a one-line error, and the marker the hostile program or
hook would write (as root, in a directory mallory cannot write) must never appear.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab
from tests.lab.test_tunnel import pppssh, show

pytestmark = pytest.mark.lab

ATTACKER = "mallory"
MARKS = Path("/run/pppssh-attack-marks")  # root's, 0755: only a root process writes here


@pytest.fixture(scope="module")
def mallory() -> Iterator[pwd.struct_passwd]:
    """The local attacker: an ordinary account with a home of her own (UML overlay only)."""
    made = False
    try:
        pw = pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", ATTACKER], check=True)
        made = True
        pw = pwd.getpwnam(ATTACKER)
    os.chmod(pw.pw_dir, 0o755)
    MARKS.mkdir(mode=0o755, exist_ok=True)
    yield pw
    shutil.rmtree(MARKS, ignore_errors=True)
    if made:
        subprocess.run(["userdel", "-r", ATTACKER], check=False, capture_output=True)


def as_mallory(pw: pwd.struct_passwd, path: Path, text: str, mode: int = 0o644) -> Path:
    """Write a file owned by mallory, as she could."""
    path.write_text(text)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(mode)
    return path


def marker(name: str) -> Path:
    """Where a hostile program run as root would leave its mark (absent to begin with)."""
    path = MARKS / name
    path.unlink(missing_ok=True)
    return path


def evil_program(pw: pwd.struct_passwd, mark: Path) -> Path:
    """mallory's "pppd": it records that root ran it."""
    return as_mallory(pw, Path(pw.pw_dir) / "evil", f"#!/bin/sh\nid > {mark}\n", 0o755)


def refused(lab: Lab, conf: Path, expected: str, tried: str) -> str:
    """root's `pppssh start conf` must exit 2 with one line containing expected; say so."""
    proc = pppssh(lab, "start", str(conf), timeout=120)
    print(f"attack: {tried}")
    print(f"  pppssh start {conf} -> exit {proc.returncode}: {proc.stderr.strip()}")
    assert proc.returncode == 2, f"{tried}: not refused as a bad site file\n{show(proc)}"
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, f"{tried}: {show(proc)}"
    assert expected in proc.stderr, (
        f"{tried}: refused, but not for the expected reason\n{show(proc)}"
    )
    print(f"  stopped by: {expected}")
    return proc.stderr


def nothing_ran(lab: Lab, mark: Path, tried: str) -> None:
    """No mark from a hostile program, no pppd on either gateway."""
    assert not mark.exists(), f"{tried}: root ran mallory's program: {mark.read_text()}"
    assert lab.pids("gw-a", "pppd") == [] and lab.pids("gw-b", "pppd") == [], tried
    print(f"  nothing ran: {mark} absent, no pppd on gw-a or gw-b")


def test_site_file_owned_by_a_user(lab: Lab, mallory: pwd.struct_passwd) -> None:
    """mallory's own site file naming her pppd; then root's file naming it."""
    mark = marker("evil-pppd")
    evil = evil_program(mallory, mark)
    good = lab.write_site_conf("site-b", ppp_local_pppd=evil).read_text()
    conf = as_mallory(mallory, lab.dir / "mallory.conf", good)  # in root's own directory
    tried = f"a site file owned by {ATTACKER} (in root's directory) with local_pppd = {evil}"
    refused(lab, conf, f"{conf}: is owned by uid {mallory.pw_uid}; only root may own it", tried)
    nothing_ran(lab, mark, tried)

    conf = lab.write_site_conf("site-b", ppp_local_pppd=evil)  # root's file, root's directory
    tried = f"root's site file with local_pppd = {evil} (a program in {ATTACKER}'s home)"
    refused(
        lab, conf, f"local_pppd: directory {mallory.pw_dir} is owned by uid {mallory.pw_uid}", tried
    )
    nothing_ran(lab, mark, tried)


def test_root_file_in_a_directory_a_user_can_write(lab: Lab, mallory: pwd.struct_passwd) -> None:
    """A root-owned site file with a hook, where mallory could rename or replace it."""
    mark = marker("hook-ran")
    text = lab.write_site_conf("site-b", hooks_up=f"/bin/sh -c 'id > {mark}'").read_text()
    own = Path("/run/pppssh-attack-mine")
    own.mkdir(exist_ok=True)
    os.chown(own, mallory.pw_uid, mallory.pw_gid)
    conf = own / "site-b.conf"
    conf.write_text(text)  # root's file, 0644
    tried = f"root's site file (with an up hook) in {own}, a directory {ATTACKER} owns"
    try:
        refused(lab, conf, f"directory {own} is owned by uid {mallory.pw_uid}", tried)
    finally:
        shutil.rmtree(own)
    nothing_ran(lab, mark, tried)

    shared = Path("/run/pppssh-attack-shared")
    shared.mkdir(exist_ok=True)
    os.chown(shared, 0, mallory.pw_gid)
    shared.chmod(0o2775)  # root's directory, but her group may write it
    conf = shared / "site-b.conf"
    conf.write_text(text)
    tried = f"root's site file in {shared}, root's directory that {ATTACKER}'s group can write"
    try:
        refused(lab, conf, f"directory {shared} is writable by group or others (mode 2775)", tried)
    finally:
        shutil.rmtree(shared)
    nothing_ran(lab, mark, tried)


def test_symlink_and_fifo_swap(lab: Lab, mallory: pwd.struct_passwd) -> None:
    """The swap that beat the old check: a link to a FIFO mallory feeds a hostile file through,
    switched to root's own site file while root reads; and a plain link to root's file."""
    mark = marker("swap-hook-ran")
    root_conf = lab.write_site_conf("site-b")  # root's, in root's directory: passes every check
    hostile = lab.write_site_conf("hostile", hooks_up=f"/bin/sh -c 'id > {mark}'").read_text()
    home = Path(mallory.pw_dir)
    as_mallory(mallory, home / "hostile.conf", hostile)
    fifo, link, fed = home / "feed", home / "site-b.conf", home / "fed"
    for path in (fifo, link, fed):
        path.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o644)
    os.chown(fifo, mallory.pw_uid, mallory.pw_gid)
    link.symlink_to(fifo)
    os.chown(link, mallory.pw_uid, mallory.pw_gid, follow_symlinks=False)
    # mallory's writer: once root opens the FIFO, point the link at root's file (so that a
    # check by path after the read sees root's file), then feed the hostile text.
    script = (f"exec 3>{fifo}; touch {fed}; ln -sfn {root_conf} {link}; "
              f"cat {home / 'hostile.conf'} >&3")  # fmt: skip
    writer = lab.spawn(None, ["sh", "-c", script], user=ATTACKER)
    tried = (f"{link} -> {fifo}, a FIFO {ATTACKER} feeds a site file with an up hook, the "
             f"link swapped to {root_conf} while root reads")  # fmt: skip
    try:
        refused(lab, link, f"directory {home} is owned by uid {mallory.pw_uid}", tried)
        assert not fed.exists(), f"{tried}: root opened the FIFO"
        print(f"  root never opened {fifo}: the writer is still waiting for a reader")
    finally:
        # Give the waiting writer a reader (root, here), so that it ends.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            writer.wait(timeout=30)
        finally:
            os.close(reader)
    nothing_ran(lab, mark, tried)

    link.unlink()
    link.symlink_to(root_conf)
    os.chown(link, mallory.pw_uid, mallory.pw_gid, follow_symlinks=False)
    tried = f"{link}, {ATTACKER}'s symbolic link to root's own {root_conf}"
    refused(lab, link, f"directory {home} is owned by uid {mallory.pw_uid}", tried)
    nothing_ran(lab, mark, tried)


def test_identity_readable_by_others(lab: Lab, mallory: pwd.struct_passwd) -> None:
    """A link key any local user can read (and then use) is refused, as OpenSSH refuses it."""
    mark = marker("identity-hook-ran")
    key = lab.dir / "id_everyone"
    shutil.copyfile(lab.site_key("site-b"), key)
    key.chmod(0o644)
    conf = lab.write_site_conf("site-b", remote_identity=key, hooks_up=f"/bin/sh -c 'id > {mark}'")
    tried = f"identity {key} mode 0644 (readable by {ATTACKER})"
    refused(
        lab, conf, f"identity: identity {key} is readable by group or others (mode 0644)", tried
    )
    nothing_ran(lab, mark, tried)

    key.chmod(0o600)  # the same key, closed: the same site file is accepted
    assert lab.remote_setup(conf), "remote-setup refused the site with a 0600 key"
    proc = pppssh(lab, "check", str(conf), timeout=120)
    print(f"control: {key} mode 0600 -> pppssh check exit {proc.returncode}")
    assert proc.returncode == 0, f"the same site file with a 0600 key must pass\n{show(proc)}"
    assert proc.stdout.startswith("\u2713 site file valid"), show(proc)
