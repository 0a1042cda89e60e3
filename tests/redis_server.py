"""The test suite's handle on ``redis-server`` (it lives in ``loadtest`` so the chaos soak
drives the same controls)."""

from __future__ import annotations

from loadtest.redis_server import RedisServer, free_port, master_and_replica, redis_server_binary

__all__ = ["RedisServer", "free_port", "master_and_replica", "redis_server_binary"]
