"""The files that start pppssh at boot: the systemd unit and the shell scripts around it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "pppssh@.service"
EXEC = "/usr/local/bin/pppssh"


def unit_settings() -> dict[str, list[str]]:
    """Key -> values of the unit (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """The unit as an instance (pppssh@site-b), with ExecStart pointing at this pppssh."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: bash scripts/install-deps.sh installs it"
    pppssh = shutil.which("pppssh")
    assert pppssh, "pppssh is not installed: pip install -e ."
    text = UNIT.read_text()
    assert text.count(EXEC) == 1
    instance = tmp_path / "pppssh@site-b.service"
    instance.write_text(text.replace(EXEC, pppssh))
    proc = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    # and it does complain about a mistake, so the silence above means something
    instance.write_text(text.replace(EXEC, pppssh).replace("KillMode=mixed", "KillMode=gently"))
    proc = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True)
    assert "Failed to parse kill mode" in proc.stdout + proc.stderr


def test_unit_settings() -> None:
    s = unit_settings()
    assert s["ExecStart"] == [f"{EXEC} start --foreground /etc/pppssh/%i.conf"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["exec"]  # pppssh, ExecStopPost=
    assert s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]
    assert s["After"] == ["network-online.target"] and s["Wants"] == ["network-online.target"]
    assert s["WantedBy"] == ["multi-user.target"]
    # hardening pppd and proxyarp do not survive
    for key in ("PrivateDevices", "ProtectKernelTunables", "DevicePolicy", "DeviceAllow",
                "ProtectClock", "PrivateNetwork", "CapabilityBoundingSet", "User",
                "DynamicUser", "PrivateUsers"):  # fmt: skip
        assert key not in s, f"{key}= breaks pppd, proxyarp or routes"
    assert s["NoNewPrivileges"] == ["yes"]


@pytest.mark.parametrize(
    "script",
    [*sorted(p.name for p in (REPO / "scripts").iterdir() if p.suffix in (".sh", ".init")),
     "../.ci/run", "../tests/lab/uml-init"],
)  # fmt: skip
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: bash scripts/install-deps.sh installs it"
    proc = subprocess.run(
        [shellcheck, str(REPO / "scripts" / script)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
