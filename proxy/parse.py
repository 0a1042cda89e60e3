"""Reads only what admission needs from a request body: model, stream, the completion cap.

What to read depends on the route family (``proxy/families.py``): ``max_tokens`` for OpenAI,
``max_output_tokens`` for Responses, ``n_predict`` for llama.cpp, ``options.num_predict`` for
Ollama. The body is otherwise forwarded byte for byte; it is re-encoded only for an OpenAI
stream whose client did not ask for ``stream_options.include_usage`` (the proxy asks on its
behalf, to settle tokens with the real count, and hides that chunk again on the way back).

A body without ``model`` is admitted with ``model=None``: it goes to the ``*`` route when one
is configured (llama-server answers such requests), else 400 ``missing_model``
(``AdmissionPolicy.route``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidField, InvalidJSON
from .families import RouteFamily, TokenField


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    model: str | None
    stream: bool
    max_tokens: int | None
    family: RouteFamily
    body: bytes  # what goes upstream
    strip_usage: bool  # the proxy added include_usage; hide the usage chunk from the client
    choices: int = 1  # completions asked for at once (OpenAI ``n``): each may reach the cap

    @property
    def generates(self) -> bool:
        """False for embeddings: nothing to reserve beyond the input."""
        return self.family.generates


def _max_tokens(data: dict[str, Any], fields: tuple[TokenField, ...]) -> int | None:
    """The smallest completion cap the body sets, None when it sets none (or "unbounded")."""
    max_tokens = None
    for field in fields:
        path = field.path
        value: Any = data.get(path[0])
        for key in path[1:]:  # nested (Ollama's options.num_predict)
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or (
                value < 0 and not field.negative_unbounded):
            raise InvalidField(f"{field.name} must be a non-negative integer, got {value!r:.60}",
                               param=field.name)
        if value < 0:
            continue  # llama.cpp / Ollama: -1 is "until done", the model cap applies
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    return max_tokens


def multipart_model(content_type: str, body: bytes) -> str | None:
    """The ``model`` field of a ``multipart/form-data`` body (OpenAI's audio uploads), found
    with byte scans (the file part is never decoded); None when absent."""
    _, found, boundary = content_type.partition("boundary=")
    if not found:
        return None
    delimiter = b"\r\n--" + boundary.strip().strip('"').encode("latin-1", "replace")
    at = body.find(b'name="model"')
    if at < 0:
        return None
    start = body.find(b"\r\n\r\n", at)
    if start < 0 or start - at > 1024:
        return None
    end = body.find(delimiter, start + 4, start + 4 + 1024)
    if end < 0:
        return None
    value = body[start + 4:end].decode("utf-8", "replace").strip()
    return value or None


def parse_body(family: RouteFamily, body: bytes, content_type: str = "") -> ParsedRequest:
    """Raises ``InvalidJSON`` / ``InvalidField`` with OpenAI-style messages."""
    if content_type.startswith("multipart/form-data"):
        return ParsedRequest(multipart_model(content_type, body), False, None, family, body,
                             False)
    try:
        # orjson: ~10x faster than json here; also rejects invalid UTF-8, lone surrogates
        # and nesting past 1024 levels with a JSONDecodeError (a ValueError)
        data: Any = orjson.loads(body)
    except ValueError as exc:
        if not family.needs_json:
            return ParsedRequest(None, False, None, family, body, False)
        raise InvalidJSON(f"could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        if not family.needs_json:
            return ParsedRequest(None, False, None, family, body, False)
        raise InvalidJSON("the request body must be a JSON object")

    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidField(f"model must be a non-empty string, got {model!r:.60}", param="model")

    stream = data.get("stream", family.stream_default)
    if stream is None:
        stream = family.stream_default
    if not isinstance(stream, bool):
        raise InvalidField(f"stream must be a boolean, got {stream!r:.60}", param="stream")

    max_tokens = _max_tokens(data, family.max_tokens)
    choices = 1
    if family.choices_field is not None:
        n = data.get(family.choices_field)
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InvalidField(f"{family.choices_field} must be a positive integer, got "
                                   f"{n!r:.60}", param=family.choices_field)
            choices = n
    strip_usage = False
    if stream and family.asks_usage:
        options = data.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidField("stream_options must be an object", param="stream_options")
        if not (options or {}).get("include_usage"):
            data["stream_options"] = {**(options or {}), "include_usage": True}
            body = orjson.dumps(data)
            strip_usage = True
    return ParsedRequest(model, stream, max_tokens, family, body, strip_usage, choices)
