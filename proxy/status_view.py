"""What a person reads in ``llm-throttle status``: rate buckets, why a model waits, a live view.

All of it is computed from the status document alone (``GET /throttle/status`` or the Redis
store read directly), so it works the same against a proxy and against ``--redis``.

"Why is my request waiting?" A request waits while any resource it needs is at its cap or a
bucket it is charged to is empty. The document does not say which upstreams serve which model,
so the reasons for a model with waiters are: the model's own cap or buckets, then every other
resource that is at its cap *with waiters of its own* (a waiter counts as queued on each
resource it needs), then every empty client bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_GROUP_KIND = {"models": "model", "upstreams": "upstream", "gpus": "gpu", "clients": "client",
               "attributed": "attr"}
#: below one token a bucket refuses even the smallest request
_EMPTY = 1.0


def refill_s(bucket: Mapping[str, Any]) -> float:
    """Seconds until the bucket is full again (0 when full, inf when it never refills)."""
    missing = max(0.0, float(bucket.get("capacity", 0)) - float(bucket.get("level", 0)))
    rate = float(bucket.get("rate_per_s", 0))
    if not missing:
        return 0.0
    return missing / rate if rate > 0 else float("inf")


def _seconds(value: float) -> str:
    if value == float("inf"):
        return "never"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}min"


def render_buckets(doc: Mapping[str, Any]) -> list[str]:
    buckets = doc.get("buckets") or {}
    if not buckets:
        return []
    lines = ["", f"{'BUCKET':<40} {'LEVEL':>12} {'CAPACITY':>10} {'PER S':>9}  FULL IN"]
    for name, b in buckets.items():
        lines.append(f"{name:<40} {b.get('level', 0):>12.1f} {b.get('capacity', 0):>10.1f} "
                     f"{b.get('rate_per_s', 0):>9.2f}  {_seconds(refill_s(b))}")
    return lines


def _at_cap(entry: Mapping[str, Any]) -> bool:
    cap = entry.get("cap")
    return cap is not None and entry.get("in_flight", 0) >= cap


def blocked_reasons(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per model with waiters: what holds them back (see the module docstring)."""
    buckets: Mapping[str, Mapping[str, Any]] = doc.get("buckets") or {}

    def empty_bucket(name: str) -> str | None:
        b = buckets.get(name)
        if b is None or b.get("level", 0) >= _EMPTY:
            return None
        rate = float(b.get("rate_per_s", 0))
        wait = (_EMPTY - float(b.get("level", 0))) / rate if rate > 0 else float("inf")
        return f"bucket {name} empty ({b.get('level', 0):.1f}/{b.get('capacity', 0):g}, " \
               f"next token in {_seconds(wait)})"

    shared: list[str] = []
    for group, kind in _GROUP_KIND.items():
        if group == "models":
            continue
        for name, entry in (doc.get(group) or {}).items():
            if entry.get("queued", 0) > 0 and _at_cap(entry):
                shared.append(f"{kind}:{name} at cap ({entry['in_flight']}/{entry['cap']})")
    shared += [r for name in buckets if name.split(":")[1:2] == ["client"]
               if (r := empty_bucket(name))]
    out: dict[str, list[str]] = {}
    for model, entry in (doc.get("models") or {}).items():
        if not entry.get("queued", 0):
            continue
        reasons = []
        if _at_cap(entry):
            reasons.append(f"model at cap ({entry['in_flight']}/{entry['cap']})")
        reasons += [r for limit in ("rpm", "tpm") if (r := empty_bucket(f"{limit}:model:{model}"))]
        out[model] = reasons + shared or ["waiting for its turn (fair queue)"]
    return out


def render_blocked(doc: Mapping[str, Any]) -> list[str]:
    reasons = blocked_reasons(doc)
    if not reasons:
        return []
    lines = ["", "WAITING"]
    for model, why in reasons.items():
        queued = (doc.get("models") or {}).get(model, {}).get("queued", 0)
        lines.append(f"model:{model} ({queued} queued): " + "; ".join(why))
    return lines


def _bar(value: float, full: float | None, width: int) -> str:
    if not full:
        return "[" + " " * width + "]"
    filled = min(width, round(width * value / full))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render_watch(doc: Mapping[str, Any], width: int = 30) -> str:
    """The live view of ``status --watch``: in flight against cap as bars, queue, buckets,
    rates, and why models wait."""
    queue = doc.get("queue") or {}
    head = (f"store {doc.get('store')}  hosts {doc.get('hosts', 1)}  "
            f"degraded {'YES' if doc.get('degraded') else 'no'}  "
            f"queued {queue.get('depth', 0)}/{queue.get('max_depth', '-')}  "
            f"oldest {queue.get('oldest_wait_s', 0):.1f}s")
    lines = [head, ""]
    for group, kind in _GROUP_KIND.items():
        for name, entry in (doc.get(group) or {}).items():
            cap = entry.get("cap")
            used = entry.get("in_flight", 0)
            rate = ""
            if kind == "model":
                rate = (f"  {entry.get('admitted_per_s', 0):.2f}/s in, "
                        f"{entry.get('rejected_per_s', 0):.2f}/s refused")
            lines.append(f"{kind + ':' + name:<28} {_bar(used, cap, width)} "
                         f"{used:>4}/{'-' if cap is None else cap:<4} "
                         f"queued {entry.get('queued', 0):<4}{rate}")
    for name, b in (doc.get("buckets") or {}).items():
        lines.append(f"{name:<28} {_bar(b.get('level', 0), b.get('capacity'), width)} "
                     f"{b.get('level', 0):.0f}/{b.get('capacity', 0):g}  "
                     f"full in {_seconds(refill_s(b))}")
    lines += render_blocked(doc)
    return "\n".join(lines)
