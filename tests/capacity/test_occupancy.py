"""The adaptive cap reading the engine's occupancy (slots, full, others' share): injected clock.

``occupied_run`` is the mock's engine queue (``max_running``) in closed form, as
``test_controller.queue_run``, with our load either filling the cap (a closed loop) or
``load`` requests at a time (an open loop that does not fill it), and the engine's counts
reported the vLLM way (running + waiting) or the llama.cpp way (total slots too).
"""

from __future__ import annotations

import pytest

from proxy.capacity.controller import AdaptiveCap, ControllerSettings, Reason
from proxy.capacity.engines import Engine as EngineKind
from proxy.capacity.engines import EngineSignals
from proxy.capacity.occupancy import Occupancy
from proxy.capacity.signals import Outcome, make_sample

from .test_controller import Clock, finish_round


def make(clock: Clock, **kw: float) -> AdaptiveCap:
    settings = ControllerSettings(**{"floor": 1, "ceiling": 64,  # type: ignore[arg-type]
                                     "probe_interval_s": 1e9, **kw})
    return AdaptiveCap(settings, clock)


def occupied_run(ctrl: AdaptiveCap, clock: Clock, seconds: float, other: int = 0,
                 slots: int = 8, load: int | None = None, poll_s: float = 2.0,
                 kind: EngineKind = EngineKind.VLLM) -> list[tuple[float, int]]:
    """At most ``slots`` run at once at full speed; the rest (ours and ``other`` tenant
    requests alike) wait one service time before their first token. Returns (time, cap)."""
    end, next_poll, trace = clock.t + seconds, clock.t, []
    while clock.t < end:
        n = ctrl.cap if load is None else min(load, ctrl.cap)
        start = clock.t
        for _ in range(n):
            ctrl.started()
        waiting = max(0, n + other - slots)
        if clock.t >= next_poll:
            ctrl.polling()
            ctrl.set_engine(EngineSignals(
                kind, clock.t, waiting=waiting, running=min(n + other, slots),
                slots_total=slots if kind is EngineKind.LLAMACPP else None))
            next_poll = clock.t + poll_s
        finish_round(ctrl, clock, start, n, waiting, other)
        trace.append((clock.t, ctrl.cap))
    return trace


def test_a_full_engine_of_8_slots_under_a_cap_of_8_never_sees_a_try_at_9():
    """Hazard (the other-tenant benchmark, issue 13): vLLM reports no slot count, and the cap
    kept trying 9 on the 8 slots (each try made a ninth request wait for a slot: 14% of ours
    waited, engine TTFT p99 99 ms where a cap of 8 gives 21). One full reading (8 running,
    1 waiting) teaches the count; after that the cap holds at 8."""
    clock = Clock()
    ctrl = make(clock)
    occupied_run(ctrl, clock, 40)
    assert ctrl.occupancy.slots(clock.t) == 8
    later = [cap for _, cap in occupied_run(ctrl, clock, 90)]
    assert max(later) == 8 and min(later) >= 7, sorted(set(later))
    assert ctrl.status()["engine_slots"] == 8
    assert (ctrl.growth_blocked() or "").startswith("engine full")


def test_a_tenant_holding_4_of_8_slots_keeps_the_cap_at_4_and_it_grows_back_when_it_leaves():
    """Hazard: with the tenant's 4 in the 8 slots the cap kept trying 5 (one of ours waiting
    for a slot each time); and a cap that never grows again once the tenant is gone."""
    clock = Clock()
    ctrl = make(clock)
    occupied_run(ctrl, clock, 40)
    trace = occupied_run(ctrl, clock, 90, other=4)
    late = [cap for t, cap in trace if t - trace[0][0] > 15]
    assert max(late) == 4 and min(late) >= 3, sorted(set(late))
    trace = occupied_run(ctrl, clock, 60, other=0)
    back = next(t for t, cap in trace if cap == 8) - trace[0][0]
    assert back < 40, back
    assert max(cap for _, cap in trace) == 8


@pytest.mark.parametrize("kind", [EngineKind.VLLM, EngineKind.LLAMACPP])
def test_open_loop_others_share_lowers_a_cap_our_load_does_not_fill(kind: EngineKind):
    """Hazard (the open-loop variant, ``--rate 25``): our load (2 at a time) never filled the
    cap of 8, so neither the engine-queue rule nor the latency moved it when a tenant took 4
    of the 8 slots; our next burst would meet a full engine and wait there. The engine's
    counts less ours say the others hold 4: the cap goes to 4."""
    clock = Clock()
    ctrl = make(clock)
    occupied_run(ctrl, clock, 40, kind=kind)  # a closed loop first: 8, the count known
    assert ctrl.cap == 8
    occupied_run(ctrl, clock, 20, load=2, kind=kind)
    assert ctrl.cap == 8  # nobody else: our small load leaves the cap alone
    trace = occupied_run(ctrl, clock, 30, other=4, load=2, kind=kind)
    assert ctrl.cap == 4, sorted({c for _, c in trace})
    assert ctrl.last_change.reason is Reason.OTHERS


def test_one_noisy_reading_does_not_cut_the_cap():
    """Hazard: one reading that counts a request the proxy already closed as someone else's
    (or a tenant's one-off request) cutting the cap: others' share needs two readings."""
    clock = Clock()
    ctrl = make(clock)
    occupied_run(ctrl, clock, 40)
    assert ctrl.cap == 8
    ctrl.polling()
    ctrl.set_engine(EngineSignals(EngineKind.VLLM, clock.t, waiting=4, running=8))
    assert ctrl.cap == 8  # one reading of 12 at the engine, 8 of them ours: not yet
    occupied_run(ctrl, clock, 10, load=2)
    assert ctrl.cap == 8


def test_the_learnt_slot_count_follows_a_bigger_or_smaller_engine():
    """Hazard: a count learnt on a small engine pinning the cap after the engine got bigger
    (it runs more with nothing waiting), or never lowering after it got smaller."""
    occ = Occupancy(relearn_s=60.0)

    def read(at: float, running: int, waiting: int) -> None:
        occ.observe(EngineSignals(EngineKind.VLLM, at, waiting=waiting, running=running), 0)

    read(0.0, 8, 2)
    assert occ.slots(0.0) == 8
    read(1.0, 7, 1)  # one full reading below the count: a request just ended, not smaller
    assert occ.slots(1.0) == 8
    read(2.0, 12, 0)
    assert occ.slots(2.0) is None  # ran 12 with nothing waiting: bigger than 8
    read(3.0, 12, 3)
    assert occ.slots(3.0) == 12
    for t in (4.0, 5.0, 6.0):
        read(t, 6, 4)
    assert occ.slots(6.0) == 6
    assert occ.slots(70.0) is None  # unconfirmed for relearn_s: forgotten


def test_latency_only_mode_is_unchanged_without_engine_counts():
    """Hazard: the occupancy rules blocking growth where the engine reports nothing (engine:
    none, Ollama): the cap must still climb on latency alone."""
    clock = Clock()
    ctrl = make(clock)
    ctrl.set_engine(EngineSignals(EngineKind.OLLAMA, clock.t, loaded_models=("m",)))
    caps = [cap for _, cap in _latency_run(ctrl, clock, 30)]
    assert max(caps) >= 8 and ctrl.growth_blocked() is None


def _latency_run(ctrl: AdaptiveCap, clock: Clock, seconds: float) -> list[tuple[float, int]]:
    end, trace = clock.t + seconds, []
    while clock.t < end:
        if clock.t - ctrl.engine.fetched_at > 1.0:  # type: ignore[union-attr]
            ctrl.set_engine(EngineSignals(EngineKind.OLLAMA, clock.t, loaded_models=("m",)))
        start, n = clock.t, ctrl.cap
        for _ in range(n):
            ctrl.started()
        clock.t += 0.095
        for _ in range(n):
            ctrl.finished(make_sample(Outcome.OK, start, clock.t, start + 0.02, 20, 16))
        clock.t += 0.001
        trace.append((clock.t, ctrl.cap))
    return trace
