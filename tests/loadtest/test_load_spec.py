"""A load run is always bounded and its mix has weight (loadtest.load_spec)."""

from __future__ import annotations

import pytest

from loadtest.load_spec import ClientClass, LoadSpec


@pytest.mark.parametrize(("spec", "message"), [
    (LoadSpec(), "--requests and/or --duration"),
    (LoadSpec(requests=1, rate=0.0), "--rate must be positive"),
    (LoadSpec(requests=1, clients=0), "--clients must be at least 1"),
    (LoadSpec(requests=1, mix=[ClientClass("a", "k", 0.0)]), "positive weight"),
    (LoadSpec(requests=1, mix=[]), "positive weight"),
])
def test_an_unbounded_or_empty_run_is_refused(spec: LoadSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec.validate()


def test_mode_follows_the_rate() -> None:
    LoadSpec(duration=1.0, clients=0, rate=5.0).validate()  # clients unused in an open loop
    assert LoadSpec(rate=5.0).mode == "open" and LoadSpec().mode == "closed"
