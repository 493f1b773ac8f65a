"""Hostile input at every door: each is a 4xx problem+json — never a 500 — and writes nothing.

One table per endpoint family. The requests go through the ASGI app in process, so bytes that
an HTTP client library would refuse to send (NUL in a header, invalid UTF-8) still arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.harness import Service, payment_body, start_service


@pytest.fixture(scope="module")
async def svc(
    databases: Any, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """One service and database for the module: every test checks that nothing was written."""
    database = await databases.create()
    settings = make_settings(database, redis_url, f"{redis_prefix}hostile:", str(tmp_path_factory.mktemp("hostile")))
    async with start_service(settings) as service:
        yield service


def auth_headers(svc: Service, role: str) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in svc.auth(role).items()]


def assert_problem(r: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    problem = r.json()
    assert {"type", "title", "status", "detail", "instance", "traceId"} <= set(problem)
    assert problem["status"] == r.status_code
    return problem


async def counts(svc: Service) -> tuple[int, int, int]:
    return (
        await svc.fetchval("SELECT count(*) FROM payments"),
        await svc.fetchval("SELECT count(*) FROM accounts"),
        await svc.fetchval("SELECT count(*) FROM outbox"),
    )


def payment_json(**fields: bytes) -> bytes:
    """A valid payment body as raw JSON, with the (first) value of each named field replaced by
    raw JSON bytes."""
    raw = json.dumps(payment_body("BUYER-HOSTILE", "ORDER-HOSTILE")).encode()
    for name, value in fields.items():
        raw = raw.replace(f'"{name}": "'.encode(), f'"{name}": '.encode() + value + b', "_was": "', 1)
    return raw


DEEP = b"[" * 3000 + b"]" * 3000

PAYMENT_BODIES = {
    "NUL in buyerId": payment_json(buyerId=rb'"a\u0000b"'),
    "NUL in orderId": payment_json(orderId=rb'"\u0000"'),
    "NUL in sellerId": payment_json(sellerId=rb'"SELLER-111\u0000"'),
    "C1 control in buyerId": payment_json(buyerId=rb'"a\u0085b"'),
    "DEL in buyerId": payment_json(buyerId=b'"a\x7fb"'),
    "trailing newline in orderId": payment_json(orderId=rb'"ORDER-1\n"'),
    "tab-only buyerId": payment_json(buyerId=rb'"\t"'),
    "BOM-only buyerId": payment_json(buyerId=rb'"\ufeff"'),
    "lone high surrogate": payment_json(buyerId=rb'"\ud800"'),
    "lone low surrogate": payment_json(sellerId=rb'"a\udc00b"'),
    "surrogate as UTF-8 bytes": payment_json(buyerId=b'"\xed\xa0\x80"'),
    "invalid UTF-8 in a string": payment_json(buyerId=b'"\xff\xfe"'),
    "nested 3000 deep in an unknown field": b'{"extra": ' + DEEP + b", " + payment_json()[1:],
    "nested 3000 deep": DEEP,
    "objects nested 40 deep": b'{"a":' * 40 + b"1" + b"}" * 40,
    "malformed after a number": b"4\x18\xffX",
    "quantity 1e400": json.dumps(payment_body("BUYER-HOSTILE")).replace("3000", "1e400").encode(),
    "quantity 3000.5": json.dumps(payment_body("BUYER-HOSTILE")).replace("3000", "3000.5").encode(),
}


@pytest.mark.parametrize("raw", PAYMENT_BODIES.values(), ids=PAYMENT_BODIES.keys())
async def test_hostile_payment_bodies(svc: Service, raw: bytes) -> None:
    before = await counts(svc)
    r = await svc.client.post(
        "/api/v1/payments", content=raw, headers=svc.auth("payment:write") | {"content-type": "application/json"}
    )
    assert_problem(r, 400)
    assert await counts(svc) == before


PAYMENT_HEADERS: dict[str, list[tuple[bytes, bytes]]] = {
    "Idempotency-Key not UTF-8": [(b"idempotency-key", b"\xff\xfe")],
    "Idempotency-Key with NUL": [(b"idempotency-key", b"a\x00b")],
    "Idempotency-Key with a control": [(b"idempotency-key", b"a\x1fb")],
    "Idempotency-Key empty": [(b"idempotency-key", b"")],
    "Idempotency-Key 256 long": [(b"idempotency-key", b"k" * 256)],
    "Content-Type not UTF-8": [(b"content-type", b"\xff/\xfe")],
}


@pytest.mark.parametrize("headers", PAYMENT_HEADERS.values(), ids=PAYMENT_HEADERS.keys())
async def test_hostile_payment_headers(svc: Service, headers: list[tuple[bytes, bytes]]) -> None:
    before = await counts(svc)
    base = auth_headers(svc, "payment:write")
    if not any(k == b"content-type" for k, _ in headers):
        base.append((b"content-type", b"application/json"))
    r = await svc.client.post(
        "/api/v1/payments", content=json.dumps(payment_body("BUYER-HDR")).encode(), headers=base + headers
    )
    assert_problem(r, 400, 415)
    assert await counts(svc) == before


@pytest.mark.parametrize(
    "traceparent",
    [
        b"\xff\xfe",
        b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
        b"not-a-traceparent",
        b"ff-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
        b"x" * 10_000,
    ],
    ids=["not UTF-8", "all-zero ids", "garbage", "version ff", "10 kB"],
)
async def test_a_broken_traceparent_is_ignored(svc: Service, traceparent: bytes) -> None:
    r = await svc.client.get("/health/live", headers=[(b"traceparent", traceparent)])
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(r.headers["x-trace-id"]) == 32
    r = await svc.client.get(
        "/api/v1/payments/pay_AAAAAAAAAAE", headers=[*auth_headers(svc, "payment:read"), (b"traceparent", traceparent)]
    )
    assert_problem(r, 404)


async def test_a_valid_traceparent_is_joined(svc: Service) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await svc.client.get("/health/live", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.headers["x-trace-id"] == trace_id


READ_PATHS = {
    "payment id with NUL": "/api/v1/payments/pay_AAAAAAAAA%00E",
    "payment id not canonical": "/api/v1/payments/pay_AAAAAAAAAAB",
    "payment id as surrogate bytes": "/api/v1/payments/%ED%A0%80",
    "journal entries, NUL": "/api/v1/payments/%00/journal-entries",
    "seller with NUL": "/api/v1/sellers/a%00b",
    "seller with C1 control": "/api/v1/sellers/a%C2%85b",
    "seller with a space": "/api/v1/sellers/a%20b",
    "seller 129 long": "/api/v1/sellers/" + "s" * 129,
    "seller balance with NUL": "/api/v1/sellers/%00/balance",
    "account with NUL": "/api/v1/accounts/a%00/balance",
    "account of no type": "/api/v1/accounts/X/balance",
    "account with NUL entity": "/api/v1/accounts/MERCHANT_PAYABLE.a%00.EUR/balance",
    "postings of an account with NUL": "/api/v1/accounts/MERCHANT_PAYABLE.%00.EUR/postings",
    "postings, bad account and bad limit": "/api/v1/accounts/X/postings?limit=%C2%B2",
}


@pytest.mark.parametrize("path", READ_PATHS.values(), ids=READ_PATHS.keys())
async def test_ids_that_cannot_exist_are_404(svc: Service, path: str) -> None:
    r = await svc.client.get(path, headers=svc.auth("ADMIN"))
    problem = assert_problem(r, 404)
    assert "\x00" not in problem["detail"] and "\x00" not in problem["instance"]


POSTINGS = "/api/v1/accounts/PSP_RECEIVABLES.GLOBAL.EUR/postings"
QUERIES = {
    "limit superscript two": "limit=%C2%B2",
    "limit Arabic-Indic digit": "limit=%D9%A3",
    "limit fullwidth digit": "limit=%EF%BC%95",
    "limit empty": "limit=",
    "limit zero": "limit=0",
    "limit 501": "limit=501",
    "limit plus sign": "limit=%2B5",
    "limit with space": "limit=%205",
    "limit underscore": "limit=1_0",
    "limit negative": "limit=-1",
    "limit huge": "limit=" + "9" * 400,
    "after beyond int64": "after=9223372036854775808",
    "after 19 nines": "after=9999999999999999999",
    "after 20 digits": "after=99999999999999999999",
    "after negative": "after=-1",
    "after fraction": "after=1.5",
    "after not UTF-8": "after=%FF",
    "after NUL": "after=1%00",
}


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
async def test_hostile_query_parameters_are_400(svc: Service, query: str) -> None:
    r = await svc.client.get(f"{POSTINGS}?{query}", headers=svc.auth("FINANCE"))
    problem = assert_problem(r, 400)
    assert problem["errors"][0]["field"] in ("limit", "after")


async def test_bounds_of_query_parameters_are_accepted(svc: Service) -> None:
    for query in ("limit=1", "limit=500", "limit=050", "after=0", "after=9223372036854775807"):
        r = await svc.client.get(f"{POSTINGS}?{query}", headers=svc.auth("FINANCE"))
        assert r.status_code == 200, (query, r.text)


SELLER_BODIES = {
    "NUL in sellerId": rb'{"sellerId": "a\u0000b", "currency": "EUR", "commissionBps": 1}',
    "C1 control in sellerId": rb'{"sellerId": "a\u009fb", "currency": "EUR", "commissionBps": 1}',
    "trailing newline": rb'{"sellerId": "SELLER-NL\n", "currency": "EUR", "commissionBps": 1}',
    "slash in sellerId": rb'{"sellerId": "a/b", "currency": "EUR", "commissionBps": 1}',
    "no-break space in sellerId": rb'{"sellerId": "a\u00a0b", "currency": "EUR", "commissionBps": 1}',
    "reserved GLOBAL": rb'{"sellerId": "GLOBAL", "currency": "EUR", "commissionBps": 1}',
    "reserved me": rb'{"sellerId": "me", "currency": "EUR", "commissionBps": 1}',
    "dot-dot": rb'{"sellerId": "..", "currency": "EUR", "commissionBps": 1}',
    "lone surrogate": rb'{"sellerId": "\ud800", "currency": "EUR", "commissionBps": 1}',
    "invalid UTF-8": b'{"sellerId": "\xff", "currency": "EUR", "commissionBps": 1}',
    "nested 3000 deep": b'{"sellerId": "S-DEEP", "currency": "EUR", "commissionBps": 1, "x": ' + DEEP + b"}",
    "commissionBps 1e400": rb'{"sellerId": "S-BIG", "currency": "EUR", "commissionBps": 1e400}',
    "commissionBps 2.5": rb'{"sellerId": "S-FRAC", "currency": "EUR", "commissionBps": 2.5}',
}


@pytest.mark.parametrize("raw", SELLER_BODIES.values(), ids=SELLER_BODIES.keys())
async def test_hostile_seller_bodies(svc: Service, raw: bytes) -> None:
    before = await counts(svc)
    r = await svc.client.post(
        "/api/v1/sellers", content=raw, headers=svc.auth("ADMIN") | {"content-type": "application/json"}
    )
    problem = assert_problem(r, 400)
    assert problem["errors"][0]["field"] in ("sellerId", "commissionBps", "body")
    assert await counts(svc) == before


@pytest.mark.parametrize(
    "raw",
    [rb'{"status": "SUSPENDED\u0000"}', b'{"status": "\xff"}', b'{"x": ' + DEEP + b"}", b"\x00"],
    ids=["NUL in status", "invalid UTF-8", "nested 3000 deep", "NUL body"],
)
async def test_hostile_seller_updates_change_nothing(svc: Service, raw: bytes) -> None:
    r = await svc.client.patch(
        "/api/v1/sellers/SELLER-333", content=raw, headers=svc.auth("ADMIN") | {"content-type": "application/json"}
    )
    assert_problem(r, 400)
    assert await svc.fetchval("SELECT status FROM accounts WHERE entity_id = 'SELLER-333'") == "ACTIVE"
    r = await svc.client.patch("/api/v1/sellers/a%00b", json={"status": "SUSPENDED"}, headers=svc.auth("ADMIN"))
    assert_problem(r, 404)


async def test_a_whole_number_written_as_a_float_is_that_integer(svc: Service) -> None:
    body = json.dumps(payment_body("BUYER-FLOAT-1", "ORDER-FLOAT-1")).replace("3000", "3000.0").replace("1000", "1e3")
    r = await svc.client.post(
        "/api/v1/payments",
        content=body.encode(),
        headers=svc.auth("payment:write") | {"content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["totalAmount"] == {"quantity": 3000, "currency": "EUR"}


async def test_a_seller_id_outside_latin_1_gets_a_usable_location(svc: Service) -> None:
    r = await svc.client.post(
        "/api/v1/sellers",
        json={"sellerId": "SELLER-Ωμέγα", "currency": "EUR", "commissionBps": 0},
        headers=svc.auth("ADMIN"),
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/api/v1/sellers/SELLER-%CE%A9%CE%BC%CE%AD%CE%B3%CE%B1"
    assert (await svc.client.get(r.headers["location"], headers=svc.auth("ADMIN"))).json()["sellerId"] == "SELLER-Ωμέγα"


async def test_options_lists_every_method_of_a_path(svc: Service) -> None:
    r = await svc.client.options("/api/v1/sellers/SELLER-111")
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, PATCH"
    r = await svc.client.delete("/api/v1/sellers/SELLER-111", headers=svc.auth("ADMIN"))
    assert_problem(r, 405)
    assert set(r.headers["allow"].split(", ")) == {"GET", "OPTIONS", "PATCH"}


@pytest.mark.parametrize("claim", ["a\x00b", "\ud800", "a/b", " "], ids=["NUL", "lone surrogate", "slash", "blank"])
async def test_a_seller_id_claim_that_names_no_seller_is_403(svc: Service, claim: str) -> None:
    headers = svc.auth("SELLER", seller=claim)
    assert_problem(await svc.client.get("/api/v1/sellers/me/balance", headers=headers), 403)
    r = await svc.client.get("/api/v1/accounts/MERCHANT_PAYABLE.SELLER-111.EUR/postings", headers=headers)
    assert_problem(r, 403)
