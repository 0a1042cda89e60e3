"""Route families: what each engine's generation routes carry, as data.

Admission is decided by default (``proxy/app.py``): every request with a body is admitted
unless its path is a configured pass-through. What differs between engines is only what the
proxy reads to reserve and settle tokens, and that is this table: which request field caps
the completion, whether streaming is the default, whether the proxy may ask for a usage chunk,
and which bytes mark an event or body worth parsing for usage (``proxy/usage.py`` reads every
shape: OpenAI, Responses, Anthropic, llama.cpp native, Ollama).

A path that matches no family is still admitted, as ``GENERIC``: every known token field is
read, usage in any known shape is settled, and a body that is not JSON is admitted as a
request without a model (the ``*`` route).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class UsageMarkers:
    """Bytes that may mark a usage report: a chunk holding none is passed on unparsed; an event
    is parsed only where ``pattern`` matches (``"usage": null`` is no report)."""

    needles: tuple[bytes, ...]
    pattern: re.Pattern[bytes]

    @classmethod
    def of(cls, *needles: bytes) -> UsageMarkers:
        return cls(needles, re.compile(b"|".join(
            re.escape(n) + (rb"\s*:\s*\{" if n == b'"usage"' else b"") for n in needles)))


OPENAI_USAGE = UsageMarkers.of(b'"usage"')


@dataclass(frozen=True, slots=True)
class TokenField:
    """A request field that caps the completion (``("options", "num_predict")`` is nested)."""

    path: tuple[str, ...]
    #: llama.cpp ``n_predict: -1`` and Ollama ``num_predict: -1/-2`` mean "no cap": negative
    #: is then unbounded rather than an error
    negative_unbounded: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class RouteFamily:
    name: str
    max_tokens: tuple[TokenField, ...]
    #: False for embeddings and rerankers: nothing to reserve beyond the input
    generates: bool = True
    #: the field asking for several completions at once (OpenAI's ``n``): the cap is per choice
    choices_field: str | None = None
    #: Ollama streams unless told ``stream: false``
    stream_default: bool = False
    #: OpenAI streams: the proxy adds ``stream_options.include_usage`` (and hides the chunk)
    asks_usage: bool = False
    #: a body that is not a JSON object is a 400 (False: admitted as model-less)
    needs_json: bool = True
    #: how its responses report usage (what to look for, cheaply)
    usage: UsageMarkers = OPENAI_USAGE


_OPENAI_MAX = (TokenField(("max_completion_tokens",)), TokenField(("max_tokens",)))
_N_PREDICT = (TokenField(("n_predict",), negative_unbounded=True),)
_NUM_PREDICT = (TokenField(("options", "num_predict"), negative_unbounded=True),)
_LLAMA_NEEDLES = (b'"usage"', b'"tokens_predicted"', b'"timings"')
_OLLAMA_NEEDLES = (b'"eval_count"', b'"prompt_eval_count"')
_LLAMA_USAGE = UsageMarkers.of(*_LLAMA_NEEDLES)
_OLLAMA_USAGE = UsageMarkers.of(*_OLLAMA_NEEDLES)

OPENAI_CHAT = RouteFamily("openai_chat", _OPENAI_MAX, choices_field="n", asks_usage=True)
OPENAI_COMPLETIONS = RouteFamily("openai_completions", _OPENAI_MAX, choices_field="n",
                                 asks_usage=True)
OPENAI_EMBEDDINGS = RouteFamily("embeddings", (), generates=False)
RESPONSES = RouteFamily("responses", (TokenField(("max_output_tokens",)),))
ANTHROPIC_MESSAGES = RouteFamily("anthropic_messages", (TokenField(("max_tokens",)),))
LLAMA_COMPLETION = RouteFamily("llamacpp_completion", _N_PREDICT, usage=_LLAMA_USAGE)
LLAMA_EMBEDDING = RouteFamily("llamacpp_embedding", (), generates=False,
                              usage=_LLAMA_USAGE)
RERANK = RouteFamily("rerank", (), generates=False)
OLLAMA_GENERATE = RouteFamily("ollama_generate", _NUM_PREDICT, stream_default=True,
                              usage=_OLLAMA_USAGE)
OLLAMA_EMBED = RouteFamily("ollama_embed", (), generates=False, usage=_OLLAMA_USAGE)
GENERIC = RouteFamily(
    "generic", _OPENAI_MAX + (TokenField(("max_output_tokens",)),) + _N_PREDICT + _NUM_PREDICT,
    needs_json=False,
    usage=UsageMarkers.of(*_LLAMA_NEEDLES, *_OLLAMA_NEEDLES),
)

#: exact paths first (llama-server's native ``/completions`` is not OpenAI's), then suffixes
#: in order (``/chat/completions`` before ``/completions``), so a path prefix
#: (``/openai/v1/...``) changes nothing
EXACT_PATHS: Mapping[str, RouteFamily] = MappingProxyType({
    "/completion": LLAMA_COMPLETION, "/completions": LLAMA_COMPLETION,
    "/infill": LLAMA_COMPLETION, "/embedding": LLAMA_EMBEDDING,
    "/embeddings": LLAMA_EMBEDDING, "/api/chat": OLLAMA_GENERATE,
    "/api/generate": OLLAMA_GENERATE, "/api/embed": OLLAMA_EMBED,
    "/api/embeddings": OLLAMA_EMBED,
})
SUFFIXES: tuple[tuple[str, RouteFamily], ...] = (
    ("/chat/completions", OPENAI_CHAT),
    ("/completions", OPENAI_COMPLETIONS),
    ("/embeddings", OPENAI_EMBEDDINGS),
    ("/responses", RESPONSES),
    ("/messages", ANTHROPIC_MESSAGES),
    ("/rerank", RERANK),
    ("/reranking", RERANK),
    ("/api/chat", OLLAMA_GENERATE),
    ("/api/generate", OLLAMA_GENERATE),
    ("/api/embed", OLLAMA_EMBED),
)


def family_for(path: str) -> RouteFamily:
    """The family of a normalized path (no query); ``GENERIC`` when none matches."""
    path = path.rstrip("/") or "/"
    found = EXACT_PATHS.get(path)
    if found is not None:
        return found
    for suffix, family in SUFFIXES:
        if path.endswith(suffix):
            return family
    return GENERIC


#: probes: never admitted (agents send ~16 GET probes to identify a server)
PROBE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: methods whose requests are admitted even with an empty body
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def admits(method: str, path: str, has_body: bool, passthrough: frozenset[str]) -> bool:
    """True when a request needs admission: every POST/PUT/PATCH, and any other request with a
    body except probes, unless its normalized path is an exact pass-through path."""
    if method in PROBE_METHODS or not (has_body or method in BODY_METHODS):
        return False
    return path not in passthrough
