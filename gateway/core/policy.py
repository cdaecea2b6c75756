"""Scale-to-zero policy as pure functions (SPEC section 4).

``env_flag`` reads HERMES_SCALE_TO_ZERO, ``coerce_idle_timeout`` the idle timeout, ``arm_blockers``
says why the watcher may not arm, ``is_idle`` decides the idle predicate and ``idle_deadline``
when it will next hold.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IDLE_TIMEOUT_MIN = 5.0
TRUTHY = frozenset({"1", "true", "yes", "on"})


def env_flag(value: str | None) -> bool:
    """True for 1/true/yes/on (trimmed, case-insensitive); anything else is False."""
    return value is not None and value.strip().lower() in TRUTHY


def idle_timeout_s(minutes: object) -> float:
    """Idle timeout in seconds from ``idle_timeout_minutes`` (a number > 0, may be a float).

    Raises ``ValueError`` naming the value when it is <= 0, infinite, NaN or not a number.
    """
    if isinstance(minutes, bool) or not isinstance(minutes, int | float | str):
        raise ValueError(f"idle_timeout_minutes {minutes!r} is not a number")
    try:
        value = float(minutes)
    except ValueError:
        raise ValueError(f"idle_timeout_minutes {minutes!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"idle_timeout_minutes {minutes!r} must be > 0")
    return value * 60


def coerce_idle_timeout(minutes: object) -> float:
    """``idle_timeout_s``, or the 5 minute default for <= 0 or non-numeric (SPEC section 4)."""
    try:
        return idle_timeout_s(minutes)
    except ValueError:
        return DEFAULT_IDLE_TIMEOUT_MIN * 60


@dataclass(frozen=True)
class ArmInputs:
    """What arming depends on (all config-level facts)."""

    enabled: bool  # HERMES_SCALE_TO_ZERO
    relay_only: bool  # messaging is relay-only or absent
    wake_url: str | None  # GATEWAY_RELAY_WAKE_URL
    relay_configured: bool
    external_waker: bool  # gateway.scale_to_zero.external_waker


def arm_blockers(i: ArmInputs) -> list[str]:
    """Reasons the idle watcher may not arm; empty means armed (SPEC section 4)."""
    out = []
    if not i.enabled:
        out.append("HERMES_SCALE_TO_ZERO is not on (1, true, yes, on)")
    if not i.relay_only:
        out.append("messaging is not relay-only")
    if not i.wake_url:
        out.append("no wake URL: set GATEWAY_RELAY_WAKE_URL")
    if not i.relay_configured and not i.external_waker:
        out.append(
            "nothing can wake the machine: no relay configured and "
            "gateway.scale_to_zero.external_waker is not true"
        )
    return out


@dataclass(frozen=True)
class IdleInputs:
    """A snapshot of activity; times are monotonic seconds, durations seconds."""

    now: float
    idle_since: float  # the later of the last real inbound and process start
    busy: bool  # a running turn, job, task or live background work
    next_due_in: float | None  # seconds until the next due job, None if none
    timeout: float


def is_idle(i: IdleInputs) -> bool:
    """Idle iff nothing runs, no job is due within the timeout, and the idle clock reached it.

    The boundary counts as idle: ``now == idle_since + timeout`` is idle. The sum is the
    one ``idle_deadline`` returns (not ``now - idle_since >= timeout``, which rounds the other
    way for some floats: a sleeper woken at that deadline found itself not idle yet and looked
    again at once, forever on a fake clock; found by ``python -m sim``).
    """
    if i.busy:
        return False
    if i.next_due_in is not None and i.next_due_in <= i.timeout:
        return False
    return i.now >= i.idle_since + i.timeout


def idle_deadline(i: IdleInputs) -> float | None:
    """Monotonic time at which ``is_idle`` should next be re-checked, or None (wait for an event).

    Busy -> None (the end of the work is an event). A job due within the timeout -> None too:
    the scheduler re-plans when it fires and that re-plan is the event to wait for. Otherwise
    the idle clock's deadline ``idle_since + timeout``, or the moment the next job comes within
    one timeout, whichever is earlier.
    """
    if i.busy:
        return None
    if i.next_due_in is not None and i.next_due_in <= i.timeout:
        return None
    deadline = i.idle_since + i.timeout
    if i.next_due_in is not None:
        deadline = min(deadline, i.now + i.next_due_in - i.timeout)
    return deadline
