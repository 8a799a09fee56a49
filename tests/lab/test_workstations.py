"""Issue: workstations follow exactly what `routes --print` says, and status counts traffic."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import pytest

from tests.lab.netlab import GW_A_LAN, GW_B_LAN, WS_A, WS_B, Lab
from tests.lab.test_tunnel import pppssh, show

pytestmark = pytest.mark.lab


@pytest.fixture
def bare_workstations(lab: Lab) -> Iterator[None]:
    """ws-a and ws-b without a default route (only their connected LAN), restored after."""
    for ns in ("ws-a", "ws-b"):
        lab.run(ns, ["ip", "route", "del", "default"])
    try:
        yield
    finally:
        for ns in ("ws-a", "ws-b"):
            lab.run(ns, ["ip", "route", "flush", "scope", "global"], check=False)
        lab.run("ws-a", ["ip", "route", "replace", "default", "via", GW_A_LAN])
        lab.run("ws-b", ["ip", "route", "replace", "default", "via", GW_B_LAN])
        pppssh(lab, "stop", "--all")


def groups(printed: str) -> dict[str, list[str]]:
    """The command lines of each '# on workstations in NET (...)' group."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in printed.splitlines():
        if line.startswith("# on workstations in "):
            current = found.setdefault(line.split()[4], [])
        elif line and not line.startswith("#") and current is not None:
            current.append(line)
    return found


def test_printed_routes_make_workstations_reach_each_other(
    lab: Lab, bare_workstations: None
) -> None:
    """Run exactly the printed iproute2 lines on ws-a and ws-b: they ping each other."""
    conf = lab.write_site_conf("site-b")
    printed = pppssh(lab, "routes", "--print", str(conf))
    assert printed.returncode == 0, show(printed)
    lines = groups(printed.stdout)
    assert set(lines) == {"10.1.0.0/24", "10.2.0.0/24"}, printed.stdout

    started = pppssh(lab, "start", str(conf))
    assert started.returncode == 0, show(started)
    assert not lab.ping("ws-a", WS_B), "ws-a must need the printed routes"

    for ns, net in (("ws-a", "10.1.0.0/24"), ("ws-b", "10.2.0.0/24")):
        for line in lines[net]:
            lab.run(ns, shlex.split(line))
    assert lab.ping("ws-a", WS_B, count=3), lab.routes("ws-a")
    assert lab.ping("ws-b", WS_A, count=3), lab.routes("ws-b")
    # and the far PPP addresses, which the printed host routes cover
    assert lab.ping("ws-a", "192.168.77.2")
    assert lab.ping("ws-b", "192.168.77.1")


def test_status_counts_traffic(lab: Lab) -> None:
    """bytes in/out of status move by at least what a ping across carried."""
    conf = lab.write_site_conf("site-b")
    try:
        started = pppssh(lab, "start", str(conf))
        assert started.returncode == 0, show(started)

        def sample() -> dict[str, object]:
            """One site's status as JSON."""
            proc = pppssh(lab, "status", "--json", "site-b")
            assert proc.returncode == 0, show(proc)
            site: dict[str, object] = json.loads(proc.stdout)["sites"][0]
            return site

        before = sample()
        assert before["state"] == "up" and before["reconnects"] == 0
        assert isinstance(before["bytes_in"], int) and isinstance(before["bytes_out"], int)
        count, size = 20, 1000
        ping = ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-s", str(size), WS_B]
        assert lab.run("ws-a", ping, check=False).returncode == 0
        after = sample()
        carried = count * (size + 28)
        assert after["bytes_out"] - before["bytes_out"] >= carried  # type: ignore[operator]
        assert after["bytes_in"] - before["bytes_in"] >= carried  # type: ignore[operator]
        assert after["uptime"] >= before["uptime"]  # type: ignore[operator]
        assert after["local_routes"] == [
            "ip route add 10.2.0.0/24 via 192.168.77.2 dev " + str(after["interface"])
        ]
        table = pppssh(lab, "status")
        assert table.returncode == 0, show(table)
        assert table.stdout.splitlines()[1].split()[:2] == ["site-b", "up"], table.stdout
    finally:
        stopped = pppssh(lab, "stop", "site-b")
        assert stopped.returncode == 0, show(stopped)
    gone = pppssh(lab, "status", "site-b")
    assert gone.returncode == 3 and "site-b: not running" in gone.stdout, show(gone)
