"""The GET routes agents and the proxy probe: models, engine identity, health and metrics.

Engine-specific introspection formats (vLLM, llama.cpp, Ollama) are in ``mock_engines``.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from loadtest import mock_engines
from loadtest.mock_protocol import error_response
from loadtest.mock_state import MOCK_STATE


async def list_models(request: web.Request) -> web.Response:
    models = request.app[MOCK_STATE].config.models
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in models]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    if model not in request.app[MOCK_STATE].config.models:
        return error_response(404, f"The model '{model}' does not exist",
                              "invalid_request_error", "model_not_found")
    return web.json_response({"id": model, "object": "model", "created": 0, "owned_by": "mock"})


async def ollama_tags(request: web.Request) -> web.Response:
    models = request.app[MOCK_STATE].config.models
    return web.json_response(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2024-01-01T00:00:00Z",
                    "size": 0,
                    "digest": hashlib.sha256(m.encode()).hexdigest(),
                    "details": {"format": "gguf", "family": "mock", "parameter_size": "0B",
                                "quantization_level": "F16"},
                }
                for m in models
            ]
        }
    )


async def llamacpp_props(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    config = state.config
    return web.json_response(
        {
            "default_generation_settings": {"n_ctx": 4096, "n_predict": config.output_tokens,
                                            "model": config.models[0] if config.models else ""},
            "total_slots": state.slots,
            "model_path": f"/models/{config.models[0] if config.models else 'mock'}.gguf",
            "chat_template": "",
            "build_info": "mock-llm",
        }
    )


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0-mock"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine == "ollama":
        return mock_engines.not_found()
    text = (mock_engines.llamacpp_metrics_text(state) if state.config.engine == "llamacpp"
            else mock_engines.vllm_metrics_text(state))
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def slots(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine != "llamacpp":
        return mock_engines.not_found()
    return web.json_response(mock_engines.llamacpp_slots(state))


async def ollama_ps(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    if state.config.engine != "ollama":
        return mock_engines.not_found()
    return web.json_response(mock_engines.ollama_ps(state))
