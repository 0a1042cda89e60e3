"""Reading what the proxy still holds and what its log says went wrong."""

from __future__ import annotations

from loadtest.soak_sampling import held_permits, log_errors


def test_held_permits_reads_every_group_and_the_queue() -> None:
    doc = {
        "queue": {"depth": 2},
        "models": {"m": {"in_flight": 1, "queued": 2}},
        "upstreams": {"up": {"in_flight": 0, "queued": 0}},
        "clients": {"c": {"in_flight": 1, "queued": 0}},
    }
    assert held_permits(doc) == {"queue": 2, "models.m.in_flight": 1, "models.m.queued": 2,
                                 "clients.c.in_flight": 1}
    assert held_permits({"queue": {"depth": 0}, "models": {"m": {"in_flight": 0}}}) == {}


def test_log_errors_counts_tracebacks_by_message_and_exception() -> None:
    log = (
        "2026-01-01 12:00:00,000 ERROR aiohttp.server: Error handling request\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: boom\n"
        "2026-01-01 12:00:01,000 INFO other: fine\n"
    )
    assert log_errors(log) == {"ERROR aiohttp.server: Error handling request -> "
                               "ValueError: boom": 1}
