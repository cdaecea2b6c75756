"""The relay connection as a state machine: states, events, one transition table, close policy.

Pure (no asyncio, no clock). ``ConnectionMachine.fire(event)`` returns the new state or raises
``TransitionError`` naming state and event. ``decide_close`` turns a socket close into the next
step, carrying the 4401 two-strike rule of PROTOCOL.md section 6. Model: h11's ``_state.py``.

    state        event            -> state
    STOPPED      START            -> DIALING
    DIALING      UPGRADED         -> HANDSHAKING
    HANDSHAKING  HANDSHAKE_OK     -> CONNECTED
    CONNECTED    FLIP_SENT        -> FLIPPING      (going_idle sent, still serving)
    FLIPPING     FLIP_ACKED       -> DORMANT       (ack; socket closed 1000 "dormant")
    DORMANT      WAKE             -> DIALING       (poke, resume, due job: never a timer)
    BACKOFF      BACKOFF_ELAPSED  -> DIALING
    BACKOFF      WAKE             -> DIALING
    any of DIALING..FLIPPING:
                 FAILED           -> BACKOFF       (dial/handshake failed, unexpected close)
                 REDIAL           -> DIALING       (re-handshake now: lost ack, flip abort, strike)
                 REVOKE           -> REVOKED       (second 4401 after a handshake)
    any          CLOSE            -> CLOSED        (disconnect(): terminal)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common.errors import TransitionError


class ConnState(enum.Enum):
    STOPPED = "stopped"
    DIALING = "dialing"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    FLIPPING = "flipping"
    BACKOFF = "backoff"
    DORMANT = "dormant"
    REVOKED = "revoked"
    CLOSED = "closed"


class ConnEvent(enum.Enum):
    START = "start"
    UPGRADED = "upgraded"
    HANDSHAKE_OK = "handshake_ok"
    FLIP_SENT = "flip_sent"
    FLIP_ACKED = "flip_acked"
    WAKE = "wake"
    BACKOFF_ELAPSED = "backoff_elapsed"
    FAILED = "failed"
    REDIAL = "redial"
    REVOKE = "revoke"
    CLOSE = "close"


S, E = ConnState, ConnEvent
_ACTIVE = (S.DIALING, S.HANDSHAKING, S.CONNECTED, S.FLIPPING)

TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (S.STOPPED, E.START): S.DIALING,
    (S.DIALING, E.UPGRADED): S.HANDSHAKING,
    (S.HANDSHAKING, E.HANDSHAKE_OK): S.CONNECTED,
    (S.CONNECTED, E.FLIP_SENT): S.FLIPPING,
    (S.FLIPPING, E.FLIP_ACKED): S.DORMANT,
    (S.DORMANT, E.WAKE): S.DIALING,
    (S.BACKOFF, E.BACKOFF_ELAPSED): S.DIALING,
    (S.BACKOFF, E.WAKE): S.DIALING,
    **{(s, E.FAILED): S.BACKOFF for s in _ACTIVE},
    **{(s, E.REDIAL): S.DIALING for s in _ACTIVE},
    **{(s, E.REVOKE): S.REVOKED for s in _ACTIVE},
    **{(s, E.CLOSE): S.CLOSED for s in S},
}


class ConnectionMachine:
    """Holds the current ``ConnState`` and applies ``TRANSITIONS``."""

    def __init__(self) -> None:
        self.state = S.STOPPED

    def can(self, event: ConnEvent) -> bool:
        return (self.state, event) in TRANSITIONS

    def fire(self, event: ConnEvent) -> ConnState:
        """Apply ``event``; return the new state. Raises ``TransitionError`` if not in the table."""
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise TransitionError("relay connection", self.state.value, event.value) from None
        return self.state


class CloseAction(enum.Enum):
    BACKOFF = "backoff"  # ordinary reconnect with exponential backoff
    REDIAL_NOW = "redial_now"  # one immediate re-dial with a fresh token (first strike)
    REVOKE = "revoke"  # latch revoked: no more dials


@dataclass(frozen=True)
class CloseDecision:
    action: CloseAction
    strike: bool  # whether the next socket carries a pending revocation strike
    reason: str


def decide_close(
    code: int | None,
    reason: str,
    *,
    ever_handshaken: bool,
    strike_on_socket: bool,
) -> CloseDecision:
    """Decide what follows a close of the current socket (PROTOCOL.md section 6).

    - 4401 ``"expired"``: ordinary reconnect; never latches (and clears a pending strike).
    - 4401 other, on a socket that was itself the strike re-dial: latch revoked.
    - 4401 other once this process has completed a handshake: one immediate re-dial (strike).
      A revoked gateway is refused at the upgrade, so a strike must count before the descriptor.
    - 4401 before this process's first successful handshake: ordinary retry, never latches.
    - anything else (1000 from the peer, 1006, 1009, 4409 ...): ordinary backoff.
    """
    if code == 4401 and reason != "expired":
        if strike_on_socket:
            return CloseDecision(CloseAction.REVOKE, False, "second 4401 after re-dial")
        if ever_handshaken:
            return CloseDecision(CloseAction.REDIAL_NOW, True, "4401 after handshake")
        return CloseDecision(CloseAction.BACKOFF, False, "4401 before first handshake")
    if code == 4401:
        return CloseDecision(CloseAction.BACKOFF, False, "token expired")
    return CloseDecision(CloseAction.BACKOFF, False, f"closed {code} {reason!r}".strip())
