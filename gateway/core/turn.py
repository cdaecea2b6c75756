"""An inbound turn as a durable state machine (SPEC 8.1): one enum, one table, no I/O.

    state       event      -> state
    RECEIVED    START      -> ANSWERING    (model call in flight)
    ANSWERING   START      -> ANSWERING    (a restart found the call unfinished: call again)
    RECEIVED    ANSWER     -> ANSWERED     (a reply that needs no model call: refusal, reset)
    ANSWERING   ANSWER     -> ANSWERED     (the full answer text committed before any send)
    ANSWERED    DELIVER    -> DELIVERED    (every chunk's send confirmed)
    ANSWERED    GIVE_UP    -> UNDELIVERED  (declined, ambiguous without idempotent sends, or
                                            unconfirmed past agent.delivery_give_up_hours)

DELIVERED and UNDELIVERED are terminal: a restart never runs such a turn again, whatever its
board task says. A restart resumes RECEIVED/ANSWERING by calling the model (the one repeat
that cannot be avoided) and ANSWERED by sending only the chunks not yet confirmed.
"""

from __future__ import annotations

import enum

from common.errors import TransitionError


class TurnState(enum.Enum):
    RECEIVED = "received"
    ANSWERING = "answering"
    ANSWERED = "answered"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"


class TurnEvent(enum.Enum):
    START = "start"
    ANSWER = "answer"
    DELIVER = "deliver"
    GIVE_UP = "give_up"


TERMINAL = frozenset({TurnState.DELIVERED, TurnState.UNDELIVERED})

TRANSITIONS: dict[tuple[TurnState, TurnEvent], TurnState] = {
    (TurnState.RECEIVED, TurnEvent.START): TurnState.ANSWERING,
    (TurnState.ANSWERING, TurnEvent.START): TurnState.ANSWERING,
    (TurnState.RECEIVED, TurnEvent.ANSWER): TurnState.ANSWERED,
    (TurnState.ANSWERING, TurnEvent.ANSWER): TurnState.ANSWERED,
    (TurnState.ANSWERED, TurnEvent.DELIVER): TurnState.DELIVERED,
    (TurnState.ANSWERED, TurnEvent.GIVE_UP): TurnState.UNDELIVERED,
}


def transition(state: TurnState, event: TurnEvent) -> TurnState:
    """The next state; raises ``TransitionError`` naming both when the table has no row."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError("turn", state.value, event.value) from None


def chunk_key(task_ref: str, index: int) -> str:
    """The idempotency key of one reply chunk, stable across restarts: ``<task ref>:<index>``
    (SPEC 8.1, PROTOCOL 7.1), e.g. ``inbox:42:0``."""
    return f"{task_ref}:{index}"


def give_up_due(answered_at: float, now: float, give_up_hours: float) -> bool:
    """Whether an unconfirmed reply is past its delivery bound: ``now - answered_at`` (Unix
    seconds) at least ``give_up_hours`` hours (``agent.delivery_give_up_hours``, default 24)."""
    return now - answered_at >= give_up_hours * 3600.0
