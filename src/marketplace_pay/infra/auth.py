"""JWT bearer authentication and the role table (SPEC §3.1).

HS256 with MP_JWT_SECRET by default (generated once into the data directory when unset);
RS256/ES256 via a JWKS URL (MP_JWT_JWKS_URL, Keycloak-compatible) when set. Roles come from
the `roles` claim or Keycloak's `realm_access.roles`. No/invalid/expired token → 401; a valid
token without the role → 403. ADMIN may do everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

PAYMENT_WRITE = "payment:write"
PAYMENT_READ = "payment:read"
SELLER = "SELLER"
FINANCE = "FINANCE"
ADMIN = "ADMIN"
ROLES = (PAYMENT_WRITE, PAYMENT_READ, SELLER, FINANCE, ADMIN)

_SCOPE_KEY = "mp.principal"


class Principal(msgspec.Struct, frozen=True):
    subject: str
    roles: frozenset[str]
    seller_id: str | None = None

    def has_any(self, roles: Iterable[str]) -> bool:
        return ADMIN in self.roles or not self.roles.isdisjoint(roles)

    @property
    def scope(self) -> str:
        """A bounded identifier of the caller (Idempotency-Key scope)."""
        if len(self.subject) <= 64:
            return self.subject
        return "sha256:" + hashlib.sha256(self.subject.encode()).hexdigest()


class AuthError(Exception):
    pass


def resolve_jwt_secret(configured: str | None, data_dir: Path) -> str:
    """MP_JWT_SECRET, else a secret generated once into the data directory (mode 0600)."""
    if configured:
        return configured
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def issue_token(
    secret: str,
    *,
    roles: Iterable[str],
    seller_id: str | None = None,
    ttl_s: int = 3600,
    subject: str = "marketplace-pay-cli",
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_s, "roles": sorted(set(roles))}
    if seller_id:
        claims["seller_id"] = seller_id
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    roles: set[str] = set()
    for source in (claims.get("roles"), (claims.get("realm_access") or {}).get("roles")):
        if isinstance(source, list):
            roles.update(r for r in source if isinstance(r, str))
    return frozenset(roles)


_VERIFIED_FOR_S = 60
_VERIFIED_MAX = 10_000


class JwtVerifier:
    def __init__(
        self,
        *,
        secret: str | None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: int = 30,
    ) -> None:
        self._secret = secret
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600) if jwks_url else None
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._keys: dict[str, Any] = {}
        # token -> (principal, valid until): a client sends the same token with every request,
        # and checking its signature again each time is a good part of a request's CPU.
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            if not self._secret:
                raise AuthError("no JWT secret configured")
            return self._secret, ["HS256"]
        kid = jwt.get_unverified_header(token).get("kid", "")
        key = self._keys.get(kid)
        if key is None:  # PyJWKClient does blocking HTTP: keep it off the event loop
            key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            self._keys[kid] = key
        return key, ["RS256", "ES256"]

    async def verify(self, token: str) -> Principal:
        """The token's principal. A token verified before is trusted again until it expires (as
        `jwt.decode` would judge it) or for `_VERIFIED_FOR_S`, whichever comes first."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and now < cached[1]:
            return cached[0]
        who, expires_at = await self._verify(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (who, min(expires_at + self._leeway, now + _VERIFIED_FOR_S))
        return who

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            key, algorithms = await self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthError(str(exc)) from None
        subject = claims.get("sub") or claims.get("azp") or claims.get("client_id") or "unknown"
        seller = claims.get("seller_id")
        who = Principal(subject=str(subject), roles=_roles(claims), seller_id=str(seller) if seller else None)
        return who, float(claims["exp"])


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return connection.scope[_SCOPE_KEY]  # type: ignore[typeddict-item]


def requires(*roles: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A route guard: authenticates the bearer token (401) and checks the roles (403)."""
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("A bearer token is required")
        verifier: JwtVerifier = connection.app.state.verifier
        try:
            who = await verifier.verify(token.strip())
        except AuthError as exc:
            raise NotAuthorizedException(f"Invalid token: {exc}") from None
        connection.scope[_SCOPE_KEY] = who  # type: ignore[literal-required]
        if not who.has_any(allowed):
            raise PermissionDeniedException(f"Requires one of the roles: {', '.join(sorted(allowed))}")

    return guard
