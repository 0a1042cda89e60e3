"""What the mock LLM tests share besides fixtures (those are in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loadtest.mock_llm import MockLLM

MSG = [{"role": "user", "content": "x" * 40}]  # 10 prompt tokens

MockFactory = Callable[..., Awaitable[MockLLM]]
