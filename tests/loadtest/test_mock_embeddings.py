"""Embeddings (base64 and float) and the model list."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from loadtest.mock_llm import MockLLM


async def test_embeddings_and_models(client: AsyncOpenAI, mock: MockLLM) -> None:
    # The SDK asks for base64 by default and decodes it; also ask for floats explicitly.
    a = await client.embeddings.create(model="emb", input=["one", "two"])
    b = await client.embeddings.create(model="emb", input="one", encoding_format="float")
    assert [d.index for d in a.data] == [0, 1]
    assert len(a.data[0].embedding) == mock.config.embedding_dim
    assert a.data[0].embedding == pytest.approx(b.data[0].embedding, rel=1e-5)
    assert a.data[0].embedding != a.data[1].embedding
    assert a.usage.prompt_tokens == 2

    models = [m.id async for m in client.models.list()]
    assert models == ["mock-model"]
