"""POST/GET /api/v1/payments through HTTP against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from marketplace_pay.payments.application.ports import AuthorizationOutcome
from tests.fakes import ScriptedAuthorizationGateway
from tests.harness import Service, payment_body, start_service


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def svc(database: str, settings_for: Any) -> AsyncIterator[Service]:
    async with start_service(settings_for(database)) as service:
        yield service


async def count_payments(svc: Service, buyer: str) -> int:
    return await svc.fetchval("SELECT count(*) FROM payments WHERE buyer_id = $1", buyer)


async def test_approved_payment_is_202_with_location_and_readable(svc: Service) -> None:
    buyer = uid("BUYER")
    r = await svc.pay(payment_body(buyer))
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/api/v1/payments/{body['paymentId']}"
    assert body["status"] == "AUTHORIZED"
    assert body["paymentId"].startswith("pay_") and len(body["paymentId"]) == 15
    assert [o["sellerId"] for o in body["paymentOrders"]] == ["SELLER-111", "SELLER-222"]
    assert all(o["paymentOrderId"].startswith("po_") for o in body["paymentOrders"])
    assert body["createdAt"].endswith("Z")

    got = await svc.get_payment(body["paymentId"])
    assert got.status_code == 200
    assert got.json()["paymentId"] == body["paymentId"]
    assert got.json()["totalAmount"] == {"quantity": 3000, "currency": "EUR"}

    events = await svc.fetch(
        "SELECT event_type, msg_key FROM outbox WHERE event_id = $1", f"{body['paymentId']}:authorized"
    )
    assert [e["event_type"] for e in events] == ["payment_authorized"]


async def test_declined_payment_is_402_and_has_no_event(svc: Service) -> None:
    r = await svc.pay(payment_body(uid("DECLINE")))
    assert r.status_code == 402
    assert r.json()["status"] == "DECLINED"
    assert (
        await svc.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", f"{r.json()['paymentId']}:authorized")
        == 0
    )


async def test_psp_timeout_answers_pending_auth_and_a_job_authorizes_it(svc: Service) -> None:
    r = await svc.pay(payment_body(uid("TIMEOUT")))
    assert r.status_code == 202
    assert r.json()["status"] == "PENDING_AUTH"
    pid = r.json()["paymentId"]

    async def authorized() -> bool:  # and then captured: the pipeline runs on
        return (await svc.get_payment(pid)).json()["status"] in ("AUTHORIZED", "CAPTURED")

    await svc.until(authorized, timeout=10)
    assert await svc.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", f"{pid}:authorized") == 1


async def test_unknown_and_malformed_payment_ids_are_404(svc: Service) -> None:
    for pid in ("pay_AAAAAAAAAAE", "pay_nope", "po_AAAAAAAAAAE", "12345"):
        r = await svc.get_payment(pid)
        assert r.status_code == 404, pid
        assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("buyerId"), "buyerId"),
        (lambda b: b.update(buyerId=""), "buyerId"),
        (lambda b: b.update(buyerId="   "), "buyerId"),
        (lambda b: b.update(orderId="x" * 129), "orderId"),
        (lambda b: b.update(buyerId="x" * 10_000), "buyerId"),
        (lambda b: b["totalAmount"].update(quantity=0), "totalAmount.quantity"),
        (lambda b: b["totalAmount"].update(quantity=-5), "totalAmount.quantity"),
        (lambda b: b["totalAmount"].update(quantity="3000"), "totalAmount.quantity"),
        (lambda b: b["totalAmount"].update(quantity=30.5), "totalAmount.quantity"),
        (lambda b: b["totalAmount"].update(quantity=2**70), "totalAmount.quantity"),
        (lambda b: b["totalAmount"].update(currency="XYZ"), "totalAmount.currency"),
        (lambda b: b["totalAmount"].update(currency="eur"), "totalAmount.currency"),
        (lambda b: b.update(paymentOrders=[]), "paymentOrders"),
        (lambda b: b.update(paymentOrders=b["paymentOrders"] * 51), "paymentOrders"),
        (lambda b: b["paymentOrders"][1]["amount"].update(quantity=0), "paymentOrders[1].amount.quantity"),
        (lambda b: b["paymentOrders"][0].update(sellerId=None), "paymentOrders[0].sellerId"),
        (lambda b: b.update(paymentOrders={"sellerId": "SELLER-111"}), "paymentOrders"),
        # business rules, after the schema
        (lambda b: b["paymentOrders"][1].update(sellerId="SELLER-111"), "paymentOrders[1].sellerId"),
        (lambda b: b["totalAmount"].update(quantity=2999), "totalAmount.quantity"),
        (
            lambda b: b["paymentOrders"][1]["amount"].update(currency="USD"),
            "paymentOrders[1].amount.currency",
        ),
    ],
)
async def test_bad_bodies_are_400_problems_and_write_nothing(svc: Service, mutate: Any, field: str) -> None:
    buyer = uid("BUYER")
    body = payment_body(buyer)
    mutate(body)
    calls = sum(svc.container.psp_log.counts.values())
    r = await svc.pay(body)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert {"type", "title", "status", "detail", "instance", "traceId"} <= set(problem)
    assert problem["status"] == 400 and problem["instance"] == "/api/v1/payments"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert await count_payments(svc, buyer) == 0
    assert sum(svc.container.psp_log.counts.values()) == calls  # the PSP was not called


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"[]", b"null", b'{"buyerId": "a",}', b"\xff\xfe", b'"just a string"'],
)
async def test_malformed_json_is_400(svc: Service, raw: bytes) -> None:
    r = await svc.client.post(
        "/api/v1/payments", content=raw, headers=svc.auth("payment:write") | {"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "body"


async def test_wrong_content_type_is_415_and_huge_bodies_413(svc: Service) -> None:
    r = await svc.client.post(
        "/api/v1/payments", content=b"buyerId=a", headers=svc.auth("payment:write") | {"content-type": "text/plain"}
    )
    assert r.status_code == 415 and r.headers["content-type"].startswith("application/problem+json")
    r = await svc.client.post(
        "/api/v1/payments",
        content=b'{"buyerId": "' + b"x" * 2_000_000 + b'"}',
        headers=svc.auth("payment:write") | {"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")


async def test_unknown_inactive_and_foreign_currency_sellers_are_422(svc: Service) -> None:
    admin = svc.auth("ADMIN")
    usd, suspended = uid("SELLER-USD"), uid("SELLER-SUSP")
    assert (
        await svc.client.post(
            "/api/v1/sellers", json={"sellerId": usd, "currency": "USD", "commissionBps": 0}, headers=admin
        )
    ).status_code == 201
    assert (
        await svc.client.post(
            "/api/v1/sellers", json={"sellerId": suspended, "currency": "EUR", "commissionBps": 0}, headers=admin
        )
    ).status_code == 201
    assert (
        await svc.client.patch(f"/api/v1/sellers/{suspended}", json={"status": "SUSPENDED"}, headers=admin)
    ).status_code == 200
    buyer = uid("BUYER")
    body = payment_body(buyer, lines=[("SELLER-NOPE", 10), (usd, 20), (suspended, 30)])
    r = await svc.pay(body)
    assert r.status_code == 422, r.text
    messages = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "not known" in messages["paymentOrders[0].sellerId"]
    assert "settles in USD" in messages["paymentOrders[1].sellerId"]
    assert "not active" in messages["paymentOrders[2].sellerId"]
    assert await count_payments(svc, buyer) == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer not-a-jwt"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
)
async def test_missing_or_garbage_tokens_are_401(svc: Service, headers: dict[str, str], status: int) -> None:
    r = await svc.client.post("/api/v1/payments", json=payment_body(), headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_expired_and_foreign_tokens_are_401_and_wrong_role_403(svc: Service) -> None:
    from marketplace_pay.infra.auth import issue_token

    secret = svc.settings.jwt.secret or ""
    expired = issue_token(secret, roles=["payment:write"], ttl_s=-120)
    foreign = issue_token("another-service-secret-0123456789-abcdef", roles=["payment:write"])
    for token in (expired, foreign):
        r = await svc.client.post("/api/v1/payments", json=payment_body(), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    r = await svc.client.post("/api/v1/payments", json=payment_body(), headers=svc.auth("payment:read"))
    assert r.status_code == 403
    r = await svc.client.get("/api/v1/payments/pay_AAAAAAAAAAE", headers=svc.auth("SELLER", seller="SELLER-111"))
    assert r.status_code == 403


async def test_keycloak_realm_roles_are_accepted(svc: Service) -> None:
    import time

    import jwt

    token = jwt.encode(
        {"sub": "svc", "exp": int(time.time()) + 60, "realm_access": {"roles": ["payment:write"]}},
        svc.settings.jwt.secret or "",
        algorithm="HS256",
    )
    r = await svc.client.post(
        "/api/v1/payments", json=payment_body(uid("BUYER")), headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 202


async def test_read_roles(svc: Service) -> None:
    pid = (await svc.pay(payment_body(uid("BUYER")))).json()["paymentId"]
    for role in ("payment:read", "payment:write", "FINANCE", "ADMIN"):
        assert (await svc.client.get(f"/api/v1/payments/{pid}", headers=svc.auth(role))).status_code == 200, role


async def test_business_key_repeat_returns_the_same_payment(svc: Service) -> None:
    body = payment_body(uid("DECLINE"))
    first = await svc.pay(body)
    again = await svc.pay(body)
    assert first.status_code == again.status_code == 402
    assert again.json()["paymentId"] == first.json()["paymentId"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_idempotency_key_replay_mismatch_and_new_attempt(svc: Service) -> None:
    buyer = uid("DECLINE")
    key = uid("key")
    first = await svc.pay(payment_body(buyer), key=key)
    assert first.status_code == 402 and "idempotent-replayed" not in first.headers
    replay = await svc.pay(payment_body(buyer), key=key)
    assert (replay.status_code, replay.content) == (402, first.content)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == first.headers["location"]

    other = payment_body(buyer, lines=[("SELLER-111", 3000)])
    mismatch = await svc.pay(other, key=key)
    assert mismatch.status_code == 422 and "Idempotency-Key" in mismatch.json()["detail"]

    # A declined shopper retries the same order with a new key: a new payment.
    retry = await svc.pay(payment_body(buyer), key=uid("key"))
    assert retry.status_code == 402 and retry.json()["paymentId"] != first.json()["paymentId"]
    assert await count_payments(svc, buyer) == 2


async def test_idempotency_keys_are_per_caller(svc: Service) -> None:
    key = uid("key")
    a = await svc.pay(payment_body(uid("BUYER")), key=key, **svc.auth("payment:write", sub="client-a"))
    b = await svc.pay(payment_body(uid("BUYER")), key=key, **svc.auth("payment:write", sub="client-b"))
    assert a.status_code == b.status_code == 202
    assert a.json()["paymentId"] != b.json()["paymentId"]


async def test_invalid_idempotency_key_header_is_400(svc: Service) -> None:
    r = await svc.pay(payment_body(uid("BUYER")), key="x" * 256)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_health_schema_and_metrics_need_no_token(svc: Service) -> None:
    assert (await svc.client.get("/health/live")).json() == {"status": "ok"}
    ready = await svc.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok", "bus": "ok"}
    schema = (await svc.client.get("/schema/openapi.json")).json()
    post = schema["paths"]["/api/v1/payments"]["post"]
    assert "CreatePaymentRequest" in str(post["requestBody"])
    assert "CreatePaymentRequest" in schema["components"]["schemas"]
    metrics = await svc.client.get("/metrics")
    assert metrics.status_code == 200 and "http_request_duration_seconds" in metrics.text


async def test_unknown_route_and_method_are_problems(svc: Service) -> None:
    r = await svc.client.get("/api/v1/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = await svc.client.delete("/api/v1/payments", headers=svc.auth("ADMIN"))
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/problem+json")


async def test_twenty_concurrent_identical_posts_make_one_payment_one_psp_call_one_event(
    database: str, settings_for: Any
) -> None:
    psp = ScriptedAuthorizationGateway(AuthorizationOutcome.APPROVED)
    psp.gate = asyncio.Event()
    async with start_service(settings_for(database), psp_auth=psp) as svc:
        body = payment_body(uid("BUYER"))
        requests = [asyncio.create_task(svc.pay(body)) for _ in range(20)]
        await svc.until(lambda: len(psp.calls) >= 1)
        await asyncio.sleep(0.2)  # let every request reach the database while the PSP holds
        psp.gate.set()
        responses = await asyncio.gather(*requests)
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["paymentId"] for r in responses}) == 1
        pid = responses[0].json()["paymentId"]
        assert len(psp.calls) == 1
        assert await svc.fetchval("SELECT count(*) FROM payments WHERE buyer_id = $1", body["buyerId"]) == 1
        assert (
            await svc.fetchval(
                "SELECT count(*) FROM outbox WHERE event_type = 'payment_authorized' "
                "AND msg_key = (SELECT payment_id::text FROM payments WHERE buyer_id = $1)",
                body["buyerId"],
            )
            == 1
        )
        assert sum(1 for r in responses if r.headers.get("idempotent-replayed") == "true") == 19
        assert (await svc.get_payment(pid)).json()["status"] in ("AUTHORIZED", "CAPTURED")


async def test_twenty_concurrent_posts_with_one_key_make_one_payment(database: str, settings_for: Any) -> None:
    psp = ScriptedAuthorizationGateway(AuthorizationOutcome.APPROVED)
    psp.gate = asyncio.Event()
    async with start_service(settings_for(database), psp_auth=psp) as svc:
        body = payment_body(uid("BUYER"))
        key = uid("key")
        requests = [asyncio.create_task(svc.pay(body, key=key)) for _ in range(20)]
        await svc.until(lambda: len(psp.calls) >= 1)
        await asyncio.sleep(0.2)
        psp.gate.set()
        responses = await asyncio.gather(*requests)
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(202) >= 1 and set(statuses) <= {202, 409}
        assert all(r.json()["status"] == 409 for r in responses if r.status_code == 409)
        assert len(psp.calls) == 1
        replay = await svc.pay(body, key=key)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        assert await svc.fetchval("SELECT count(*) FROM payments WHERE buyer_id = $1", body["buyerId"]) == 1


async def test_database_down_is_503_with_retry_after(database: str, settings_for: Any) -> None:
    async with start_service(settings_for(database)) as svc:
        await svc.resources.pool.close()
        r = await svc.pay(payment_body(uid("BUYER")))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "asyncpg" not in r.text
        ready = await svc.client.get("/health/ready")
        assert ready.status_code == 503
        # reopen so the shutdown path can close it again
        svc.resources.pool = await __import__("asyncpg").create_pool(svc.resources.dsn, min_size=1, max_size=2)
