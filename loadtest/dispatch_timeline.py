"""Where a ``dispatch-bench`` run lost GPU time: the idle spans and each task's life.

The bench samples the boards every quarter second and the upstream records every request it
worked on; from those two this module says, per task, when its worker was spawned, when it
first reached the GPU and when the task was done (so the start-up latency of a worker is
visible), and lists the spans in which the GPU had idle slots while tasks were ready, each with
its idle slot-seconds / cap (the same unit as the run's "GPU idle while tasks ready"), so the
idle time can be put down to the start, a hold, a freed slot nobody filled, or the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True, slots=True)
class TaskLife:
    #: seconds since the start of the run; None: not seen
    spawned_s: float | None
    first_request_s: float | None
    done_s: float | None

    @property
    def start_latency_s(self) -> float | None:
        """Spawn to first request: the worker's own start-up (plus the sampling's 0.25 s)."""
        if self.spawned_s is None or self.first_request_s is None:
            return None
        return self.first_request_s - self.spawned_s


def task_lives(samples: Sequence[tuple[float, Mapping[str, str]]],
               requests: Sequence[tuple[float, float, str, str]],
               started: float) -> dict[str, TaskLife]:
    """``samples``: (seconds since start, task -> status); ``requests``: the upstream's
    (began, ended, task, kind) in its own clock, which ``started`` is on."""
    spawned: dict[str, float] = {}
    done: dict[str, float] = {}
    for t, statuses in samples:
        for task, status in statuses.items():
            if status != "ready" and status != "todo" and task not in spawned:
                spawned[task] = t
            if status == "done" and task not in done:
                done[task] = t
    first: dict[str, float] = {}
    for began, _, task, _ in requests:
        if task != "-":
            first[task] = min(first.get(task, began - started), began - started)
    tasks = set(spawned) | set(first) | {task for _, s in samples for task in s}
    return {task: TaskLife(spawned.get(task), first.get(task), done.get(task))
            for task in sorted(tasks)}


def idle_spans(timeline: Sequence[Sequence[float]], cap: int,
               min_slot_s: float = 0.5) -> list[list[float]]:
    """Spans where some task was ready and the GPU had a free slot, from the bench's samples
    (rows of [seconds, GPU working, ready, running, queue]); each [start, end, idle], idle in
    seconds of the whole GPU (slot-seconds / cap). Spans under ``min_slot_s`` are left out."""
    spans: list[list[float]] = []
    current: list[float] | None = None
    for row, nxt in pairwise(timeline):
        t, working, ready = row[0], row[1], row[2]
        idle = (nxt[0] - t) * max(cap - working, 0) / cap if ready > 0 else 0.0
        if idle > 0:
            if current is None:
                current = [t, nxt[0], 0.0]
            current[1] = nxt[0]
            current[2] += idle
        elif current is not None:
            spans.append(current)
            current = None
    if current is not None:
        spans.append(current)
    return [[round(a, 2), round(b, 2), round(idle, 2)] for a, b, idle in spans
            if idle * cap >= min_slot_s]
