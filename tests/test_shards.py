"""The lab's shards: modules kept whole, every test once, order kept, balanced by weight."""

from __future__ import annotations

import pytest

from tests.lab import shards


def ids(module: str, n: int) -> list[str]:
    """n node ids of a module."""
    return [f"tests/lab/{module}.py::test_{i}" for i in range(n)]


def test_every_test_once_modules_whole_order_kept() -> None:
    """Each node id lands in exactly one shard, with its module, in the original order."""
    nodeids = ids("test_faults", 9) + ids("test_attack_key", 5) + ids("test_new", 3)
    parts = shards.split(nodeids, 2)
    assert sorted(n for p in parts for n in p) == sorted(nodeids)
    for p in parts:
        assert p == [n for n in nodeids if n in p]
    homes = {shards.module_of(n): i for i, p in enumerate(parts) for n in p}
    for i, p in enumerate(parts):
        assert all(homes[shards.module_of(n)] == i for n in p)


def test_balanced_by_weight() -> None:
    """The heaviest module alone on one side when it outweighs the rest."""
    nodeids = ids("test_faults", 2) + ids("test_ipv6", 1) + ids("test_fulltunnel", 1)
    parts = shards.split(nodeids, 2)
    assert parts[0] == ids("test_faults", 2)
    assert parts[1] == ids("test_ipv6", 1) + ids("test_fulltunnel", 1)


def test_unknown_module_weighs_per_test_and_fewer_modules_than_shards() -> None:
    """A module not listed weighs per test; empty shards are left out."""
    assert shards.split(ids("test_new", 4), 3) == [ids("test_new", 4)]
    heavy = ids("test_new", 30)  # 600 s unlisted outweighs test_faults' 360 s
    parts = shards.split(ids("test_faults", 1) + heavy, 2)
    assert parts == [heavy, ids("test_faults", 1)]


def test_one_shard_and_bad_count() -> None:
    """One shard keeps everything; fewer than one is a programming error."""
    nodeids = ids("test_a", 2) + ids("test_b", 2)
    assert shards.split(nodeids, 1) == [nodeids]
    with pytest.raises(ValueError):
        shards.split(nodeids, 0)
