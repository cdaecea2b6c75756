"""Exponential backoff with jitter (PROTOCOL.md section 6), pure.

Delay before attempt ``n`` (n = 0, 1, ...): ``d = min(cap, base * factor**n)``, then jitter drawn
uniformly from ``[d/2, d]`` ("equal jitter", AWS architecture blog "Exponential Backoff and
Jitter"). Model: ``websockets.client.backoff``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Uniform = Callable[[float, float], float]
"""``uniform(lo, hi) -> float`` in [lo, hi]; inject ``lambda lo, hi: hi`` to pin the ceiling."""


class Backoff:
    """Counts consecutive failures and hands out the next delay, seconds.

    ``next_delay()`` returns the jittered delay for the current attempt and counts it;
    ``reset()`` forgets the failures (after 60 s of stable connection).
    """

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        cap: float = 30.0,
        uniform: Uniform = random.uniform,
    ) -> None:
        self.base = base
        self.factor = factor
        self.cap = cap
        self.uniform = uniform
        self.attempts = 0

    def ceiling(self, attempt: int | None = None) -> float:
        """The un-jittered delay for ``attempt`` (default: the next one), seconds."""
        n = self.attempts if attempt is None else attempt
        # Cap the exponent first so a long outage never overflows a float.
        return min(self.cap, self.base * self.factor ** min(n, 64))

    def next_delay(self) -> float:
        d = self.ceiling()
        self.attempts += 1
        return self.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempts = 0
