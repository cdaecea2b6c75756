"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fake_llm import FakeLLM


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    """A fake OpenAI-compatible provider on 127.0.0.1 that records every request."""
    f = await FakeLLM().start()
    yield f
    await f.close()
