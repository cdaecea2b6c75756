"""The shared pieces of the relay's two ends: ``FrameReader`` (messages -> frames, drops
reported, oversize raised) and ``TaskSet`` (spawn, track, cancel and await)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.errors import FrameTooLarge, ProtocolError
from common.tasks import TaskSet
from relay.protocol.framing import FrameReader, pack_lines


def test_reader_decodes_text_and_binary_messages_across_message_boundaries() -> None:
    """TEXT and BINARY (UTF-8, invalid bytes replaced) feed one splitter; frames come out whole."""
    drops: list[ProtocolError] = []
    reader = FrameReader(drops.append, 1024)
    assert reader.feed('{"type":"a"}\n{"ty') == [{"type": "a"}]
    assert reader.feed(b'pe":"b","x":"\xff"}\n') == [{"type": "b", "x": "\ufffd"}]
    assert drops == []


def test_reader_reports_each_bad_line_and_keeps_the_good_ones_in_order() -> None:
    drops: list[ProtocolError] = []
    reader = FrameReader(drops.append, 1024)
    frames = reader.feed('{"type":"a"}\nnot json\n[1]\n{"x":1}\n{"type":"b"}\n')
    assert frames == [{"type": "a"}, {"type": "b"}]
    assert [e.kind for e in drops] == ["not_json", "not_object", "no_type"]


def test_reader_raises_frame_too_large() -> None:
    reader = FrameReader(lambda exc: None, 16)
    with pytest.raises(FrameTooLarge):
        reader.feed("x" * 17 + "\n")


def test_reader_sizes_a_lone_surrogate_instead_of_crashing() -> None:
    """A TEXT message with a lone surrogate (which UTF-8 cannot encode) near the size limit is
    sized, not a UnicodeEncodeError (found by ``python -m sim --fuzz``, issue #13)."""
    drops: list[ProtocolError] = []
    reader = FrameReader(drops.append, 64)
    assert reader.feed('"' + "0" * 10 + '\ud800"\n') == []
    assert [e.kind for e in drops] == ["not_object"]
    assert reader.feed('{"type":"\ud800"}\n') == [{"type": "\ud800"}]
    with pytest.raises(FrameTooLarge):
        reader.feed("\ud800" * 22)  # 66 bytes as surrogatepass UTF-8


async def test_task_set_discards_finished_tasks_and_logs_errors(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet(logging.getLogger("test.tasks"))

    async def boom() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="test.tasks"):
        t = tasks.spawn(boom(), name="boomer")
        with pytest.raises(RuntimeError):
            await t
        await asyncio.sleep(0)
    assert len(tasks) == 0
    assert [r.getMessage() for r in caplog.records] == ["boomer raised"]


async def test_task_set_aclose_cancels_and_awaits_every_task() -> None:
    tasks = TaskSet()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    a, b = tasks.spawn(forever("a")), tasks.spawn(forever("b"))
    await asyncio.sleep(0)
    await tasks.aclose()
    assert sorted(ended) == ["a", "b"]
    assert a.cancelled()
    assert b.cancelled()
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert len(tasks) == 0


@pytest.mark.parametrize(
    ("rows", "max_bytes", "messages"),
    [
        ([], 100, []),
        ([(1, '{"a":1}\n'), (2, '{"b":2}\n')], 100, [('{"a":1}\n{"b":2}\n', 2)]),
        ([(1, '{"a":1}\n'), (2, '{"b":2}\n')], 10, [('{"a":1}\n', 1), ('{"b":2}\n', 2)]),
        (
            [(3, '{"a":1}'), (4, '{"long":"' + "x" * 20 + '"}\n')],
            12,
            [('{"a":1}\n', 3), ('{"long":"' + "x" * 20 + '"}\n', 4)],
        ),
        ([(1, '{"é":1}\n'), (2, '{"b":2}\n')], 16, [('{"é":1}\n', 1), ('{"b":2}\n', 2)]),
    ],
    ids=["none", "one-message", "split-at-limit", "newline-added-long-line-alone", "utf8-bytes-counted"],
)
def test_pack_lines_packs_in_order_within_the_byte_limit(
    rows: list[tuple[int, str]], max_bytes: int, messages: list[tuple[str, int]]
) -> None:
    """Lines keep their order, each ends in a newline, a message stays within max_bytes (UTF-8)
    unless one line alone is longer, and each message reports its last seq."""
    assert list(pack_lines(rows, max_bytes)) == messages


def test_reader_takes_what_only_the_stdlib_parses() -> None:
    """Lines msgspec refuses (NaN, a 100-digit integer, an escaped lone surrogate) still parse
    as the stdlib parses them; text no parser takes is still dropped as not_json."""
    drops: list[ProtocolError] = []
    reader = FrameReader(drops.append, 4096)
    frames = reader.feed(
        '{"type":"a","x":NaN}\n{"type":"b","n":' + "9" * 100 + '}\n{"type":"c","s":"\\ud800"}\n{x\n'
    )
    assert [f["type"] for f in frames] == ["a", "b", "c"]
    assert frames[1]["n"] == int("9" * 100)
    assert frames[2]["s"] == "\ud800"
    assert [e.kind for e in drops] == ["not_json"]
