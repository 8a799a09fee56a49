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

WEIGHTS = {  # seconds per module in a full run (the inner pytest's --durations)
    "tests/lab/test_attack_key.py": 260.0,
    "tests/lab/test_faults.py": 360.0,
    "tests/lab/test_check.py": 150.0,
    "tests/lab/test_helper.py": 150.0,
    "tests/lab/test_tunnel.py": 110.0,
    "tests/lab/test_attack_peer.py": 95.0,
    "tests/lab/test_reach.py": 91.0,
    "tests/lab/test_spoof.py": 88.0,
    "tests/lab/test_hooks.py": 50.0,
    "tests/lab/test_attack_sudo.py": 47.0,
    "tests/lab/test_options.py": 43.0,
    "tests/lab/test_sites.py": 41.0,
    "tests/lab/test_reload.py": 40.0,
    "tests/lab/test_attack_local.py": 40.0,
    "tests/lab/test_boot.py": 40.0,
    "tests/lab/test_lab.py": 30.0,
    "tests/lab/test_workstations.py": 28.0,
    "tests/lab/test_ipv6.py": 15.0,
    "tests/lab/test_fulltunnel.py": 14.0,
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
