"""Fair share of the queue: weighted virtual token counters between flows and between classes.

Theory of operation
-------------------
A *flow* is who is served: the client, or the attribution value under a client
(``Demand.flow``), so agent profiles sharing one key share fairly. A *class* is the priority
class (interactive, batch). Waiters are kept in *units*: one FIFO per (class, flow, needs),
where "needs" is every resource and bucket the demand could touch. All waiters of a unit need
the same things, so when a unit's head cannot be served, nobody behind it in the unit could be
served without passing it: a release looks only at unit heads, never at the whole queue.

Who goes next (``Fairness.TOKENS``, after the Virtual Token Counter of Sheng et al., "Fairness
in Serving Large Language Models", OSDI 2024):

1. Each backlogged class has a counter: tokens served / class weight
   (``queue.class_weights``, default interactive 9, batch 1). The class with the smallest
   counter goes next; when one class is idle the other takes everything (work-conserving).
2. Within the class, each flow has a counter: tokens served / flow weight
   (``clients.<name>.weight``). The unit whose flow has the smallest counter goes next; ties go
   to the oldest head.
3. A grant charges its reservation (prompt estimate + max tokens) to both counters at once;
   the release corrects them with the real usage (``Grant.used``), so a client sending long
   requests is charged for them, not for the number of requests.
4. No banked credit: a flow (or class) that was idle is lifted to the class's *virtual time*,
   the counter of the flow last served from the queue (the smallest backlogged one then), when
   it queues again, or when it is served at once with nobody of it waiting (charged from a
   counter lagging virtual time, those grants would be wiped by the lift at its first queued
   waiter). Lifting happens only on the way in, so an idle flow costs nothing.
5. No barging, no deadlock: a head that cannot be served blocks what it lacks for every unit
   after it in this round (its turn for that resource is kept), and its unit sits the round
   out; units needing none of it go ahead. Nothing is held while waiting.

``Fairness.REQUESTS`` is the same with every request costing 1. ``Fairness.FIFO`` is the old
order: strict priority, then arrival (flows and weights are ignored).

``Fairness.ATTAINED`` is least attained service between flows (after Autellix's program-level
scheduling, Luo et al. 2025): the same counters, but a flow is never lifted -- its counter is
the tokens it was served since it was first seen, so the flow served least goes next. Meant
for flows that are programs (``attribution.header`` naming a task): an agent task's later
calls wait behind the first calls of tasks that have had less, so tasks finish as wholes
sooner instead of all advancing together. Against starvation, a head queued ``starvation_s``
or longer goes first, oldest first. Idle flows are remembered (up to ``MAX_IDLE_FLOWS``, then
all idle ones are forgotten at once and start again from 0).

Cost: a round costs O(units + grants) (units: distinct flows x routes, not waiters).
The Redis store runs the same rules in ``lua/lib.lua``; one contract test covers both.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from .base import DEFAULT_CLASS_WEIGHTS, Demand, Fairness, FlowState, Priority

#: flows a snapshot reports (the most queued, then the most served)
MAX_REPORTED_FLOWS = 100
#: flows remembered while idle (those ahead of virtual time); the oldest are forgotten beyond
MAX_IDLE_FLOWS = 4096


class Queued(Protocol):
    """What the queue needs of a waiter."""

    demand: Demand
    seq: int
    gone: bool
    #: when it joined the queue (the store's clock, seconds)
    enqueued_at: float


W = TypeVar("W", bound=Queued)


def needs_of(demand: Demand) -> tuple[str, ...]:
    """Every resource and bucket a demand could touch, in a stable order."""
    seen = dict.fromkeys(demand.resources)
    for option in demand.options:
        seen.update(dict.fromkeys(option.resources))
    seen.update(dict.fromkeys(c.bucket for c in demand.charges))
    return tuple(seen)


def flow_states(counters: Mapping[tuple[int, str], float], waiting: Mapping[tuple[int, str], int],
                served: Mapping[tuple[int, str], float]) -> dict[str, FlowState]:
    """The busiest flows as "<class>:<flow>" -> state, at most MAX_REPORTED_FLOWS."""
    keys = {k for k in (*counters, *waiting, *served) if k[1]}
    busiest = sorted(keys, key=lambda k: (-waiting.get(k, 0), -served.get(k, 0.0)))
    return {
        f"{Priority(p).name.lower()}:{flow}": FlowState(
            waiting.get((p, flow), 0), round(counters.get((p, flow), 0.0), 3),
            round(served.get((p, flow), 0.0), 1))
        for p, flow in busiest[:MAX_REPORTED_FLOWS]
    }


def _class_weights(given: Mapping[Priority, float] | None) -> dict[Priority, float]:
    """Every class's weight: the given ones over the defaults."""
    weights = dict(DEFAULT_CLASS_WEIGHTS)
    weights.update(given or {})
    return {p: float(weights.get(p, 1.0)) for p in Priority}


def cost_of(demand: Demand, mode: Fairness) -> float:
    return demand.cost if mode in (Fairness.TOKENS, Fairness.ATTAINED) else 1.0


class _Unit(Generic[W]):
    __slots__ = ("flow", "key", "live", "priority", "waiters")

    def __init__(self, key: tuple[int, str, tuple[str, ...]], priority: Priority, flow: str):
        self.key = key
        self.priority = priority
        self.flow = flow
        self.waiters: deque[W] = deque()
        self.live = 0  # waiters not gone


class FairQueue(Generic[W]):
    """Units of waiters and the counters that order them (the memory store's queue)."""

    def __init__(self, mode: Fairness = Fairness.TOKENS,
                 class_weights: Mapping[Priority, float] | None = None):
        self.mode = mode
        self.class_weights = _class_weights(class_weights)
        self._units: dict[tuple[int, str, tuple[str, ...]], _Unit[W]] = {}
        #: (class, flow) -> counter; (class, flow) -> waiters queued
        self.counters: dict[tuple[int, str], float] = {}
        self._waiting: dict[tuple[int, str], int] = {}
        self.class_counters = [0.0 for _ in Priority]
        self._class_waiting = [0 for _ in Priority]
        #: per class: the counter of the flow last served from the queue
        self.vtime = [0.0 for _ in Priority]
        self._class_vtime = 0.0
        #: tokens (or requests) served per flow since start, for status and metrics
        self.served: dict[tuple[int, str], float] = {}

    def reconfigure(self, mode: Fairness, class_weights: Mapping[Priority, float]) -> None:
        """A reload: the new weights, and the new order unless it is to or from ``fifo`` (whose
        units have no flows: the waiters queued now could not be found again)."""
        if (mode is Fairness.FIFO) == (self.mode is Fairness.FIFO):
            self.mode = mode
        self.class_weights = _class_weights(class_weights)

    def _flow_of(self, demand: Demand) -> str:
        return "" if self.mode is Fairness.FIFO else demand.flow

    # -- in and out ----------------------------------------------------------------------------

    def push(self, waiter: W) -> None:
        demand = waiter.demand
        flow = self._flow_of(demand)
        key = (int(demand.priority), flow, needs_of(demand))
        unit = self._units.get(key)
        if unit is None:
            unit = self._units[key] = _Unit[W](key, demand.priority, flow)
        unit.waiters.append(waiter)
        unit.live += 1
        self._join(demand.priority, flow)

    def _join(self, priority: Priority, flow: str) -> None:
        """Count a waiter in; a flow or class coming back from idle is lifted (no banked credit)."""
        fkey = (int(priority), flow)
        count = self._waiting.get(fkey, 0)
        if count == 0 and self.mode is not Fairness.ATTAINED:  # attained: credit is the point
            self.counters[fkey] = max(self.counters.get(fkey, 0.0), self.vtime[priority])
        self._waiting[fkey] = count + 1
        if self._class_waiting[priority] == 0:
            self.class_counters[priority] = max(self.class_counters[priority], self._class_vtime)
        self._class_waiting[priority] += 1

    def _leave(self, priority: Priority, flow: str) -> None:
        fkey = (int(priority), flow)
        left = self._waiting[fkey] - 1
        if left:
            self._waiting[fkey] = left
        else:
            del self._waiting[fkey]
            self._forget_if_idle(fkey)
        self._class_waiting[priority] -= 1

    def _forget_if_idle(self, fkey: tuple[int, str]) -> None:
        # A flow at or behind virtual time would be lifted anyway: nothing to remember (in
        # attained order the counter is the flow's history: kept, within the bound).
        if self.mode is not Fairness.ATTAINED and self.counters.get(fkey, 0.0) <= self.vtime[fkey[0]]:
            self.counters.pop(fkey, None)
        elif len(self.counters) > MAX_IDLE_FLOWS + len(self._waiting):
            for old in [k for k in self.counters if k not in self._waiting]:
                del self.counters[old]

    def remove(self, waiter: W) -> None:
        """A waiter gave up (timed out, cancelled): count it out; its entry is skipped later."""
        if waiter.gone:
            return
        waiter.gone = True
        demand = waiter.demand
        flow = self._flow_of(demand)
        unit = self._units.get((int(demand.priority), flow, needs_of(demand)))
        if unit is not None:
            unit.live -= 1
            if unit.live == 0:
                del self._units[unit.key]
        self._leave(demand.priority, flow)

    def __len__(self) -> int:
        return sum(self._class_waiting)

    def flow_states(self) -> dict[str, FlowState]:
        return flow_states(self.counters, self._waiting, self.served)

    def waiters(self) -> Iterable[W]:
        for unit in self._units.values():
            for waiter in unit.waiters:
                if not waiter.gone:
                    yield waiter

    # -- charging ----------------------------------------------------------------------------------

    def charge(self, demand: Demand, cost: float, queued: bool) -> None:
        """A grant: charge its flow and class (``queued``: served from the queue)."""
        if self.mode is Fairness.FIFO:
            return
        priority = demand.priority
        fkey = (int(priority), demand.flow)
        counter = self.counters.get(fkey, 0.0)
        class_counter = self.class_counters[priority]
        # Served at once with nobody of its flow (class) waiting: it comes back from idle, so
        # it starts at virtual time, as joining the queue would lift it. A counter kept from
        # before may lag virtual time; charged from there, the lift at its first queued waiter
        # would wipe these grants (free slots: banked credit).
        if fkey not in self._waiting and self.mode is not Fairness.ATTAINED:
            counter = max(counter, self.vtime[priority])
        if not self._class_waiting[priority]:
            class_counter = max(class_counter, self._class_vtime)
        if queued:
            self.vtime[priority] = counter
            self._class_vtime = class_counter
        self.counters[fkey] = counter + cost / max(demand.weight, 1e-9)
        self.class_counters[priority] = class_counter + cost / self.class_weights[priority]
        self.served[fkey] = self.served.get(fkey, 0.0) + cost
        if not queued and fkey not in self._waiting:
            self._forget_if_idle(fkey)

    def settle(self, priority: Priority, flow: str, weight: float, delta: float) -> None:
        """The real usage differs from the reservation by ``delta`` tokens."""
        if self.mode not in (Fairness.TOKENS, Fairness.ATTAINED) or not delta:
            return
        fkey = (int(priority), flow)
        if fkey in self.counters:
            self.counters[fkey] += delta / max(weight, 1e-9)
        self.class_counters[priority] += delta / self.class_weights[priority]
        self.served[fkey] = max(0.0, self.served.get(fkey, 0.0) + delta)
        if len(self.served) > MAX_IDLE_FLOWS:
            self.served.clear()

    # -- serving -----------------------------------------------------------------------------------

    def serve(self, attempt: Callable[[W], list[str] | None], now: float = 0.0,
              starvation_s: float | None = None) -> None:
        """One round: offer unit heads in fair order to ``attempt``.

        ``attempt(waiter)`` returns None when it granted the waiter (it leaves the queue), or
        what the waiter lacks: its unit then sits out the rest of the round. ``now`` and
        ``starvation_s``: in attained order, heads queued since ``now - starvation_s`` or
        before go first.
        """
        if not self._units:
            return
        by_class: list[list[_Unit[W]]] = [[] for _ in Priority]
        for unit in self._units.values():
            by_class[unit.priority].append(unit)
        fifo = self.mode is Fairness.FIFO
        order = self._unit_order
        if self.mode is Fairness.ATTAINED and starvation_s is not None:
            order = self._attained_order(now - starvation_s)
        while True:
            live = [p for p in Priority if by_class[p]]
            if not live:
                return
            if fifo:
                priority = live[0]
            else:
                priority = min(live, key=lambda p: (self.class_counters[p], p))
            units = by_class[priority]
            unit = min(units, key=order)
            head = unit.waiters[0]
            if head.gone:
                unit.waiters.popleft()
                if not unit.waiters:
                    units.remove(unit)
                continue
            if attempt(head) is not None:
                units.remove(unit)  # holds its turn: nobody behind it in the unit passes
                continue
            unit.waiters.popleft()
            head.gone = True
            unit.live -= 1
            if unit.live == 0:
                self._units.pop(unit.key, None)
                units.remove(unit)
            self._leave(unit.priority, unit.flow)

    def _unit_order(self, unit: _Unit[W]) -> tuple[float, int]:
        """(counter, arrival): gone heads first (to drop them), then the smallest counter;
        in fifo order, arrival alone."""
        head = unit.waiters[0]
        if self.mode is Fairness.FIFO:
            return (0.0, -1 if head.gone else head.seq)
        counter = self.counters.get((int(unit.priority), unit.flow), 0.0)
        return (-math.inf if head.gone else counter, head.seq)

    def _attained_order(self, starved: float) -> Callable[[_Unit[W]], tuple[float, int]]:
        """The same, but heads queued at ``starved`` or before come right after the gone ones,
        oldest first (a counter of -1e308: below every real counter, above -inf)."""
        def order(unit: _Unit[W]) -> tuple[float, int]:
            head = unit.waiters[0]
            if not head.gone and head.enqueued_at <= starved:
                return (-1e308, head.seq)
            return self._unit_order(unit)
        return order
