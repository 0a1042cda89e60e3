"""The reuse policy of upstream pools (``proxy/upstream_reuse.py``), without sockets."""

from __future__ import annotations

from proxy.upstream_framing import Framing
from proxy.upstream_reuse import PROBE_EVERY, QUICK_CLOSE_S, Reuse, ReusePolicy


def test_a_keep_alive_timeout_is_not_taken_for_closing_after_answers():
    """Hazard: an upstream closing an idle connection at its keep-alive timeout (seconds
    later) marked as one that closes at once, so nothing was pooled any more."""
    policy = ReusePolicy()
    assert not policy.closed_by_upstream(Framing.CHUNKED, QUICK_CLOSE_S + 3.0)
    assert policy.after_exchange(Framing.CHUNKED) is Reuse.POOL


def test_a_quick_close_stops_pooling_that_framing_only_and_probes_now_and_then():
    """Hazard: pooling on after the upstream was seen closing right after a stream (the next
    POST races the close and gets a 502); or marking every framing for one."""
    policy = ReusePolicy()
    assert policy.closed_by_upstream(Framing.CHUNKED, 0.001)
    assert not policy.closed_by_upstream(Framing.CHUNKED, 0.001)  # marked once
    assert policy.after_exchange(Framing.LENGTH) is Reuse.POOL
    decisions = [policy.after_exchange(Framing.CHUNKED) for _ in range(2 * PROBE_EVERY)]
    assert decisions.count(Reuse.PROBE) == 2
    assert decisions.count(Reuse.CLOSE) == 2 * PROBE_EVERY - 2
    assert policy.marked == {Framing.CHUNKED}
    policy.probe_survived(Framing.CHUNKED)
    assert policy.marked == frozenset()
    assert policy.after_exchange(Framing.CHUNKED) is Reuse.POOL
