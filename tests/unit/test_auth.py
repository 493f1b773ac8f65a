"""Bearer-token verification, and the cache of tokens verified before."""

from __future__ import annotations

import time

import pytest

from marketplace_pay.infra import auth
from marketplace_pay.infra.auth import AuthError, JwtVerifier, issue_token

SECRET = "a-test-secret-long-enough-for-hs256-keys!"


async def test_a_token_verified_before_is_not_trusted_past_its_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = JwtVerifier(secret=SECRET, leeway_s=0)
    token = issue_token(SECRET, roles=["payment:write"], seller_id="SELLER-111", ttl_s=5)
    checks = 0
    check = verifier._verify

    async def counted(t: str) -> tuple[auth.Principal, float]:
        nonlocal checks
        checks += 1
        return await check(t)

    monkeypatch.setattr(verifier, "_verify", counted)
    first = await verifier.verify(token)
    assert (await verifier.verify(token)) == first and checks == 1  # the second one from the cache
    assert first.seller_id == "SELLER-111" and first.has_any({"payment:write"})

    real = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real() + 6)  # past exp: checked again
    await verifier.verify(token)
    assert checks == 2


async def test_failures_are_not_cached_and_other_secrets_are_refused() -> None:
    verifier = JwtVerifier(secret=SECRET)
    foreign = issue_token("another-secret-that-is-also-long-enough!!", roles=["payment:write"])
    for _ in range(2):
        with pytest.raises(AuthError):
            await verifier.verify(foreign)
    with pytest.raises(AuthError):
        await verifier.verify(issue_token(SECRET, roles=["payment:write"], ttl_s=-120))
