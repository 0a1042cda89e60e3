"""The engine-introspection formats the mock speaks, so adaptive caps are tested on all three.

``MockLLMConfig.engine`` picks one: ``vllm`` (``/metrics`` with the vLLM series, the default),
``llamacpp`` (``/slots`` with ``batch_size`` slots, ``/metrics`` with ``llamacpp:`` series;
``/props`` already reports ``total_slots``), ``ollama`` (``/api/ps``; no ``/metrics``).
Routes of the other engines answer 404, as the real servers would.
"""

from __future__ import annotations

from aiohttp import web

from loadtest.mock_state import MockState

ENGINES = ("vllm", "llamacpp", "ollama")


def kv_usage(state: MockState) -> float:
    """A KV cache sized for twice the batch: full once the engine is well past its knee."""
    b = max(1, state.config.batch_size)
    return min(1.0, state.in_flight / (2 * b))


def vllm_kv_lines(state: MockState, label: str) -> list[str]:
    return [
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{label}}} {kv_usage(state)}",
    ]


def llamacpp_metrics_text(state: MockState) -> str:
    b = state.config.batch_size
    processing = min(state.in_flight, b)
    deferred = max(0, state.in_flight - b)
    return "\n".join([
        "# HELP llamacpp:requests_processing Number of requests processing.",
        "# TYPE llamacpp:requests_processing gauge",
        f"llamacpp:requests_processing {processing}",
        "# HELP llamacpp:requests_deferred Number of requests deferred.",
        "# TYPE llamacpp:requests_deferred gauge",
        f"llamacpp:requests_deferred {deferred}",
        "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.",
        "# TYPE llamacpp:tokens_predicted_total counter",
        f"llamacpp:tokens_predicted_total {state.completion_tokens}",
    ]) + "\n"


def llamacpp_slots(state: MockState) -> list[dict]:
    b = state.config.batch_size
    busy = min(state.in_flight, b)
    return [{"id": i, "id_task": -1, "n_ctx": 4096, "is_processing": i < busy}
            for i in range(b)]


def ollama_ps(state: MockState) -> dict:
    models = state.config.models if state.in_flight or state.completed else []
    return {"models": [{"name": m, "model": m, "size": 0, "size_vram": 0,
                        "expires_at": "2099-01-01T00:00:00Z"} for m in models]}


def not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)
