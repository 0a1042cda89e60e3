"""The llamacpp experiment's figures (``loadtest/adaptive_engine.py``), without an engine.

The experiment itself runs the real llama-server (slow; ``tests/test_llama_server.py`` asserts
the same agreement on every slow run)."""

from __future__ import annotations

from loadtest.adaptive_engine import proxy_config, settled_cap, summary_lines


def test_the_settled_cap_is_the_median_after_the_settle_time() -> None:
    """Hazard: the start (cap 1, growing) or one probe taken for where the cap settled."""
    caps = [(0.0, 1), (1.0, 2), (2.0, 8), (11.0, 2), (12.0, 1), (13.0, 2), (14.0, None)]
    assert settled_cap(caps, 10.0) == 2
    assert settled_cap(caps, 100.0) is None


def test_summary_says_whether_the_sweep_and_the_cap_agree() -> None:
    run = {"slots": 2, "cap": 8, "clients": 6, "caps": [(0.0, 1), (2.0, 2), (4.0, 1)],
           "settled_cap": 1, "knee": 4, "agree": False, "lost": 0,
           "load": {"goodput_tokens_per_s": 60.0},
           "sweep": {"levels": [], "recommended_max_in_flight": 4, "stopped": "time limit",
                     "seconds": 1.0}}
    text = "\n".join(summary_lines(run))
    assert "changes 0s:1 2s:2 4s:1" in text and "DISAGREE" in text
    upstream = proxy_config()["upstreams"]["llama"]
    assert upstream["adaptive"] is True and upstream["engine"] == "auto"
