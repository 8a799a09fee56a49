"""The files that start pppssh at boot: the systemd unit and the shell scripts around it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "pppssh@.service"
EXEC = "/usr/local/bin/pppssh"


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Key -> values of a unit (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
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
    assert text.count(EXEC) == 2  # ExecStart=, ExecReload=
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
    assert s["ExecReload"] == [f"{EXEC} reload %i"]  # not SIGHUP alone: its outcome is relayed
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


METRICS = REPO / "systemd" / "pppssh-metrics.service"
METRICS_TIMER = REPO / "systemd" / "pppssh-metrics.timer"
PROM = "/var/lib/prometheus/node-exporter/pppssh.prom"


def test_metrics_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The textfile-collector pair as systemd reads them, with ExecStart at this pppssh."""
    analyze = shutil.which("systemd-analyze")
    pppssh = shutil.which("pppssh")
    assert analyze and pppssh
    text = METRICS.read_text()
    assert text.count(EXEC) == 1
    service = tmp_path / METRICS.name
    timer = tmp_path / METRICS_TIMER.name
    service.write_text(text.replace(EXEC, pppssh))
    timer.write_text(METRICS_TIMER.read_text())
    proc = subprocess.run([analyze, "verify", str(service), str(timer)], capture_output=True,
                          text=True)  # fmt: skip
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    timer.write_text(METRICS_TIMER.read_text().replace("OnUnitActiveSec=15s", "OnUnitActiveSec=x"))
    proc = subprocess.run([analyze, "verify", str(service), str(timer)], capture_output=True,
                          text=True)  # fmt: skip
    assert "Failed to parse timer value" in proc.stdout + proc.stderr


def test_metrics_service_settings() -> None:
    """A oneshot that writes the .prom file atomically (pppssh's --output), hardened: no
    network, the file system read-only but the collector's directory, one capability."""
    s = unit_settings(METRICS)
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"] == [f"{EXEC} status --format prometheus --output {PROM}"]
    assert s["ReadWritePaths"] == ["-/var/lib/prometheus/node-exporter"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX"] and s["IPAddressDeny"] == ["any"]
    assert s["CapabilityBoundingSet"] == ["CAP_DAC_OVERRIDE"]
    assert s["UMask"] == ["0022"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces",
                "RestrictSUIDSGID", "MemoryDenyWriteExecute", "LockPersonality"):  # fmt: skip
        assert s[key] == ["yes"], key
    assert "PrivateNetwork" not in s  # the counters of pppN are read in the links' namespace
    t = unit_settings(METRICS_TIMER)
    assert t["OnUnitActiveSec"] == ["15s"] and t["WantedBy"] == ["timers.target"]


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


@pytest.mark.parametrize(
    ("script", "args", "environ", "reconnects"),
    [
        ("pppssh-sleep.sh", ["post", "suspend"], {}, ["site-b", "site-c"]),
        ("pppssh-sleep.sh", ["pre", "suspend"], {}, []),
        ("pppssh-nm-dispatcher.sh", ["wlan0", "up"], {}, ["site-b", "site-c"]),
        ("pppssh-nm-dispatcher.sh", ["wlan0", "down"], {}, []),
        ("pppssh-nm-dispatcher.sh", ["ppp0", "up"], {}, []),
        # networkd-dispatcher: no arguments, IFACE and STATE in the environment
        ("pppssh-nm-dispatcher.sh", [], {"IFACE": "eth0", "STATE": "routable"},
         ["site-b", "site-c"]),
        ("pppssh-nm-dispatcher.sh", [], {"IFACE": "eth0", "STATE": "degraded"}, []),
        ("pppssh-nm-dispatcher.sh", [], {"IFACE": "ppp1", "STATE": "routable"}, []),
    ],
)  # fmt: skip
def test_resume_and_network_hooks_reconnect_the_running_sites(
    tmp_path: Path, script: str, args: list[str], environ: dict[str, str], reconnects: list[str]
) -> None:
    """The systemd-sleep hook after a resume and the NetworkManager (or networkd-dispatcher)
    hook when an uplink comes up call `pppssh reconnect` for each running site (those with a
    state file), and only then; a site that fails to reconnect does not stop the others."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("site-b", "site-c"):
        (run / f"{name}.json").write_text("{}")
    (run / "site-b.log").write_text("")
    calls = tmp_path / "calls"
    fake = tmp_path / "pppssh"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 1\n')
    fake.chmod(0o755)
    proc = subprocess.run(
        ["sh", str(REPO / "scripts" / script), *args], capture_output=True, text=True,
        env={"PPPSSH": str(fake), "PPPSSH_RUN_DIR": str(run), "PATH": "/usr/bin:/bin",
             **environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = calls.read_text().splitlines() if calls.exists() else []
    assert said == [f"reconnect {name}" for name in reconnects]
