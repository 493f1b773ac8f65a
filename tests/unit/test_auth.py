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


# --- JWKS keys: a lifespan, and refetches bounded -------------------------------------------

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jwt as pyjwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from marketplace_pay.infra.auth import JwksKeys, JwksUnavailable, Principal  # noqa: E402
from marketplace_pay.settings import Settings, SettingsError  # noqa: E402

AUDIENCE = "marketplace-pay"


class FakeIssuer:
    """An identity provider: RSA keys by kid, the JWKS it publishes, and a count of fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: set[str] = set()
        self.fetches = 0
        self.down = False

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published.add(kid)

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise ConnectionError("JWKS unreachable")
        jwks = []
        for kid in sorted(self.published):
            jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            jwks.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": jwks}

    def token(self, kid: str, **claims: Any) -> str:
        body = {"sub": "user-1", "exp": int(time.time()) + 3600, "aud": AUDIENCE, "roles": ["payment:write"], **claims}
        key = self.keys[kid] if kid in self.keys else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return pyjwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def jwks_verifier(issuer: FakeIssuer, clock: Callable[[], float], **kwargs: Any) -> JwtVerifier:
    keys = JwksKeys("https://idp.example/jwks", fetch=issuer.fetch, clock=clock, **kwargs)
    return JwtVerifier(secret=None, jwks=keys, audience=AUDIENCE)


async def test_a_key_removed_from_the_jwks_stops_verifying_within_the_cache_lifespan() -> None:
    issuer, now = FakeIssuer(), [1000.0]
    issuer.add_key("k1")
    verifier = jwks_verifier(issuer, lambda: now[0], max_age_s=300)
    token = issuer.token("k1")
    assert (await verifier.verify(token)).subject == "user-1"
    issuer.published.discard("k1")  # rotated out after a compromise
    issuer.add_key("k2")
    now[0] += 299
    await verifier.verify(token)  # still within the lifespan of what was fetched
    assert issuer.fetches == 1
    now[0] += 2
    with pytest.raises(AuthError):  # neither the key cache nor the verified-token cache outlives the key
        await verifier.verify(token)
    assert issuer.fetches == 2
    assert (await verifier.verify(issuer.token("k2"))).subject == "user-1"


async def test_unknown_key_ids_refetch_the_jwks_at_most_once_per_interval() -> None:
    issuer, now = FakeIssuer(), [1000.0]
    issuer.add_key("k1")
    verifier = jwks_verifier(issuer, lambda: now[0], max_age_s=300, refetch_min_s=10)
    await verifier.verify(issuer.token("k1"))
    now[0] += 10
    for i in range(50):  # a flood of made-up key ids
        with pytest.raises(AuthError):
            await verifier.verify(issuer.token(f"forged-{i}"))
        now[0] += 0.1
    assert issuer.fetches == 1 + 1  # the first fetch, and one refetch for the first unknown kid
    issuer.add_key("k3")  # a real rotation: the new key is found once the interval has passed
    now[0] += 5
    assert (await verifier.verify(issuer.token("k3"))).subject == "user-1"
    assert issuer.fetches == 3


async def test_stale_keys_and_an_unreachable_jwks_trust_nothing() -> None:
    issuer, now = FakeIssuer(), [1000.0]
    issuer.add_key("k1")
    verifier = jwks_verifier(issuer, lambda: now[0], max_age_s=300)
    token = issuer.token("k1")
    await verifier.verify(token)
    issuer.down = True
    now[0] += 301
    with pytest.raises(JwksUnavailable):  # a 503: the service cannot check tokens right now
        await verifier.verify(token)


def test_a_jwks_without_an_audience_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="MP_JWT_AUDIENCE is required"):
        Settings.from_env({"MP_JWT_JWKS_URL": "https://idp.example/jwks"})
    with pytest.raises(SettingsError, match="MP_JWT_AUDIENCE"):
        JwtVerifier(secret=None, jwks_url="https://idp.example/jwks")
    settings = Settings.from_env({"MP_JWT_JWKS_URL": "https://idp.example/jwks", "MP_JWT_AUDIENCE": AUDIENCE})
    assert settings.jwt.audience == AUDIENCE and settings.jwt.jwks_cache_s == 300
    assert Settings.from_env({"MP_JWT_JWKS_CACHE_S": "60"}).jwt.jwks_cache_s == 60


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        "x" * 31,
        "change-me-to-a-long-random-secret-of-32-bytes-or-more",  # the compose.yaml template
        "CHANGEME-CHANGEME-CHANGEME-CHANGEME",
        "please-replace-me-with-something-long",
        "an-example-secret-that-is-long-enough-42",
        "placeholder-placeholder-placeholder",
        "test-secret-0123456789-0123456789-0123456789",
        "secret" * 8,
        "secretsecret-12345678901234567890123",
        "ab" * 20,
    ],
)
def test_guessable_jwt_secrets_are_refused_with_the_way_to_make_one(secret: str) -> None:
    with pytest.raises(SettingsError, match=r"secrets\.token_urlsafe") as refused:
        Settings.from_env({"MP_JWT_SECRET": secret})
    assert secret not in str(refused.value)  # the refusal never echoes the secret


def test_a_random_jwt_secret_is_accepted() -> None:
    import secrets

    value = secrets.token_urlsafe(48)
    assert Settings.from_env({"MP_JWT_SECRET": value}).jwt.secret == value
    assert Settings.from_env({"MP_JWT_SECRET": secrets.token_hex(16)}).jwt.secret  # 32 bytes exactly


async def test_the_idempotency_scope_is_the_client_azp_else_sub() -> None:
    verifier = JwtVerifier(secret=SECRET)

    def token(**claims: Any) -> str:
        return pyjwt.encode(
            {"exp": int(time.time()) + 60, "roles": ["payment:write"], **claims}, SECRET, algorithm="HS256"
        )

    alice_app = await verifier.verify(token(sub="alice", azp="shop-frontend"))
    bob_app = await verifier.verify(token(sub="bob", azp="shop-frontend"))
    alice_cli = await verifier.verify(token(sub="alice", azp="ops-cli"))
    service = await verifier.verify(token(sub="svc-account"))
    assert alice_app.scope == bob_app.scope == "shop-frontend"  # one client, whoever its user is
    assert alice_cli.scope == "ops-cli" != alice_app.scope  # one user, two clients
    assert service.scope == "svc-account"
    assert alice_app.subject == "alice"
    odd = Principal(subject="x", roles=frozenset(), client="a\x00b\ud800")  # bounded and storable
    assert odd.scope.startswith("sha256:") and len(odd.scope) == 71
    assert Principal(subject="y" * 65, roles=frozenset()).scope.startswith("sha256:")


# --- the generated secret file: processes starting together agree on one complete secret ----

import multiprocessing  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from marketplace_pay.infra.auth import resolve_jwt_secret  # noqa: E402


def _resolve_after(barrier: Any, data_dir: str, results: Any) -> None:
    barrier.wait()
    try:
        results.put(resolve_jwt_secret(None, Path(data_dir)))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"error: {exc!r}")


def test_threads_racing_for_the_generated_secret_all_get_the_same_one(tmp_path: Path) -> None:
    for round_ in range(30):
        data_dir = tmp_path / f"round-{round_}"
        barrier = threading.Barrier(12)
        results: list[str] = []

        def resolve(
            data_dir: Path = data_dir, barrier: threading.Barrier = barrier, results: list[str] = results
        ) -> None:
            barrier.wait()
            try:
                results.append(resolve_jwt_secret(None, data_dir))
            except Exception as exc:  # noqa: BLE001 - reported below
                results.append(f"error: {exc!r}")

        threads = [threading.Thread(target=resolve) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(results)) == 1, results
        assert results[0] == (data_dir / "jwt-secret").read_text() and len(results[0]) == 64
        assert (data_dir / "jwt-secret").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in data_dir.iterdir()] == ["jwt-secret"]  # no temp file left behind


def test_processes_racing_for_the_generated_secret_all_get_the_same_one(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        data_dir = tmp_path / f"round-{round_}"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_resolve_after, args=(barrier, str(data_dir), results)) for _ in range(6)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        assert len(set(got)) == 1 and not got[0].startswith("error"), got
        assert got[0] == (data_dir / "jwt-secret").read_text()


def test_an_empty_or_short_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jwt-secret").write_text("")
    with pytest.raises(SettingsError, match="jwt-secret"):
        resolve_jwt_secret(None, tmp_path)
