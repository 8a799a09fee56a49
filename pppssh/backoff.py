"""Delays between reconnect attempts: exponential, capped, with jitter (pure)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["delays"]


def delays(start: float, cap: float, rand: Callable[[], float] = random.random) -> Iterator[float]:
    """start, 2*start, 4*start ... up to cap, each drawn between half and all of that value.

    The jitter keeps sites that lost the same WAN from knocking on the same sshd in step.
    """
    base = min(start, cap)
    while True:
        yield base * (0.5 + 0.5 * rand())
        base = min(base * 2, cap)
