"""One fault schedule, drawn from its seed: the workload, the timings and the fault chances.

Everything random in a run comes from ``Schedule.rng`` (drawn in the order the run asks), so a
seed names one run exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sim.link import LinkFaults


@dataclass
class Message:
    """A chat message the platform posts at ``at`` (virtual seconds from the start) and retries
    (same ``message_id``) until the connector accepts it."""

    at: float
    chat_id: str
    message_id: str


@dataclass
class Crash:
    """Kill ``side`` after its ``after``-th delivered frame plus ``steps`` loop turns (mid
    handling), or at ``at`` virtual seconds when ``after`` is None; restart ``restart_s`` later."""

    side: str
    after: int | None
    at: float
    steps: int
    restart_s: float


@dataclass
class Schedule:
    seed: int
    rng: random.Random
    idle_timeout_min: float
    cooldown_s: float
    ack_timeout_s: float
    messages: list[Message]
    crashes: list[Crash]
    early_pokes: list[float]
    link: LinkFaults
    poke_lost: float
    provider_failure: float
    provider_garbage: float
    sqlite_busy: float
    sqlite_slow_read: float
    sqlite_fail: float


def draw(seed: int) -> Schedule:
    """The schedule of ``seed``: 3-12 messages to 1-3 chats over up to two hours (in bursts, so
    the sidecar sleeps and wakes between them), idle timeouts of 1-5 minutes, cooldowns of 0,
    5 or 30 s, up to three crashes of either process, and per-kind fault chances (each kind off
    in about a third of the schedules). ``sqlite_fail``: the sidecar's inbox transaction fails
    (a disk I/O error, or "locked" past the busy timeout while a CLI writes the same file)."""
    rng = random.Random(seed)

    def chance(hi: float) -> float:
        return 0.0 if rng.random() < 0.35 else hi * rng.random()

    chats = [f"c{i}" for i in range(rng.randint(1, 3))]
    messages: list[Message] = []
    t = 0.0
    for n in range(rng.randint(3, 12)):
        t += rng.choice([0.2, 1.0, 5.0, 30.0, 200.0, 900.0]) * rng.random()
        messages.append(Message(at=t, chat_id=rng.choice(chats), message_id=f"m{n}"))
    horizon = t + 60.0
    crashes = []
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        side = rng.choice(["sidecar", "connector"])
        mid_frame = rng.random() < 0.7
        crashes.append(
            Crash(
                side=side,
                after=rng.randint(1, 4 * len(messages)) if mid_frame else None,
                at=horizon * rng.random(),
                steps=rng.randint(0, 40),
                restart_s=rng.choice([0.5, 3.0, 30.0, 300.0]) * rng.random() + 0.1,
            )
        )
    return Schedule(
        seed=seed,
        rng=rng,
        idle_timeout_min=rng.choice([1, 1, 2, 5]),
        cooldown_s=rng.choice([0.0, 0.0, 5.0, 30.0]),
        ack_timeout_s=rng.choice([2.0, 10.0]),
        messages=messages,
        crashes=crashes,
        early_pokes=sorted(horizon * rng.random() for _ in range(rng.choice([0, 0, 1, 3]))),
        link=LinkFaults(
            drop=chance(0.04),
            drop_mid=chance(0.04),
            ack_lost=chance(0.4),
            ack_late=chance(0.4),
            duplicate=chance(0.2),
        ),
        poke_lost=chance(0.5),
        provider_failure=chance(0.3),
        provider_garbage=chance(0.2),
        sqlite_busy=chance(0.1),
        sqlite_slow_read=chance(0.3),
        sqlite_fail=chance(0.3),
    )
