"""A GPU-like, OpenAI-compatible LLM server: the proxy's real upstream in tests and load tests.

It speaks exactly what the ``openai`` SDK parses (chat, completions, embeddings, models, SSE
streams with ``stream_options.include_usage``), answers the probes agents send to identify a
server (``/api/tags``, ``/props``, ``/version``, ``/health``), exports vLLM-style ``/metrics``,
and slows down past its batch size (see :mod:`loadtest.mock_state`).

Per-request fault injection, through headers the proxy forwards untouched:

* ``x-mock-tool-call: <tool>`` -- a chat offering that tool, with no tool result yet, gets a
  call to it (``--tool-call`` does it for every request; see :mod:`loadtest.mock_tools`).
* ``x-mock-pause-after-first: <s>`` -- stream: first chunk, pause, then the rest.
* ``x-mock-fault: <f>[,<f>...]`` with ``refuse-429[:<retry s>]``, ``unavailable-503``,
  ``hang`` (never answers until the client leaves), ``die-mid-stream`` (a few chunks, then the
  connection is aborted without ``[DONE]``), ``delay:<s>`` (extra latency before the first
  token), ``tokens:<n>`` (output length; ``max_tokens`` still caps it), ``end-after-done:<s>``
  (stream: the body's terminating chunk comes that long after ``[DONE]``, as from servers that
  send them in separate writes).

Introspection: ``GET /mock/stats``, ``GET /mock/ttft`` (each request's own time to first
token and slot wait, :mod:`loadtest.mock_ttft`), ``POST /mock/reset``, ``POST /mock/config``
(JSON fields of :class:`MockLLMConfig`), and ``/mock/echo`` (any method) which returns what
it received.

Layout: this module builds the app (:func:`create_app`), runs it (:class:`MockLLM`) and holds
the command line; the routes are in ``mock_generate`` (chat, completions), ``mock_embeddings``,
``mock_probes`` (models, engine probes, metrics) and ``mock_control`` (``/mock/*``); the wire
format in ``mock_protocol``, fault parsing in ``mock_faults``, the engine simulation in
``mock_state`` (contention model, engine queue, counters) and ``mock_gpu`` (GPU steps,
per-request hold).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from aiohttp import web

from loadtest import mock_engines
from loadtest.mock_control import (
    echo,
    first_tokens,
    record_requests,
    reset,
    set_config,
    stats,
)
from loadtest.mock_embeddings import embeddings
from loadtest.mock_generate import chat_completions, completions
from loadtest.mock_probes import (
    get_model,
    health,
    list_models,
    llamacpp_props,
    metrics,
    ollama_ps,
    ollama_tags,
    slots,
    version,
)
from loadtest.mock_state import MOCK_STATE, MockLLMConfig, MockState, RecordedRequest

from .runtime import loop_factory

__all__ = [
    "MOCK_STATE",
    "MockLLM",
    "MockLLMConfig",
    "MockState",
    "RecordedRequest",
    "create_app",
    "run_mock_llm",
]


def create_app(
    config: MockLLMConfig | None = None, state: MockState | None = None
) -> web.Application:
    """The mock as an aiohttp app; pass ``state`` to keep counters across restarts."""
    if state is None:
        state = MockState(config or MockLLMConfig())
    elif config is not None:
        state.config = config
    app = web.Application(middlewares=[record_requests], client_max_size=64 * 1024 * 1024)
    app[MOCK_STATE] = state
    add = app.router.add_route
    add("POST", "/v1/chat/completions", chat_completions)
    add("POST", "/v1/completions", completions)
    add("POST", "/v1/embeddings", embeddings)
    add("GET", "/v1/models", list_models)
    add("GET", "/v1/models/{model:.+}", get_model)
    add("GET", "/api/tags", ollama_tags)
    add("GET", "/props", llamacpp_props)
    add("GET", "/version", version)
    add("GET", "/health", health)
    add("GET", "/metrics", metrics)
    add("GET", "/slots", slots)
    add("GET", "/api/ps", ollama_ps)
    add("GET", "/mock/stats", stats)
    add("GET", "/mock/ttft", first_tokens)
    add("POST", "/mock/reset", reset)
    add("POST", "/mock/config", set_config)
    add("*", "/mock/echo", echo)
    add("*", "/mock/echo/{tail:.*}", echo)
    return app


# -- running it --------------------------------------------------------------------------------


class MockLLM:
    """A running mock server; ``stop()``/``start()`` simulate an upstream going away."""

    def __init__(
        self, config: MockLLMConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state = MockState(config or MockLLMConfig())
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    @property
    def config(self) -> MockLLMConfig:
        return self.state.config

    @property
    def url(self) -> str:
        """Origin, e.g. ``http://127.0.0.1:8000``; append ``/v1`` for an SDK base_url."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen; on a restart the same port and the same counters are reused."""
        if self._runner is not None:
            return
        self.app = create_app(state=self.state)
        # handler_cancellation: a client that leaves frees its in-flight slot at once.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every open connection (in-flight requests are cut)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@asynccontextmanager
async def run_mock_llm(
    config: MockLLMConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[MockLLM]:
    """Run the mock in this event loop for the duration of the block."""
    server = MockLLM(config, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- command line ------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = MockLLMConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--batch", type=int, default=defaults.batch_size,
                        help="requests served at full speed")
    parser.add_argument("--ttft", type=float, default=defaults.ttft_s, help="seconds")
    parser.add_argument("--tpot", type=float, default=defaults.tpot_s, help="seconds per token")
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--thrash", type=float, default=defaults.thrash)
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim)
    parser.add_argument("--models", default=",".join(defaults.models),
                        help="comma-separated ids for /v1/models")
    parser.add_argument("--engine", default=defaults.engine, choices=mock_engines.ENGINES,
                        help="introspection format (/metrics, /slots, /api/ps)")
    parser.add_argument("--max-running", type=int, default=defaults.max_running,
                        help="requests run at once (vLLM max_num_seqs, llama.cpp slots); the "
                             "rest wait in the engine's queue; 0 = all run, slowing past B")
    parser.add_argument("--tool-call", default=defaults.tool_call, metavar="TOOL",
                        help="answer a chat offering TOOL (and no tool result yet) with a call "
                             "to it, e.g. kanban_complete: plays a Hermes task to done")


def config_from_args(args: argparse.Namespace) -> MockLLMConfig:
    return MockLLMConfig(
        batch_size=args.batch,
        ttft_s=args.ttft,
        tpot_s=args.tpot,
        output_tokens=args.output_tokens,
        thrash=args.thrash,
        embedding_dim=args.embedding_dim,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        engine=args.engine,
        max_running=args.max_running,
        tool_call=args.tool_call or None,
    )


async def _serve(config: MockLLMConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with run_mock_llm(config, host, port) as server:
        print(f"mock-llm listening on {server.url}", flush=True)
        await stop.wait()


def cli_main(args: argparse.Namespace) -> int:
    """``python -m loadtest mock-llm``: serve until SIGINT/SIGTERM (uvloop when available)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(config_from_args(args), args.host, args.port))
    return 0
