"""No open proxy: only paths under the configured upstream origin are ever forwarded."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequest, MethodNotAllowed
from proxy.paths import checked_target


@pytest.mark.parametrize("target", [
    "/v1/chat/completions", "/v1/models?x=1", "/api/tags", "/props", "/v1/files/a.b.c",
    "/v1/chat/complet%69ons", "/x?next=..%2F..",
])
def test_ordinary_paths_pass(target):
    assert checked_target("GET", target) == target


@pytest.mark.parametrize("target", [
    "http://evil.example/x", "evil.example:443", "//evil.example/x", "/a/../b", "/a/./b",
    "/a/%2e%2e/b", "/a/%2E%2E/b", "/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "*", "",
])
def test_targets_that_could_leave_the_upstream_are_refused(target):
    with pytest.raises(BadRequest) as info:
        checked_target("GET", target)
    assert info.value.code == "invalid_path"


@pytest.mark.parametrize("method", ["CONNECT", "TRACE"])
def test_connect_and_trace_are_refused(method):
    with pytest.raises(MethodNotAllowed):
        checked_target(method, "/x")
