"""The operator's CLI: --version, --log-level, plain connection errors, the status views."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.cli import main
from proxy.status_view import blocked_reasons, refill_s, render_watch
from proxy.version import package_version
from tests.conftest import one_model_config
from tests.status_wait import wait_for_status

MESSAGES = [{"role": "user", "content": "hi"}]


def test_version(capsys):
    """Hazard: there was no way to ask which llm-throttle is installed."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"llm-throttle {package_version()}")


def test_bad_log_level_is_one_line(capsys):
    """Hazard: ``--log-level LOUD`` ended in a ValueError traceback from logging."""
    assert main(["--log-level", "LOUD", "check-config", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'LOUD'" in err and "INFO" in err


def test_connection_refused_says_so_without_aiohttp_internals(capsys):
    """Hazard: the message was ``ClientConnectorError: Cannot connect to host ... ssl:default``."""
    assert main(["status", "--url", "http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "connection refused" in err and "is the proxy running" in err
    assert "ClientConnectorError" not in err and "ssl:default" not in err


async def test_status_table_and_watch_show_buckets_and_why_a_model_waits(mock_llm, make_proxy,
                                                                         capsys):
    """Hazard: the table showed caps and queues but no rate buckets, so a model held back by
    an empty token bucket looked idle, with no word on why its requests waited."""
    mock = await mock_llm(ttft_s=0, tpot_s=0)
    config = one_model_config(mock.url, max_in_flight=1, tokens_per_minute=6000, burst_s=10)
    proxy = await make_proxy(config)
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 10}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(
            proxy.url + "/v1/chat/completions", json=body, headers={"x-mock-fault": "delay:0.6"}))
            for _ in range(3)]
        await wait_for_status(proxy, lambda d: d["queue"]["depth"] == 2)
        assert await asyncio.to_thread(main, ["status", "--url", proxy.url]) == 0
        table = capsys.readouterr().out
        code = await asyncio.to_thread(main, ["status", "--url", proxy.url, "--watch",
                                              "--count", "2", "--interval", "0.05"])
        watch = capsys.readouterr().out
        for task in tasks:
            (await task).close()
    assert code == 0
    assert "tpm:model:m" in table and "FULL IN" in table
    assert "model:m (2 queued): model at cap (1/1)" in table
    assert watch.count("model:m ") >= 2 and "[" + "#" * 30 + "]" in watch
    assert "queued 2" in watch and "/s in" in watch and "full in" in watch


def test_blocked_reasons_name_an_empty_bucket_and_a_shared_cap():
    """Hazard: 'why is my request waiting' had no answer when the model itself had room."""
    doc = {
        "models": {"m": {"in_flight": 0, "cap": 4, "queued": 3}},
        "upstreams": {"u": {"in_flight": 2, "cap": 2, "queued": 3}},
        "gpus": {"g": {"in_flight": 1, "cap": 4, "queued": 3}},
        "buckets": {"tpm:model:m": {"level": 0.2, "capacity": 100.0, "rate_per_s": 2.0},
                    "rpm:client:c": {"level": 5.0, "capacity": 5.0, "rate_per_s": 1.0}},
    }
    (why,) = blocked_reasons(doc).values()
    assert why[0].startswith("bucket tpm:model:m empty (0.2/100, next token in 0.4s)")
    assert "upstream:u at cap (2/2)" in why and not any("gpu:g" in w for w in why)
    assert refill_s(doc["buckets"]["tpm:model:m"]) == pytest.approx(49.9)
    assert refill_s(doc["buckets"]["rpm:client:c"]) == 0
    assert "waiting" not in render_watch({"models": {}})


def test_serve_with_a_bare_port_says_what_is_expected(capsys, tmp_path):
    """Hazard: ``serve --config FILE --listen 55777`` ended in a ValueError traceback."""
    path = tmp_path / "throttle.yaml"
    path.write_text('upstreams: {a: {url: "http://127.0.0.1:9"}}\n'
                    'models: {"*": {upstreams: [a]}}\n')
    code = main(["serve", "--config", str(path), "--listen", "55777"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "host:port" in err and ":8080" in err
