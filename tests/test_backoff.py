"""pppssh.backoff: exponential delays, capped, with jitter."""

from __future__ import annotations

import itertools
import random

from pppssh.backoff import delays


def first(n: int, start: float, cap: float, rand: float | None = None) -> list[float]:
    source = delays(start, cap) if rand is None else delays(start, cap, lambda: rand)
    return list(itertools.islice(source, n))


def test_doubles_up_to_the_cap() -> None:
    assert first(7, 5, 60, rand=1.0) == [5, 10, 20, 40, 60, 60, 60]


def test_jitter_takes_at_most_half_away() -> None:
    assert first(5, 5, 60, rand=0.0) == [2.5, 5, 10, 20, 30]


def test_start_above_the_cap_is_capped() -> None:
    assert first(3, 100, 60, rand=1.0) == [60, 60, 60]


def test_random_delays_stay_in_bounds_and_differ() -> None:
    random.seed(7)
    got = first(200, 1, 60)
    bounds = [min(2**i, 60) for i in range(200)]
    assert all(b / 2 <= d <= b for d, b in zip(got, bounds, strict=True))
    assert len(set(got[10:])) > 150, "capped delays still vary"
