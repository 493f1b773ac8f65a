"""JWT bearer authentication and the role table.

HS256 with MP_JWT_SECRET by default (generated once into the data directory when unset);
RS256/ES256 via a JWKS URL (MP_JWT_JWKS_URL, Keycloak-compatible) when set. Roles come from
the `roles` claim or Keycloak's `realm_access.roles`. No/invalid/expired token → 401; a valid
token without the role → 403. ADMIN may do everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from marketplace_pay.settings import SettingsError, check_jwt_secret
from marketplace_pay.shared.client_ids import is_seller_id

log = logging.getLogger(__name__)

PAYMENT_WRITE = "payment:write"
PAYMENT_READ = "payment:read"
SELLER = "SELLER"
FINANCE = "FINANCE"
ADMIN = "ADMIN"
ROLES = (PAYMENT_WRITE, PAYMENT_READ, SELLER, FINANCE, ADMIN)

_SCOPE_KEY = "mp.principal"


_PLAIN_SCOPE = re.compile(r"[!-~]{1,64}")


class Principal(msgspec.Struct, frozen=True):
    subject: str
    roles: frozenset[str]
    seller_id: str | None = None
    # The calling client: the token's `azp` (the OAuth client the token was issued to), else its
    # `sub`. Several users of one client app are one client; one user through two apps is two.
    client: str | None = None

    def has_any(self, roles: Iterable[str]) -> bool:
        return ADMIN in self.roles or not self.roles.isdisjoint(roles)

    @property
    def scope(self) -> str:
        """A bounded, storable identifier of the calling client (what Idempotency-Keys are
        scoped to): the client id itself when short visible ASCII, else a hash of it."""
        client = self.client or self.subject
        if _PLAIN_SCOPE.fullmatch(client):
            return client
        return "sha256:" + hashlib.sha256(client.encode("utf-8", "surrogatepass")).hexdigest()


class AuthError(Exception):
    pass


class JwksUnavailable(ConnectionError):
    """The JWKS cannot be fetched and the keys we have are too old to trust: the service cannot
    check tokens for now (503, like any backing service that is down)."""


def resolve_jwt_secret(configured: str | None, data_dir: Path) -> str:
    """MP_JWT_SECRET, else a secret generated once into the data directory (mode 0600).

    Processes starting together may both find no file: each writes a complete secret to a temp
    file and links it into place, which succeeds for exactly one of them (link never replaces);
    the others read the winner's. No process can see a half-written file."""
    if configured:
        return configured  # checked where it was read (Settings.from_env)
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".jwt-secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its secret
        finally:
            os.unlink(tmp)
    secret = path.read_text().strip()
    check_jwt_secret(secret, source=str(path))
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
JWKS_UNKNOWN_KID_REFETCH_S = 10.0


async def _fetch_jwks(url: str) -> Any:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()


class JwksKeys:
    """The signing keys a JWKS URL publishes, by key id.

    Keys are trusted for `max_age_s` after the fetch that returned them, so a key taken out of
    the JWKS (rotated out after a compromise) stops verifying tokens within that time. A token
    signed with an unknown key id makes us fetch again (the issuer may have added a key), but at
    most once per `refetch_min_s`: a flood of made-up key ids cannot hammer the JWKS endpoint.
    When the keys are too old and the JWKS cannot be fetched, nothing is trusted
    (JwksUnavailable)."""

    def __init__(
        self,
        url: str,
        *,
        max_age_s: float = 300.0,
        refetch_min_s: float = JWKS_UNKNOWN_KID_REFETCH_S,
        fetch: Callable[[], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._max_age_s = max_age_s
        self._refetch_min_s = min(refetch_min_s, max_age_s)
        self._fetch = fetch or (lambda: _fetch_jwks(url))
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # last fetch that succeeded
        self._attempted_at: float | None = None  # last fetch, whatever its outcome
        self._lock = asyncio.Lock()

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._max_age_s

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._refetch_min_s

    def trusts(self, kid: str) -> bool:
        """Whether a token verified with `kid` before may still be believed."""
        return kid in self._keys and self._fresh(self._clock())

    async def key(self, kid: str) -> Any:
        now = self._clock()
        if not self._fresh(now) or (kid not in self._keys and self._may_fetch(now)):
            await self._refresh()
        if not self._fresh(self._clock()):
            raise JwksUnavailable(f"the JWKS at {self._url} cannot be fetched")
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("the token's signing key is not in the JWKS")
        return key

    async def _refresh(self) -> None:
        async with self._lock:  # one fetch at a time; those waiting use its result
            now = self._clock()
            if not self._may_fetch(now):
                return
            self._attempted_at = now
            try:
                data = await self._fetch()
                jwk_set = jwt.PyJWKSet.from_dict(data)
            except Exception as exc:  # noqa: BLE001 - any failure: keep what we have while it is fresh
                log.warning("JWKS fetch failed", extra={"url": self._url, "error": repr(exc)})
                return
            self._keys = {k.key_id: k.key for k in jwk_set if k.key_id and k.public_key_use in (None, "sig")}
            self._fetched_at = now


class JwtVerifier:
    def __init__(
        self,
        *,
        secret: str | None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: int = 30,
        jwks_cache_s: float = 300.0,
        jwks: JwksKeys | None = None,
    ) -> None:
        if (jwks_url or jwks) and not audience:
            # a JWKS signs every token of the realm: without an audience any of them would do
            raise SettingsError("MP_JWT_AUDIENCE is required when MP_JWT_JWKS_URL is set")
        self._secret = secret
        self._jwks = jwks or (JwksKeys(jwks_url, max_age_s=jwks_cache_s) if jwks_url else None)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        # token -> (principal, valid until, key id): a client sends the same token with every
        # request, and checking its signature again each time is a good part of a request's CPU.
        self._verified: dict[str, tuple[Principal, float, str | None]] = {}

    async def _key(self, token: str) -> tuple[Any, list[str], str | None]:
        if self._jwks is None:
            if not self._secret:
                raise AuthError("no JWT secret configured")
            return self._secret, ["HS256"], None
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise AuthError("the token names no signing key (kid)")
        return await self._jwks.key(kid), ["RS256", "ES256"], kid

    async def verify(self, token: str) -> Principal:
        """The token's principal. A token verified before is trusted again until it expires (as
        `jwt.decode` would judge it) or for `_VERIFIED_FOR_S`, whichever comes first, and only
        while the key that signed it is still trusted."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and now < cached[1] and (cached[2] is None or self._trusts(cached[2])):
            return cached[0]
        who, expires_at, kid = await self._verify(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (who, min(expires_at + self._leeway, now + _VERIFIED_FOR_S), kid)
        return who

    def _trusts(self, kid: str) -> bool:
        return self._jwks is not None and self._jwks.trusts(kid)

    async def _verify(self, token: str) -> tuple[Principal, float, str | None]:
        try:
            key, algorithms, kid = await self._key(token)
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
        subject = str(claims.get("sub") or claims.get("azp") or claims.get("client_id") or "unknown")
        client = str(claims.get("azp") or claims.get("sub") or claims.get("client_id") or "unknown")
        seller = claims.get("seller_id")
        # a claim that no seller id can equal (NUL, a lone surrogate, …) names no seller: it must
        # not reach a query, where PostgreSQL would refuse it
        seller_id = str(seller) if seller and is_seller_id(str(seller)) else None
        who = Principal(subject=subject, roles=_roles(claims), seller_id=seller_id, client=client)
        return who, float(claims["exp"]), kid


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    who: Principal = connection.scope[_SCOPE_KEY]  # type: ignore[literal-required]
    return who


def requires(*roles: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A route guard: authenticates the bearer token (401) and checks the roles (403)."""
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
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
