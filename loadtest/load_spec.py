"""What a load run sends, how fast and for how long (``LoadSpec``), and who sends it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientClass:
    """One kind of caller: its API key picks its priority/limits at the proxy."""

    name: str
    api_key: str
    weight: float = 1.0


@dataclass
class LoadSpec:
    """What to send, how fast, and for how long."""

    base_url: str = "http://127.0.0.1:8000/v1"
    #: when given, requests go round-robin to these (e.g. several proxy replicas), not base_url
    base_urls: list[str] = field(default_factory=list)
    model: str = "mock-model"
    #: closed loop: this many back-to-back workers (ignored when ``rate`` is set)
    clients: int = 4
    #: open loop: Poisson arrivals per second
    rate: float | None = None
    #: stop after this many requests and/or seconds (at least one; both if given)
    requests: int | None = None
    duration: float | None = None
    stream: bool = True
    max_tokens: int | None = 16
    prompt_chars: int = 200
    mix: list[ClientClass] = field(default_factory=lambda: [ClientClass("default", "x")])
    timeout: float = 60.0
    upstream_metrics: list[str] = field(default_factory=list)
    proxy_status: str | None = None
    sample_interval: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    label: str = ""
    progress: bool = False

    def validate(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("a run needs --requests and/or --duration")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.rate is None and self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if not self.mix or sum(c.weight for c in self.mix) <= 0:
            raise ValueError("the client mix needs a positive weight")

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"
