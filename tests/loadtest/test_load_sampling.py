"""The load run's time series and progress line (loadtest.load_sampling)."""

from __future__ import annotations

import time

import aiohttp

from loadtest.load_request import LoadRun
from loadtest.load_result import RequestRecord
from loadtest.load_sampling import progress_line, take_sample
from loadtest.load_spec import LoadSpec
from tests.loadtest.mock_support import MockFactory


def test_progress_line_shows_the_larger_fraction_done() -> None:
    run = LoadRun(LoadSpec(requests=10, duration=100.0))
    run.t0 = time.perf_counter()
    run.records = [RequestRecord(0.0, "a", ok=True) for _ in range(5)]
    run.ok = 4
    line = progress_line(run, width=10)
    assert line.startswith("\r[#####.....] 5 done 4 ok 1 err 0 in flight")


async def test_a_sample_reads_the_upstream_gauges(make_mock: MockFactory) -> None:
    mock = await make_mock()
    spec = LoadSpec(requests=1, upstream_metrics=[mock.url + "/metrics", "http://127.0.0.1:9/"],
                    proxy_status="http://127.0.0.1:9/throttle/status")
    run = LoadRun(spec)
    run.t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        point = await take_sample(run, session)
    assert point["completed"] == 0 and point["in_flight"] == 0
    # the unreachable one is left out, not counted as zero
    assert point["upstream_in_flight"] == 0.0
    # an unreachable proxy status: the fields are absent, not invented
    assert point["queue_depth"] is None and point["proxy_in_flight"] is None
