"""Configuration: every problem reported with its key path; the CLI refuses bad files."""

from __future__ import annotations

import pytest

from proxy.cli import main
from proxy.config import ConfigError, load_config, parse_config, quick_config

GOOD = """
listen: 127.0.0.1:8080
store: memory
gpus:
  gpu0: {max_in_flight: 6}
upstreams:
  vllm-a: {url: "http://127.0.0.1:8000", api_key: "${VLLM_KEY}", gpus: [gpu0], max_in_flight: 4}
  vllm-b: {url: "http://127.0.0.1:8001/", gpus: [gpu0], max_in_flight: 4}
models:
  qwen2.5-7b:
    upstreams: [vllm-a, vllm-b]
    max_in_flight: 8
    requests_per_minute: 600
    tokens_per_minute: 120000
queue: {max_depth: 1000, max_wait_s: 120}
clients:
  hermes-workers:
    {key: "${HERMES_KEY}", priority: batch, max_in_flight: 4, tokens_per_minute: 60000}
  chat-ui: {key: "${CHAT_KEY:-chat-default}", priority: interactive}
"""


def test_the_documented_example_loads(tmp_path):
    path = tmp_path / "throttle.yaml"
    path.write_text(GOOD)
    config = load_config(path, environ={"VLLM_KEY": "vk", "HERMES_KEY": "hk"})
    assert config.upstreams["vllm-a"].api_key == "vk"
    assert config.upstreams["vllm-b"].url == "http://127.0.0.1:8001"
    assert config.clients["chat-ui"].key == "chat-default"
    assert config.models["qwen2.5-7b"].upstreams == ("vllm-a", "vllm-b")


def test_every_problem_is_reported_with_its_path():
    data = {
        "listen": "nonsense",
        "upstreams": {"a": {"url": "ftp://x", "gpus": ["nope"], "max_in_flight": "many"}},
        "models": {"m": {"upstreams": ["a", "b"], "max_in_flight": 0, "typo_key": 1}},
        "queue": {"max_wait_s": -1},
        "clients": {"c": {"priority": "vip"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    problems = "\n".join(info.value.problems)
    for expected in ("listen:", "upstreams.a.url:", "upstreams.a.gpus[0]: unknown gpu 'nope'",
                     "upstreams.a.max_in_flight: expected an integer",
                     "models.m.upstreams[1]: unknown upstream 'b'",
                     "models.m.max_in_flight: must be > 0", "models.m.typo_key: unknown key",
                     "queue.max_wait_s: must be > 0", "clients.c.priority: must be one of",
                     "clients.c: needs a key"):
        assert expected in problems, expected


def test_unset_environment_variable_is_an_error():
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {"a": {"url": "http://x:1", "api_key": "${NOPE}"}},
                      "models": {"*": {"upstreams": ["a"]}}}, environ={})
    assert "upstreams.a.api_key: environment variable NOPE is not set" in info.value.problems


def test_upstream_key_with_a_newline_is_refused():
    """The key becomes a header line: a newline (say, from an env file) would add headers."""
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": {"a": {"url": "http://x:1", "api_key": "${K}"}},
                      "models": {"*": {"upstreams": ["a"]}}}, environ={"K": "sk-1\nX-Evil: 1"})
    assert any(p.startswith("upstreams.a.api_key: must not contain control characters")
               for p in info.value.problems)


def test_quick_mode_is_one_wildcard_model():
    config = quick_config("http://127.0.0.1:9000", 4)
    assert config.models["*"].max_in_flight == 4
    assert config.models["*"].upstreams == ("default",)


def test_check_config_and_serve_refuse_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {a: {url: 'http://x:1'}}\nmodels: {m: {upstreams: [zz]}}\n")
    assert main(["check-config", str(bad)]) == 2
    assert "models.m.upstreams[0]: unknown upstream 'zz'" in capsys.readouterr().err
    assert main(["serve", "--config", str(bad)]) == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    assert main(["check-config", str(broken)]) == 2
    assert "not valid YAML (line" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("upstreams: {a: {url: 'http://x:1'}}\nmodels: {m: {upstreams: [a]}}\n")
    assert main(["check-config", str(good)]) == 0
