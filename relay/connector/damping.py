"""4409 damping (PROTOCOL.md 7.5): refuse a re-dial of a just-replaced gateway id and warn,
at most once a minute per gateway, when two processes fight over one id.
"""

from __future__ import annotations

import logging

from common.clock import Clock

log = logging.getLogger("relay.connector")

REPLACE_HOLD_S = 10.0
"""A re-dial this soon after a replacement (or a refusal) of the same gateway id, while the
newer socket is healthy, is refused with 4409 (PROTOCOL.md 7.5)."""
FIGHT_LOG_EVERY_S = 60.0
"""At most one fight WARNING per gateway per this many seconds."""


class Damper:
    """Replacement/refusal bookkeeping per gateway id; ``clock.monotonic()`` times the holds.

    ``totals`` is ``hermes_relay_replacements_total{gateway}`` (gateway id -> count).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._replaced_at: dict[str, float] = {}  # gateway id -> monotonic time of the last one
        self.totals: dict[str, int] = {}
        self._fight_logged: dict[str, tuple[float, int]] = {}  # gid -> (logged at, count then)

    def damped(self, gid: str, *, live: bool) -> bool:
        """True (and counted) when a new socket for ``gid`` must be refused with 4409: the id
        was replaced or refused less than ``REPLACE_HOLD_S`` ago and its current socket is
        healthy (``live``: the connector's session for ``gid`` exists and is live)."""
        last = self._replaced_at.get(gid)
        now = self.clock.monotonic()
        if not live or last is None or now - last >= REPLACE_HOLD_S:
            return False
        self.note_fight(gid, refused=True)
        return True

    def note_fight(self, gid: str, *, refused: bool) -> None:
        """Count a replacement or refusal; one WARNING per minute per gateway while it lasts."""
        now = self.clock.monotonic()
        previous = self._replaced_at.get(gid)
        self._replaced_at[gid] = now
        total = self.totals[gid] = self.totals.get(gid, 0) + 1
        if not refused and (previous is None or now - previous >= FIGHT_LOG_EVERY_S):
            return  # one replacement (a re-dial over a half-open socket) is not a fight
        logged_at, count_then = self._fight_logged.get(gid, (float("-inf"), 0))
        if now - logged_at < FIGHT_LOG_EVERY_S:
            return
        self._fight_logged[gid] = (now, total)
        log.warning(
            "gateway %s: %d socket replacements/refusals (4409) since the last warning"
            " (hermes_relay_replacements_total{gateway=%r} %d): two processes share this"
            " gateway id? re-dials within %.0f s of a replacement are refused",
            gid,
            total - count_then,
            gid,
            total,
            REPLACE_HOLD_S,
        )
