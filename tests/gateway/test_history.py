"""History selection and the request a turn sends (SPEC 8.2): whole exchanges, newest first
into both limits, oldest first out."""

from __future__ import annotations

import pytest

from gateway.conversation.history import Message, build_request, estimate_tokens, select_history


def u(content: str, at: float = 0.0) -> Message:
    return Message("user", content, at)


def a(content: str, at: float = 0.0) -> Message:
    return Message("assistant", content, at)


def contents(messages: list[Message]) -> list[str]:
    return [f"{m.role[0]}:{m.content}" for m in messages]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 8, 2), ("x" * 9, 3), ("é" * 4, 1)],
    ids=[
        "empty",
        "one-char",
        "four-chars",
        "five-chars",
        "eight-chars",
        "nine-chars",
        "non-ascii-counts-chars",
    ],
)
def test_estimate_tokens_is_ceil_chars_over_four(text: str, tokens: int) -> None:
    """Tokens are ceil(characters / 4), counting characters, not bytes."""
    assert estimate_tokens(text) == tokens


CONVERSATION = [u("q1"), a("r1"), u("q2"), a("r2"), u("q3"), a("r3")]


@pytest.mark.parametrize(
    ("messages", "max_turns", "max_tokens", "expected"),
    [
        (CONVERSATION, 20, 16000, ["u:q1", "a:r1", "u:q2", "a:r2", "u:q3", "a:r3"]),
        (CONVERSATION, 2, 16000, ["u:q2", "a:r2", "u:q3", "a:r3"]),
        (CONVERSATION, 0, 16000, []),
        (CONVERSATION, 20, 0, []),
        (CONVERSATION, 20, 4, ["u:q2", "a:r2", "u:q3", "a:r3"]),  # 1 token per message
        (CONVERSATION, 20, 5, ["u:q2", "a:r2", "u:q3", "a:r3"]),  # half an exchange never enters
        (CONVERSATION + [u("pending")], 20, 16000, ["u:q1", "a:r1", "u:q2", "a:r2", "u:q3", "a:r3"]),
        ([a("stray"), u("q1"), a("r1")], 20, 16000, ["u:q1", "a:r1"]),
        ([u("lost"), u("q1"), a("r1")], 20, 16000, ["u:q1", "a:r1"]),
        ([u("q1"), a("r1"), a("again")], 20, 16000, ["u:q1", "a:r1"]),
        ([], 20, 16000, []),
        ([u("only")], 20, 16000, []),
    ],
    ids=[
        "all-fit",
        "turn-limit-keeps-newest",
        "zero-turns",
        "zero-tokens",
        "token-limit-exact",
        "token-limit-whole-exchanges",
        "trailing-question-dropped",
        "leading-assistant-dropped",
        "unanswered-question-dropped",
        "second-answer-dropped",
        "empty",
        "lone-question",
    ],
)
def test_select_history_keeps_newest_whole_exchanges(
    messages: list[Message], max_turns: int, max_tokens: int, expected: list[str]
) -> None:
    """Newest whole exchanges that fit both limits, returned oldest first."""
    assert contents(select_history(messages, max_turns, max_tokens)) == expected


def test_select_history_stops_at_first_exchange_that_does_not_fit() -> None:
    """A big exchange in the middle ends the run: no older small exchange skips past it."""
    messages = [u("q1"), a("r1"), u("x" * 400), a("r2"), u("q3"), a("r3")]
    assert contents(select_history(messages, 20, 50)) == ["u:q3", "a:r3"]


def test_select_history_counts_both_sides_of_an_exchange() -> None:
    """An exchange costs its question's and its answer's tokens: 3 + 2 = 5 here."""
    messages = [u("x" * 12), a("y" * 8)]
    assert select_history(messages, 20, 4) == []
    assert select_history(messages, 20, 5) == messages


def test_message_rejects_unknown_role() -> None:
    """Only user and assistant messages are stored."""
    with pytest.raises(ValueError, match="'system'"):
        Message("system", "x", 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("system", "expected_head"),
    [("be brief", [{"role": "system", "content": "be brief"}]), (None, []), ("", [])],
    ids=["with-system", "no-system", "empty-system"],
)
def test_build_request_is_system_history_then_new_message(
    system: str | None, expected_head: list[dict[str, str]]
) -> None:
    """[system] + history + [user new_text], history in the order given."""
    request = build_request(system, [u("q1"), a("r1")], "q2")
    assert request == [
        *expected_head,
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "q2"},
    ]
