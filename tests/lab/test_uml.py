"""Host-side pieces of the lab that need no kernel: the UML run script and its guards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.lab import uml


def test_run_script_quotes_argv_and_env(tmp_path: Path) -> None:
    """Arguments and values with spaces, quotes and dollars reach the command unchanged."""
    argv = ["sh", "-c", 'printf "%s|" "$X_Y" "$@"', "sh", "a b", "it's", "$HOME"]
    script = uml.run_script(argv, {"X_Y": "1 '2'"}, tmp_path)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "1 '2'|a b|it's|$HOME|"


def test_run_script_marks_the_lab_environment(tmp_path: Path) -> None:
    """Inside UML the command sees PPPSSH_IN_UML, no bytecode writing, and the results dir."""
    script = uml.run_script(["true"], None, tmp_path)
    assert "export PPPSSH_IN_UML=1\n" in script
    assert "export PYTHONDONTWRITEBYTECODE=1\n" in script
    assert f"export PPPSSH_LAB_RESULTS={tmp_path}\n" in script


def test_run_script_refuses_bad_env_names(tmp_path: Path) -> None:
    """An environment name that sh would misread is refused."""
    with pytest.raises(ValueError):
        uml.run_script(["true"], {"A B": "x"}, tmp_path)


def test_paths_with_spaces_cannot_reach_the_kernel_command_line() -> None:
    """A path that would split into two kernel words is refused with a clear error."""
    with pytest.raises(uml.UmlError, match="command line"):
        uml._kernel_word(Path("/tmp/a b"))


def test_boot_refuses_an_unknown_mode(tmp_path: Path) -> None:
    """Only the sh and systemd boot modes exist; another is refused before anything boots."""
    with pytest.raises(ValueError, match="boot mode"):
        uml.boot(["true"], results=tmp_path, mode="upstart")
    assert not (tmp_path / uml.RUN_SCRIPT).exists()


def test_init_pivots_into_the_overlay_and_drops_the_host_root() -> None:
    """uml-init makes the host root read-only, pivots into the overlay and unmounts the old
    root before it runs anything (the lab test of the wall is in test_lab.py)."""
    text = uml.INIT.read_text()
    ro, pivot = text.index("mount -o remount,bind,ro /"), text.index("pivot_root . ")
    umount, run = text.index("umount -l /run/lab-oldroot"), text.index('/bin/sh "$results/')
    assert ro < pivot < umount < run
    commands = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert "chroot" not in commands
