"""Fixtures of the mock LLM tests: ``make_mock(**config)``, ``mock`` and an SDK ``client``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from loadtest.mock_llm import MockLLM, MockLLMConfig, run_mock_llm
from tests.loadtest.mock_support import MockFactory


@pytest.fixture
async def make_mock() -> AsyncIterator[MockFactory]:
    """Start mocks with config overrides; each is stopped after the test."""
    servers: list[Any] = []

    async def factory(**overrides: Any) -> MockLLM:
        cm = run_mock_llm(MockLLMConfig(**{"ttft_s": 0.0, "tpot_s": 0.0, **overrides}))
        server = await cm.__aenter__()
        servers.append(cm)
        return server

    yield factory
    for cm in reversed(servers):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def mock(make_mock: MockFactory) -> MockLLM:
    return await make_mock()


@pytest.fixture
async def client(mock: MockLLM) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)
    yield sdk
    await sdk.close()
