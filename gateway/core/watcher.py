"""The idle watcher as a state machine: one enum, one table, no stop path (SPEC section 4).

    state     event          -> state
    LIVE      IDLE           -> DRAINING   (going_idle sent)
    DRAINING  FLIP_ACKED     -> DORMANT    (ack; presence closed, socket closed 1000 "dormant")
    DRAINING  ABORTED        -> LIVE       (inbound/work after going_idle, or no ack: re-handshake)
    DORMANT   WOKEN          -> LIVE       (poke, resume, due job; a cooldown starts)

There is no transition to a stopped state: dormant is a state of the running process.
"""

from __future__ import annotations

import enum

from common.errors import TransitionError


class WatchState(enum.Enum):
    LIVE = "live"
    DRAINING = "draining"
    DORMANT = "dormant"


class WatchEvent(enum.Enum):
    IDLE = "idle"
    FLIP_ACKED = "flip_acked"
    ABORTED = "aborted"
    WOKEN = "woken"


TRANSITIONS: dict[tuple[WatchState, WatchEvent], WatchState] = {
    (WatchState.LIVE, WatchEvent.IDLE): WatchState.DRAINING,
    (WatchState.DRAINING, WatchEvent.FLIP_ACKED): WatchState.DORMANT,
    (WatchState.DRAINING, WatchEvent.ABORTED): WatchState.LIVE,
    (WatchState.DORMANT, WatchEvent.WOKEN): WatchState.LIVE,
}


def transition(state: WatchState, event: WatchEvent) -> WatchState:
    """The next state; raises ``TransitionError`` naming both when the table has no row."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError("idle watcher", state.value, event.value) from None
