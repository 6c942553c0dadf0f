"""API keys: ``Authorization: Bearer <key>``, configured as SHA-256 hashes with scopes.

The presented key is hashed and compared in constant time with every configured hash (no
early exit, so timing says nothing about which key or how much of it matched). Keys are never
logged; a key's ``name`` is what logs and metrics may show.

With no key configured every protected call is refused (401), unless
``SEGMENTS_API__AUTH_DISABLED=true`` (development only) lets every call through with all scopes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from service.api.errors import Forbidden, Unauthorized
from service.settings import ApiScope, ApiSettings

ADMIN: ApiScope = "admin"
READ: ApiScope = "segments:read"

SECURITY_SCHEME = "ApiKey"
"""Name of the bearer scheme in the OpenAPI document."""
SECURITY_SCHEME_SPEC = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: `Authorization: Bearer <key>`. Scopes: `segments:read` for "
    "every read endpoint, `admin` (implies every scope).",
}
SECURED: dict[str, object] = {"security": [{SECURITY_SCHEME: []}]}
"""``openapi_extra`` of a protected route. The header is read by :func:`bearer_token`, not by
FastAPI's ``HTTPBearer`` dependency: one dependency less on the hot path."""

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a configured key's name and scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: ApiScope) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


ANONYMOUS = Principal(name="anonymous", scopes=frozenset({ADMIN}))
"""The caller when authentication is disabled."""


class KeyRing:
    """The configured keys, ready for constant-time lookup."""

    def __init__(self, settings: ApiSettings) -> None:
        self.disabled = settings.auth_disabled
        self._keys = [
            (bytes.fromhex(k.sha256), Principal(k.name, frozenset(k.scopes))) for k in settings.keys
        ]

    def authenticate(self, presented: str | None) -> Principal:
        if self.disabled:
            return ANONYMOUS
        if not self._keys:
            raise Unauthorized(
                "no API keys are configured on this server (SEGMENTS_API__KEYS)",
                headers=_CHALLENGE,
            )
        if not presented:
            raise Unauthorized("missing bearer API key", headers=_CHALLENGE)
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for key_hash, principal in self._keys:
            if hmac.compare_digest(digest, key_hash) and found is None:
                found = principal
        if found is None:
            raise Unauthorized("invalid API key", headers=_CHALLENGE)
        return found


def bearer_token(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (scheme case-insensitive), else None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require(scope: ApiScope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks ``scope`` (add :data:`SECURED`
    to the route's ``openapi_extra``)."""

    async def dependency(request: Request) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        principal = keyring.authenticate(bearer_token(request))
        if not principal.allows(scope):
            raise Forbidden(f"API key {principal.name!r} lacks scope {scope!r}")
        return principal

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency
