"""Resume detection: the wall clock moved against the monotonic clock by more than 2 s.

A suspended machine's monotonic clock stops while wall time goes on (or is stepped on resume),
so ``(wall - mono)`` jumps. Pure: the caller passes both readings.
"""

from __future__ import annotations

RESUME_THRESHOLD_S = 2.0


class ResumeDetector:
    """``check(wall, mono)`` returns the jump in seconds when it exceeds 2 s, else None."""

    def __init__(self, wall: float, mono: float, threshold_s: float = RESUME_THRESHOLD_S) -> None:
        self.threshold_s = threshold_s
        self._offset = wall - mono

    def check(self, wall: float, mono: float) -> float | None:
        offset = wall - mono
        jump = offset - self._offset
        self._offset = offset
        return jump if abs(jump) > self.threshold_s else None
