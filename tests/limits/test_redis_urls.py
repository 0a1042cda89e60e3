"""One connection configuration: redis-py (heartbeat, registration, status) and the hot-path
pipeline (admit, release) must reach the same server, database and user for every URL form:
db in the path or the query, password, ACL user, unix socket, TLS checked against a CA made
here with the openssl CLI, client name."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.config import RedisConfig
from proxy.limits.base import Demand, LimitSpec, Option, Priority
from proxy.limits.redis import RedisStore, mark_fresh
from proxy.limits.redis_connect import check_store_url
from proxy.limits.redis_scripts import pool_keys
from tests.redis_server import RedisServer, free_port, redis_server_binary

PASSWORD = "s3cret"
_ids = itertools.count()


def _make_ca(folder: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=llm-throttle test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if redis_server_binary() is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    folder = tmp_path_factory.mktemp("redis-urls")
    _make_ca(folder)
    tls_port = free_port()
    server = RedisServer(password=PASSWORD, args=[
        "--unixsocket", str(folder / "redis.sock"), "--unixsocketperm", "700",
        "--tls-port", str(tls_port), "--tls-cert-file", str(folder / "server.crt"),
        "--tls-key-file", str(folder / "server.key"),
        "--tls-ca-cert-file", str(folder / "ca.crt"), "--tls-auth-clients", "no"])
    server.start()
    server.command("ACL", "SETUSER", "app", "on", ">apppw", "~*", "+@all")
    server.tls_port = tls_port  # type: ignore[attr-defined]
    server.folder = folder  # type: ignore[attr-defined]
    yield server
    server.stop()


def _urls(server: RedisServer) -> dict[str, tuple[str, int]]:
    """name -> (URL, the database it must address)."""
    port, folder = server.port, server.folder  # type: ignore[attr-defined]
    tls = server.tls_port  # type: ignore[attr-defined]
    return {
        "db_in_path": (f"redis://:{PASSWORD}@127.0.0.1:{port}/3", 3),
        "db_in_query": (f"redis://127.0.0.1:{port}/?db=2&password={PASSWORD}", 2),
        "acl_user": (f"redis://app:apppw@127.0.0.1:{port}/4", 4),
        "unix_socket": (f"unix://{folder}/redis.sock?db=5&password={PASSWORD}", 5),
        "tls_with_ca": (f"rediss://:{PASSWORD}@127.0.0.1:{tls}/6?ssl_ca_certs={folder}/ca.crt"
                        + "&ssl_cert_reqs=required", 6),
        "client_name": (f"redis://:{PASSWORD}@127.0.0.1:{port}/7?client_name=throttle-test", 7),
    }


def _direct(server: RedisServer, db: int) -> redis.Redis:
    return redis.Redis(port=server.port, password=PASSWORD, db=db, decode_responses=True)


@pytest.mark.parametrize("name", ["db_in_path", "db_in_query", "acl_user", "unix_socket",
                                  "tls_with_ca", "client_name"])
async def test_both_stacks_address_the_same_data(server: RedisServer, name: str):
    """Hazard: with ``?db=2`` the pipeline wrote db 0 while redis-py wrote db 2 (acquire never
    returned, 14,137 EVALSHA in 3 s); rediss:// options were ignored on the hot path."""
    url, db = _urls(server)[name]
    assert check_store_url(url) is None
    for n in range(8):
        _direct(server, n).flushdb()
    mark_fresh(url)
    spec = LimitSpec(caps={"m": 2}, buckets={}, max_queue_depth=10, max_wait_s=2.0)
    store = RedisStore(spec, url, RedisConfig(heartbeat_s=0.2, lease_ttl_s=2.0,
                                              command_timeout_s=1.0))
    await store.start()
    try:
        demand = Demand(f"u{next(_ids)}", Priority.BATCH, ("m",), (Option("o", ()),), ())
        grant = await store.acquire(demand)  # the pipeline
        assert not store.degraded
        snapshot = await store.snapshot()  # redis-py
        assert snapshot.resources["m"].in_flight == 1
        direct = _direct(server, db)
        assert direct.hget(pool_keys("llmthrottle")[1], "m") == "1"  # the right database
        assert all(not _direct(server, n).exists(pool_keys("llmthrottle")[1])
                   for n in range(8) if n != db)
        if name == "client_name":
            names = [c["name"] for c in direct.client_list()]
            assert names.count("throttle-test") >= 2  # redis-py's and the pipeline's
        await store.release(grant)
        assert direct.hget(pool_keys("llmthrottle")[1], "m") is None
    finally:
        await store.close()


def test_what_the_pipeline_cannot_honour_is_refused_at_config_time(server: RedisServer):
    folder = server.folder  # type: ignore[attr-defined]
    assert "TLS" in (check_store_url(
        f"rediss://127.0.0.1:1/0?ssl_ca_certs={folder}/missing.crt") or "")
    assert check_store_url("redis+sentinel://127.0.0.1:26379") is not None  # no service
    assert check_store_url("http://127.0.0.1:6379") is not None
