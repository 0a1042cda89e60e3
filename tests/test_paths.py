"""No open proxy: only paths under the configured upstream origin are ever forwarded."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequest, MethodNotAllowed
from proxy.paths import checked_target


@pytest.mark.parametrize("target", [
    "/v1/chat/completions", "/v1/models?x=1", "/api/tags", "/props", "/v1/files/a.b.c",
    "/x?next=..%2F..", "/v1/chat/completions;x", "/v1/chat/completions%23x",
])
def test_ordinary_paths_pass(target):
    assert checked_target("GET", target) == target


@pytest.mark.parametrize(("target", "normalized"), [
    ("/v1/chat/complet%69ons", "/v1/chat/completions"),
    ("/%761/chat/completions?a=%69", "/v1/chat/completions?a=%69"),  # the query is left alone
    ("/v1/chat/completions%3bx", "/v1/chat/completions%3Bx"),  # reserved: kept, hex upper-cased
    ("/v1/x%7e%2D%5f", "/v1/x~-_"),
    ("/a%zz", "/a%zz"),  # not an escape: passed on as is
])
def test_paths_are_decided_and_forwarded_in_normalized_form(target, normalized):
    """Hazard: the proxy deciding on one spelling of a path while the upstream routes another;
    it forwards the same normalized path it decided on."""
    assert checked_target("POST", target) == normalized


@pytest.mark.parametrize("target", ["/v1/chat/completions#x", "/v1/completions#y",
                                    "/chat/completions#", "/v1/models?a#b"])
def test_a_fragment_is_refused(target):
    """Hazard: ``POST /v1/chat/completions#x`` looked like an unknown path to the proxy while
    the upstream dropped the fragment and served a chat completion, unadmitted."""
    with pytest.raises(BadRequest) as info:
        checked_target("POST", target)
    assert info.value.code == "invalid_path"


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
