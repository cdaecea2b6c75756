"""One dispatcher tick: which ready tasks to claim now, under the global and per-profile caps.

``plan_dispatch`` is the pure rule; ``dispatch_once`` hands it to ``TaskStore.claim``, which
reads the board, plans and (unless a dry run) applies the plan inside one ``BEGIN IMMEDIATE``
transaction, so two dispatchers on one state.db never claim one task: the second waits for the
first's commit and then sees its claims as running. A dry run reads the same snapshot, plans
with the same rule and writes nothing (no assignment, claim or event), so it reports exactly
what a real tick would spawn.

Rules (SPEC section 6):
- ready tasks in order of priority (high first), then creation time, then id;
- a task without an assignee takes ``default_assignee`` (an ``assigned`` event with source
  ``kanban.default_assignee``); a blank or whitespace default means none, and the task is
  skipped as unassigned;
- an assignee that is not a known profile (when ``profiles`` is given) blocks the task, with an
  error naming it and the known ones;
- running tasks count against both caps; a cap that is not a positive int (0, negative,
  ``"abc"``, None, a bool) means no cap. The global cap is checked before the per-profile one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.core.lease import OWNER
from gateway.kanban.store import Task, TaskStore

log = logging.getLogger("gateway.kanban")

TASK_LEASE_S = 6 * 3600.0
"""A claim's lease: a restart requeues a running task whose owner died, or (for an owner on
another host) whose lease ran out. No turn runs this long."""


def as_cap(value: object) -> int | None:
    """A cap as a positive int, or None (no cap) for anything else: 0, negatives, strings,
    floats, bools, None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def as_assignee(value: object) -> str | None:
    """A profile name stripped, or None when blank, whitespace or not a string."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


@dataclass
class DispatchResult:
    """What one tick decided. Ids are task ids; ``running_count`` is the assignee's running
    tasks (already running plus claimed earlier in this tick) when the task was deferred."""

    spawned: list[tuple[int, str]] = field(default_factory=list)
    skipped_unassigned: list[int] = field(default_factory=list)
    skipped_per_profile_capped: list[tuple[int, str, int]] = field(default_factory=list)
    skipped_global_cap: list[int] = field(default_factory=list)
    auto_assigned_default: list[int] = field(default_factory=list)
    blocked: list[tuple[int, str, str]] = field(default_factory=list)
    """(task id, assignee, error): assignee is not a known profile."""

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (tuples become lists)."""
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in asdict(self).items()}


def plan_dispatch(
    ready: list[Task],
    running: dict[str, int],
    *,
    max_in_progress: object = None,
    max_in_progress_per_profile: object = None,
    default_assignee: object = None,
    profiles: Collection[str] | None = None,
) -> DispatchResult:
    """Decide a tick. ``ready`` in dispatch order; ``running`` = running tasks per assignee.

    Pure: reads nothing, writes nothing. Returns the ``DispatchResult`` a tick applies.
    """
    global_cap = as_cap(max_in_progress)
    per_cap = as_cap(max_in_progress_per_profile)
    default = as_assignee(default_assignee)
    counts = Counter(running)
    total = sum(counts.values())
    known = None if profiles is None else sorted(profiles)
    out = DispatchResult()
    for task in ready:
        assignee = as_assignee(task.assignee)
        if assignee is None:
            if default is None:
                out.skipped_unassigned.append(task.id)
                continue
            assignee = default
            out.auto_assigned_default.append(task.id)
        if known is not None and assignee not in known:
            out.blocked.append(
                (task.id, assignee, f"unknown profile {assignee!r} (known profiles: {', '.join(known)})")
            )
            continue
        if global_cap is not None and total >= global_cap:
            out.skipped_global_cap.append(task.id)
            continue
        if per_cap is not None and counts[assignee] >= per_cap:
            out.skipped_per_profile_capped.append((task.id, assignee, counts[assignee]))
            continue
        counts[assignee] += 1
        total += 1
        out.spawned.append((task.id, assignee))
    return out


async def dispatch_once(
    store: TaskStore,
    *,
    spawn_fn: Callable[[Task], object],
    dry_run: bool = False,
    max_in_progress: object = None,
    max_in_progress_per_profile: object = None,
    default_assignee: object = None,
    profiles: Collection[str] | None = None,
    now: float | None = None,
    owner: str = OWNER,
) -> DispatchResult:
    """Run one tick against ``store``; call ``spawn_fn(task)`` for each claimed task after the
    claims commit (the task is ``running``, its assignee set). A dry run calls nothing.

    ``now``: Unix seconds stamped on claims and events (default: the system clock).
    ``owner``: the ``claim_lock`` value (``host:pid`` of this process by default).
    Caps and the default follow the module rules. Raises what SQLite raises (rolled back).
    """
    plan = functools.partial(
        plan_dispatch,
        max_in_progress=max_in_progress,
        max_in_progress_per_profile=max_in_progress_per_profile,
        default_assignee=default_assignee,
        profiles=profiles,
    )
    if dry_run:
        return plan(await store.ready(), await store.running_counts())
    now = time.time() if now is None else now
    result, claimed = await store.claim(
        plan, default_assignee=as_assignee(default_assignee), now=now, owner=owner, lease_s=TASK_LEASE_S
    )
    auto = set(result.auto_assigned_default)
    for task_id, assignee in result.spawned:
        log.info(
            "task %d dispatched to %s%s",
            task_id,
            assignee,
            " (kanban.default_assignee)" if task_id in auto else "",
        )
    for task_id, assignee, running in result.skipped_per_profile_capped:
        log.info("task %d deferred: %s at per-profile cap (%d running)", task_id, assignee, running)
    for task_id, _, error in result.blocked:
        log.warning("task %d blocked: %s", task_id, error)
    for task in claimed:
        spawn_fn(task)
    return result
