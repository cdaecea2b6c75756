"""Which earlier messages a turn sends, and the request it builds (SPEC 8.2; pure).

A turn sends ``[system] + history + [new user message]``. History is the newest *whole*
exchanges (a user message and the assistant answer right after it) that fit both
``agent.history_max_turns`` and ``agent.context_max_tokens``, oldest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")


@dataclass(frozen=True)
class Message:
    """One stored message of a session: ``role`` ``"user"`` or ``"assistant"``, its ``content``
    verbatim and ``at`` (Unix seconds). Any other role raises ``ValueError``."""

    role: Role
    content: str
    at: float

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role {self.role!r} must be one of user, assistant")


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ``ceil(len(text) / 4)`` characters (SPEC 8.2); 0 for ""."""
    return math.ceil(len(text) / 4)


def _exchanges(messages: list[Message]) -> list[tuple[Message, Message]]:
    """(user, assistant) pairs in order: a user message immediately followed by an assistant
    one. A user message with no answer after it (the next one is a user message, or none) and
    an assistant message without a user message right before it are left out."""
    pairs: list[tuple[Message, Message]] = []
    i = 0
    while i < len(messages):
        first = messages[i]
        if first.role == "user" and i + 1 < len(messages) and messages[i + 1].role == "assistant":
            pairs.append((first, messages[i + 1]))
            i += 2
        else:
            i += 1
    return pairs


def select_history(messages: list[Message], max_turns: int, max_tokens: int) -> list[Message]:
    """The newest whole exchanges of ``messages`` (chronological) that fit both limits.

    ``max_turns``: at most this many exchanges (0: none). ``max_tokens``: the summed
    ``estimate_tokens`` of every selected message's content stays <= this. Selection walks back
    from the newest exchange and stops at the first one that does not fit, so the result is a
    contiguous run ending with the newest exchange (never an older one skipping a newer one),
    returned oldest first as ``[user, assistant, user, assistant, ...]``. A trailing unanswered
    user message and stray assistant messages are never part of it.
    """
    chosen: list[tuple[Message, Message]] = []
    used = 0
    for user, answer in reversed(_exchanges(messages)):
        if len(chosen) >= max_turns:
            break
        cost = estimate_tokens(user.content) + estimate_tokens(answer.content)
        if used + cost > max_tokens:
            break
        chosen.append((user, answer))
        used += cost
    return [m for pair in reversed(chosen) for m in pair]


def build_request(system: str | None, history: list[Message], new_text: str) -> list[dict[str, str]]:
    """The ``messages`` of a chat completion: ``{"role": "system", "content": system}`` (left
    out when ``system`` is None or empty), then ``history`` in its order, then
    ``{"role": "user", "content": new_text}``."""
    out = [{"role": "system", "content": system}] if system else []
    out += [{"role": m.role, "content": m.content} for m in history]
    out.append({"role": "user", "content": new_text})
    return out
