"""Reading what a response says it used, in every shape the supported engines send.

    OpenAI          usage.prompt_tokens / completion_tokens (streams: a ``choices: []`` chunk
                    per usage report; with ``n=2`` there may be several: they add up)
    Responses       usage.input_tokens / output_tokens, streamed inside ``response.completed``
    Anthropic       usage.input_tokens / output_tokens; streamed as ``message_start``
                    (``message.usage``) then ``message_delta`` (cumulative output): last wins
    llama.cpp       tokens_evaluated / tokens_predicted, else timings.prompt_n / predicted_n
    Ollama          prompt_eval_count / eval_count (the ``done`` line of an NDJSON stream)

``read_usage`` turns one decoded event or body into a ``UsageReport``; ``UsageTally`` adds the
reports of one response up. Which bytes are worth decoding at all is the route family's
``usage_marker`` (``proxy/families.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)  # not frozen: one per response, and a frozen init costs 3x
class UsageReport:
    prompt: int | None
    completion: int | None
    #: an OpenAI usage-only chunk: several of them add up (one per choice with ``n > 1``);
    #: any other report replaces the fields it carries (cumulative counts)
    additive: bool = False


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _first(obj: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = _count(obj.get(name))
        if value is not None:
            return value
    return None


def read_usage(payload: Any) -> UsageReport | None:
    """The usage one decoded event or body reports, or None when it reports none."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if type(usage) is dict:  # the OpenAI shape first: the common case, no helper calls
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:
            return UsageReport(prompt, completion, additive=payload.get("choices") == [])
    elif not isinstance(usage, dict):
        # Responses streams nest it in "response", Anthropic's message_start in "message"
        inner = payload.get("response") or payload.get("message")
        usage = inner.get("usage") if isinstance(inner, dict) else None
    if isinstance(usage, dict):
        prompt = _first(usage, "prompt_tokens", "input_tokens")
        completion = _first(usage, "completion_tokens", "output_tokens")
        if prompt is None and completion is None:
            total = _count(usage.get("total_tokens"))
            if total is None:
                return None
            prompt = total
        return UsageReport(prompt, completion, additive=payload.get("choices") == [])
    prompt = _first(payload, "tokens_evaluated", "prompt_eval_count")
    completion = _first(payload, "tokens_predicted", "eval_count")
    if prompt is None and completion is None:
        timings = payload.get("timings")
        if isinstance(timings, dict):
            prompt, completion = _first(timings, "prompt_n"), _first(timings, "predicted_n")
    if prompt is None and completion is None:
        return None
    return UsageReport(prompt, completion)


class UsageTally:
    """The usage of one response from its reports (see ``UsageReport.additive``)."""

    __slots__ = ("_completion", "_prompt", "_sum", "seen")

    def __init__(self) -> None:
        self._sum: list[int] | None = None
        self._prompt: int | None = None
        self._completion: int | None = None
        self.seen = False

    def add(self, report: UsageReport) -> None:
        self.seen = True
        if report.additive:
            if self._sum is None:
                self._sum = [0, 0]
            self._sum[0] += report.prompt or 0
            self._sum[1] += report.completion or 0
            return
        if report.prompt is not None:
            self._prompt = report.prompt
        if report.completion is not None:
            self._completion = report.completion

    @property
    def result(self) -> tuple[int, int] | None:
        """(prompt, completion), or None when no report went by."""
        if self._sum is not None:
            return self._sum[0], self._sum[1]
        if not self.seen:
            return None
        return self._prompt or 0, self._completion or 0


def usage_from_json(body: bytes) -> tuple[int, int] | None:
    """Usage of a whole JSON body (already known to carry a usage marker)."""
    try:
        report = read_usage(orjson.loads(body))
    except ValueError:
        return None
    if report is None:
        return None
    return report.prompt or 0, report.completion or 0
