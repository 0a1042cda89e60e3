"""The engine-introspection formats the mock speaks, so adaptive caps are tested on all three.

``MockLLMConfig.engine`` picks one: ``vllm`` (``/metrics`` with the vLLM series, the default),
``llamacpp`` (``/slots`` with ``batch_size`` slots, ``/metrics`` with ``llamacpp:`` series;
``/props`` already reports ``total_slots``; with ``max_running`` set, that many slots and
the engine's own queue as ``requests_deferred`` / ``num_requests_waiting``), ``ollama`` (``/api/ps``; no ``/metrics``).
Routes of the other engines answer 404, as the real servers would.
"""

from __future__ import annotations

from aiohttp import web

from loadtest.mock_state import MockState

ENGINES = ("vllm", "llamacpp", "ollama")


def kv_usage(state: MockState) -> float:
    """A KV cache sized for twice the batch: full once the engine is well past its knee."""
    b = max(1, state.config.batch_size)
    return min(1.0, (state.running if state.queued_mode else state.in_flight) / (2 * b))


def vllm_kv_lines(state: MockState, label: str) -> list[str]:
    return [
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{label}}} {kv_usage(state)}",
    ]


def llamacpp_metrics_text(state: MockState) -> str:
    processing = state.running_now
    deferred = state.waiting
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
    busy = state.running_now
    return [{"id": i, "id_task": -1, "n_ctx": 4096, "is_processing": i < busy}
            for i in range(state.slots)]


def ollama_ps(state: MockState) -> dict:
    models = state.config.models if state.in_flight or state.completed else []
    return {"models": [{"name": m, "model": m, "size": 0, "size_vram": 0,
                        "expires_at": "2099-01-01T00:00:00Z"} for m in models]}


def not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


def vllm_metrics_text(state: MockState) -> str:
    """vLLM-style exposition; the aggregate series carry the first served model's name."""
    config = state.config
    label = f'model_name="{config.models[0] if config.models else "mock-model"}"'
    running = state.running_now
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{label}}} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{label}}} {float(state.waiting)}",
        *vllm_kv_lines(state, label),
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{label}}} {float(state.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{label}}} {float(state.completion_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason in ("length", "stop"):
        count = float(state.finished_by_reason.get(reason, 0))
        lines.append(f'vllm:request_success_total{{finished_reason="{reason}",{label}}} {count}')
    lines += state.first_tokens.metric_lines(label)  # TTFT and queue-time histograms
    lines += [
        "# HELP mock_requests_in_flight Inference requests active now, by requested model.",
        "# TYPE mock_requests_in_flight gauge",
        f"mock_requests_in_flight {float(state.in_flight)}",
    ]
    for model, n in sorted(state.in_flight_by_model.items()):
        lines.append(f'mock_requests_in_flight{{model="{model}"}} {float(n)}')
    lines += [
        "# HELP mock_peak_in_flight Highest in-flight count since the last reset.",
        "# TYPE mock_peak_in_flight gauge",
        f"mock_peak_in_flight {float(state.peak)}",
        "# HELP mock_requests_total Requests received, by path.",
        "# TYPE mock_requests_total counter",
    ]
    for path, n in sorted(state.requests_by_path.items()):
        lines.append(f'mock_requests_total{{path="{path}"}} {float(n)}')
    return "\n".join(lines) + "\n"

