"""The one exception tree of hermes-sidecar (relay and gateway share it).

SidecarError
 +-- ConfigError        a config value, CLI argument or URL is not allowed
 +-- ProtocolError      a relay frame is malformed (kind: not_json|not_object|no_type|bad_field)
 |    +-- FrameTooLarge a WS message or NDJSON line exceeds max_frame_bytes (close 1009)
 +-- TokenError         an upgrade token failed verification (reason: expired|unauthorized)
 +-- HandshakeError     the first descriptor did not arrive or was invalid
 +-- TransitionError    a state machine was asked for a transition its table does not have
 +-- StartupError       a process cannot start (port in use, home not writable, bad config file)

Messages state the fact and the allowed values, lowercase, no trailing period.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SidecarError):
    """A config value, CLI argument or URL is not allowed; the message names it and what is."""


class ProtocolError(SidecarError):
    """A frame broke PROTOCOL.md section 2; ``kind`` groups it for rate-limited logging."""

    def __init__(self, message: str, kind: str = "bad_field") -> None:
        super().__init__(message)
        self.kind = kind


class FrameTooLarge(ProtocolError):
    """A WS message or NDJSON line exceeded ``max_frame_bytes`` (the socket closes with 1009)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds max_frame_bytes {limit}", "too_large")
        self.size = size
        self.limit = limit


class TokenError(SidecarError):
    """An upgrade token failed verification; ``reason`` is the 4401 close reason.

    ``reason`` is ``"expired"`` when only the ttl lapsed, ``"unauthorized"`` otherwise
    (PROTOCOL.md section 1).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class HandshakeError(SidecarError):
    """The connector did not answer the first hello with a valid descriptor in time."""


class TransitionError(SidecarError):
    """A state machine got an event its transition table has no row for."""

    def __init__(self, machine: str, state: object, event: object) -> None:
        super().__init__(f"{machine}: no transition for event {event!s} in state {state!s}")
        self.state = state
        self.event = event


class StartupError(SidecarError):
    """A process cannot start: the message names the cause (port in use, unwritable home,
    unreadable config); the CLI prints it as one line and exits 1."""
