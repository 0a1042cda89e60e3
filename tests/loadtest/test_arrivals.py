"""Closed and open loop arrivals against the mock (loadtest.arrivals)."""

from __future__ import annotations

import math
import time

import aiohttp

from loadtest.arrivals import closed_loop, open_loop
from loadtest.load_request import LoadRun
from loadtest.load_spec import ClientClass, LoadSpec
from tests.loadtest.mock_support import MockFactory


def _started(spec: LoadSpec) -> LoadRun:
    run = LoadRun(spec)
    run.t0 = time.perf_counter()
    run.deadline = spec.duration if spec.duration is not None else math.inf
    return run


async def test_closed_loop_deals_classes_to_workers_by_weight(make_mock: MockFactory) -> None:
    """Each worker keeps one class; 3:1 over 4 workers is three of one and one of the other,
    so the mock never holds more than the 4 workers."""
    mock = await make_mock(ttft_s=0.01)
    spec = LoadSpec(base_url=mock.url + "/v1", clients=4, requests=40, stream=False,
                    mix=[ClientClass("a", "ka", 3.0), ClientClass("b", "kb", 1.0)])
    run = _started(spec)
    async with aiohttp.ClientSession() as session:
        await closed_loop(run, session)
    assert len(run.records) == 40 and run.ok == 40 and run.in_flight == 0
    assert {r.client for r in run.records} == {"a", "b"}
    assert mock.state.peak <= 4
    one = _started(LoadSpec(base_url=mock.url + "/v1", clients=1, requests=5, stream=False,
                            mix=[ClientClass("a", "ka"), ClientClass("b", "kb")]))
    async with aiohttp.ClientSession() as session:
        await closed_loop(one, session)
    assert {r.client for r in one.records} == {"a"}  # one worker: one class


async def test_open_loop_does_not_wait_for_answers(make_mock: MockFactory) -> None:
    """Arrivals keep their schedule whatever the server does: with answers slower than the
    gap between arrivals, several are in flight at once; none starts after the deadline."""
    mock = await make_mock(ttft_s=0.3)
    spec = LoadSpec(base_url=mock.url + "/v1", rate=40.0, duration=0.5, stream=False, seed=1)
    run = _started(spec)
    async with aiohttp.ClientSession() as session:
        await open_loop(run, session)
    assert len(run.records) >= 5 and run.in_flight == 0
    assert max(r.start for r in run.records) < 0.5
    assert mock.state.peak > 1
