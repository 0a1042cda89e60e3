"""Who is calling: client key -> client identity, priority and limits.

Keys are looked up by their SHA-256 digest and confirmed with a constant-time compare, so the
configuration may hold only digests (``key_sha256``) and a lookup leaks nothing about how much
of a guessed key was right. Nothing in a request can raise what its key allows: an attribution
header only narrows the identity (its own resource under the key's), and a priority header may
only lower the priority.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config
from .errors import AuthenticationFailed
from .limits.base import Priority

#: header values that may name a finer identity (kept short and label-safe)
_ATTRIBUTE_PATTERN = re.compile(r"[A-Za-z0-9._:@/-]{1,64}")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    name: str  # the configured client name, or "anonymous" when no keys are configured
    priority: Priority
    resources: tuple[str, ...]  # in-flight resources of this identity (client:, attr:)
    buckets: tuple[str, ...]  # rate buckets of the key (rpm:client:..., tpm:client:...)
    attribute: str | None = None  # the finer identity from the attribution header

    @property
    def label(self) -> str:
        """For metrics and logs: the client name, refined by the attribution if any."""
        return f"{self.name}/{self.attribute}" if self.attribute else self.name


def key_digest(key: str) -> str:
    # Header bytes >= 0x80 arrive as surrogate escapes: encode them back, never fail.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The client key from ``Authorization: Bearer`` or ``api-key`` (Azure-style)."""
    value = headers.get("Authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("api-key") or None


class Authenticator:
    """Maps a request's key and headers to an ``Identity``; built once per configuration."""

    def __init__(self, config: Config):
        self._required = config.requires_client_keys
        self._by_digest: dict[str, tuple[str, Identity]] = {}
        for client in config.clients.values():
            digest = client.key_sha256 or key_digest(client.key or "")
            buckets = []
            if client.requests_per_minute:
                buckets.append(f"rpm:client:{client.name}")
            if client.tokens_per_minute:
                buckets.append(f"tpm:client:{client.name}")
            self._by_digest[digest] = (digest, Identity(
                name=client.name,
                priority=Priority.parse(client.priority),
                resources=(f"client:{client.name}",),
                buckets=tuple(buckets),
            ))
        self._anonymous = Identity("anonymous", Priority.BATCH, (), ())
        self._attr_header = config.attribution.header
        self._attr_capped = config.attribution.max_in_flight is not None
        self._priority_header = config.attribution.priority_header
        reads = [p for p in config.public_paths if not p.startswith("POST ")]
        self._public = frozenset(p for p in reads if not p.endswith("*"))
        self._public_prefixes = tuple(p[:-1] for p in reads if p.endswith("*"))
        self._public_posts = frozenset(p.removeprefix("POST ") for p in config.public_paths
                                       if p.startswith("POST "))

    def is_public(self, method: str, path: str) -> bool:
        """A configured read-only probe: GET/HEAD, or a POST listed as such (never an
        admitted path: the configuration refuses those), so nothing is admitted keyless."""
        if method in ("GET", "HEAD"):
            return path in self._public or path.startswith(self._public_prefixes)
        return method == "POST" and path in self._public_posts

    def authenticate(self, headers: Mapping[str, str], method: str = "",
                     path: str = "") -> Identity:
        """Raises ``AuthenticationFailed`` for a missing or unknown key (when keys are on);
        a ``public_paths`` probe passes without one (as ``anonymous``; with a good key it is
        still counted under its client)."""
        identity = self._anonymous
        if self._required:
            public = self.is_public(method, path)
            token = bearer_token(headers)
            if token is None:
                if public:
                    return self._refine(identity, headers)
                raise AuthenticationFailed(
                    "no API key given: send 'Authorization: Bearer <key>'", code="missing_api_key"
                )
            digest = key_digest(token)
            expected, found = self._by_digest.get(digest, ("", self._anonymous))
            # The dict lookup picked a candidate; confirm it in constant time.
            if not hmac.compare_digest(digest, expected):
                if public:
                    return self._refine(identity, headers)
                raise AuthenticationFailed("incorrect API key provided")
            identity = found
        return self._refine(identity, headers)

    def _refine(self, identity: Identity, headers: Mapping[str, str]) -> Identity:
        """Apply attribution and priority headers; both can only narrow what the key allows."""
        attribute = None
        if self._attr_header:
            value = headers.get(self._attr_header)
            if value and _ATTRIBUTE_PATTERN.fullmatch(value):
                attribute = value
        priority = identity.priority
        if self._priority_header:
            asked = (headers.get(self._priority_header) or "").lower()
            if asked == "batch":
                priority = Priority.BATCH  # lowering is always allowed; raising never
        if attribute is None and priority is identity.priority:
            return identity
        resources = identity.resources
        if attribute is not None and self._attr_capped:
            resources = resources + (f"attr:{identity.name}/{attribute}",)
        return Identity(identity.name, priority, resources, identity.buckets, attribute)
