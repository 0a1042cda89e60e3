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


def _problems_of(tmp_path, text: str, environ: dict | None = None) -> str:
    path = tmp_path / "throttle.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return "\n".join(info.value.problems)


def test_duplicate_key_is_an_error_with_its_path(tmp_path):
    """Hazard: PyYAML lets the last of two equal keys win: a cap of 4 became 40 silently."""
    problems = _problems_of(tmp_path, """
upstreams:
  a: {url: "http://127.0.0.1:8000"}
models:
  m:
    upstreams: [a]
    max_in_flight: 4
    max_in_flight: 40
""")
    assert "models.m.max_in_flight: duplicate key (line 8; first given on line 7)" in problems


def test_duplicate_upstream_name_is_an_error(tmp_path):
    """Hazard: a second upstream of the same name replaced the first without a word."""
    problems = _problems_of(tmp_path, """
upstreams:
  a: {url: "http://127.0.0.1:8000"}
  a: {url: "http://127.0.0.1:8001"}
models: {"*": {upstreams: [a]}}
""")
    assert "upstreams.a: duplicate key" in problems


def test_unquoted_env_var_in_flow_mapping_suggests_quoting(tmp_path):
    """Hazard: the README's own example failed with a bare PyYAML message and no hint."""
    problems = _problems_of(tmp_path, """
upstreams:
  a: {url: "http://127.0.0.1:8000", api_key: ${VLLM_KEY}}
models: {"*": {upstreams: [a]}}
""", {"VLLM_KEY": "k"})
    assert "not valid YAML (line 3" in problems
    assert 'must be quoted: key: "${VAR}"' in problems


def test_plain_key_equal_to_another_clients_digest_is_refused():
    """Hazard: the Hermes fleet's plain key hashed to chat-ui's key_sha256, so it logged in as
    chat-ui with interactive priority."""
    import hashlib

    digest = hashlib.sha256(b"shared-secret").hexdigest()
    data = {"upstreams": {"a": {"url": "http://127.0.0.1:8000"}},
            "models": {"*": {"upstreams": ["a"]}},
            "clients": {"chat-ui": {"key_sha256": digest, "priority": "interactive"},
                        "hermes": {"key": "shared-secret"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert "clients.hermes.key: same key as clients.chat-ui.key_sha256" in info.value.problems


def test_two_identical_plain_keys_and_key_with_digest_are_refused():
    """Hazard: a client with both key and key_sha256 was accepted (which one counts?)."""
    import hashlib

    data = {"upstreams": {"a": {"url": "http://127.0.0.1:8000"}},
            "models": {"*": {"upstreams": ["a"]}},
            "clients": {"x": {"key": "k1"}, "y": {"key": "k1"},
                        "z": {"key": "k3", "key_sha256": hashlib.sha256(b"k3").hexdigest()}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    problems = info.value.problems
    assert "clients.y.key: same key as clients.x.key" in problems
    assert "clients.z: give key or key_sha256, not both" in problems


def test_bare_port_listen_says_what_is_expected():
    """Hazard: ``listen: 55777`` said only 'expected a string, got int'."""
    data = {"listen": 55777, "upstreams": {"a": {"url": "http://127.0.0.1:8000"}},
            "models": {"*": {"upstreams": ["a"]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    (problem,) = info.value.problems
    assert '"127.0.0.1:55777"' in problem and '":55777"' in problem


def test_parser_defaults_are_the_dataclass_defaults():
    """Hazard: each default was written twice (dataclass and parser) and could drift."""
    from proxy.config import ClientConfig, Config, ModelConfig, QueueConfig, UpstreamConfig

    config = parse_config({"upstreams": {"a": {"url": "http://127.0.0.1:8000"}},
                           "models": {"m": {"upstreams": ["a"]}},
                           "clients": {"c": {"key": "k"}}}, environ={})
    assert config.upstreams["a"].read_timeout_s == UpstreamConfig("a", "").read_timeout_s
    assert config.models["m"].burst_s == ModelConfig("m", ()).burst_s
    assert config.clients["c"].priority == ClientConfig("c").priority
    assert config.queue == QueueConfig()
    assert config.header_read_timeout_s == Config().header_read_timeout_s
    assert (config.listen_host, config.listen_port) == (Config().listen_host,
                                                         Config().listen_port)


def test_scenario_files_refuse_duplicate_keys_too(tmp_path):
    """Hazard: the loadtest scenario reader was a second, laxer YAML reader."""
    from loadtest.scenario_file import ScenarioError, load_scenario

    path = tmp_path / "s.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert any("name: duplicate key" in p for p in info.value.problems)
