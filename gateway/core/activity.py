"""Activity: the last-inbound clock, running work, and one 'something changed' signal.

Real user inbound (live or replayed) and process start reset the idle clock; pokes,
outbound and cron do not (SPEC section 4). Times are monotonic seconds of the injected clock.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

from common.clock import Clock


class Activity:
    """Counts running work by kind and stamps inbound; calls every listener on a change."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started_at = clock.monotonic()
        self.last_inbound_mono: float | None = None
        self.last_inbound_wall: float | None = None
        self.running: Counter[str] = Counter()
        self.listeners: list[Callable[[str], None]] = []

    @property
    def idle_since(self) -> float:
        """The later of the last real inbound and process start (monotonic seconds)."""
        if self.last_inbound_mono is None:
            return self.started_at
        return max(self.started_at, self.last_inbound_mono)

    @property
    def busy(self) -> bool:
        return sum(self.running.values()) > 0

    def inbound(self) -> None:
        """A new real user message was admitted: reset the idle clock."""
        self.last_inbound_mono = self.clock.monotonic()
        self.last_inbound_wall = self.clock.wall()
        self._emit("inbound")

    @contextlib.contextmanager
    def work(self, kind: str) -> Iterator[None]:
        """Count a running turn/job/task (``kind``) for the idle predicate while inside."""
        self.running[kind] += 1
        self._emit(f"{kind} started")
        try:
            yield
        finally:
            self.running[kind] -= 1
            if self.running[kind] <= 0:
                del self.running[kind]
            self._emit(f"{kind} finished")

    def _emit(self, what: str) -> None:
        for listener in self.listeners:
            listener(what)
