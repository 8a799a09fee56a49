"""Split the lab tests into shards that run side by side, one UML boot each (pure).

A test module stays whole in one shard (its module-scoped fixtures, such as a link account
set up once, are built once). Modules go to the least loaded shard, heaviest first, weighed
by WEIGHTS: the seconds each module took in a full run on a 2-core machine. A module not
listed weighs DEFAULT_PER_TEST seconds per selected test. Only the wall time depends on the
weights, never an outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

DEFAULT_PER_TEST = 20.0

WEIGHTS = {  # seconds per module in a full run on a quiet 2-core machine (report.json's seconds)
    "tests/lab/test_attack_key.py": 550.0,
    "tests/lab/test_faults.py": 345.0,
    "tests/lab/test_attack_peer.py": 150.0,
    "tests/lab/test_helper.py": 122.0,
    "tests/lab/test_failover.py": 110.0,
    "tests/lab/test_check.py": 82.0,
    "tests/lab/test_mss.py": 70.0,
    "tests/lab/test_spoof.py": 69.0,
    "tests/lab/test_tunnel.py": 66.0,
    "tests/lab/test_dns.py": 65.0,
    "tests/lab/test_attack_sudo.py": 56.0,
    "tests/lab/test_hooks.py": 75.0,
    "tests/lab/test_reach.py": 54.0,
    "tests/lab/test_delay.py": 45.0,
    "tests/lab/test_tokens.py": 45.0,
    "tests/lab/test_attack_local.py": 53.0,
    "tests/lab/test_boot.py": 47.0,
    "tests/lab/test_metrics.py": 40.0,
    "tests/lab/test_options.py": 32.0,
    "tests/lab/test_reload.py": 30.0,
    "tests/lab/test_sites.py": 28.0,
    "tests/lab/test_workstations.py": 27.0,
    "tests/lab/test_fulltunnel.py": 18.0,
    "tests/lab/test_ipv6.py": 16.0,
    "tests/lab/test_lab.py": 16.0,
}


def module_of(nodeid: str) -> str:
    """The test module of a pytest node id."""
    return nodeid.split("::", 1)[0]


def split(nodeids: Sequence[str], shards: int) -> list[list[str]]:
    """Split nodeids into at most `shards` non-empty lists, modules kept whole, each list in
    the original order; balanced by weight, heaviest module first."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    counts = Counter(module_of(n) for n in nodeids)

    def weight(module: str) -> float:
        """The module's weight: its listed seconds, scaled to the tests selected of it."""
        return WEIGHTS.get(module, DEFAULT_PER_TEST * counts[module])

    loads = [0.0] * shards
    home: dict[str, int] = {}
    for module in sorted(counts, key=lambda m: (-weight(m), m)):
        target = min(range(shards), key=lambda i: (loads[i], i))
        home[module] = target
        loads[target] += weight(module)
    out: list[list[str]] = [[] for _ in range(shards)]
    for n in nodeids:
        out[home[module_of(n)]].append(n)
    return [s for s in out if s]
