"""The OpenAPI document says what the server enforces (the schemathesis run in
tests/integration/test_openapi_contract.py checks the server against it)."""

from __future__ import annotations

from typing import Any

import pytest

from marketplace_pay.entrypoints.http import create_app

PUBLIC = {("get", "/health/live"), ("get", "/health/ready"), ("get", "/metrics")}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app().openapi_schema.to_schema()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in document["paths"].items() for m, op in item.items()]


def test_public_operations_say_so_and_the_others_need_a_bearer_token(document: dict[str, Any]) -> None:
    assert document["security"] == [{"bearer": []}]
    for method, path, op in operations(document):
        if (method, path) in PUBLIC:
            assert op["security"] == [], path
        else:
            assert "security" not in op, path  # the document's default: a bearer token
            assert {"401", "403"} <= set(op["responses"]), path


def test_every_error_is_a_documented_problem(document: dict[str, Any]) -> None:
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and status != "402":
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)
                schema = response["content"]["application/problem+json"]["schema"]
                if "$ref" in schema:
                    schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                assert {"type", "title", "status", "detail", "instance", "traceId"} <= set(schema["required"])


def test_operations_document_what_they_can_answer(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    assert statuses("post", "/api/v1/payments") == {
        "202",
        "402",
        "400",
        "401",
        "403",
        "409",
        "413",
        "415",
        "422",
        "503",
    }
    assert statuses("get", "/api/v1/payments/{payment_id}") == {"200", "401", "403", "404", "503"}
    assert statuses("post", "/api/v1/sellers") == {"201", "400", "401", "403", "409", "413", "415", "503"}
    assert statuses("get", "/api/v1/accounts/{account_code}/postings") == {"200", "400", "401", "403", "404", "503"}
    assert statuses("get", "/health/ready") == {"200", "503"}


def test_parameters_carry_the_constraints_the_server_enforces(document: dict[str, Any]) -> None:
    def params(method: str, path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in document["paths"][path][method]["parameters"]}

    key = params("post", "/api/v1/payments")["Idempotency-Key"]
    assert key["in"] == "header" and not key["required"] and key["schema"]["maxLength"] == 255
    page = params("get", "/api/v1/accounts/{account_code}/postings")
    assert page["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert page["after"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    assert page["account_code"]["schema"]["pattern"].startswith("^(?:")
    payment_id = params("get", "/api/v1/payments/{payment_id}")["payment_id"]["schema"]
    assert payment_id["pattern"] == "^pay_[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]$"
    body = document["paths"]["/api/v1/payments"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["example"]["value"]["paymentOrders"][0]["sellerId"] == "SELLER-111"


def test_links_lead_from_what_is_created_to_where_it_is_read(document: dict[str, Any]) -> None:
    created = document["paths"]["/api/v1/payments"]["post"]["responses"]["202"]
    assert created["links"]["GetPayment"] == {
        "operationId": "getPayment",
        "parameters": {"payment_id": "$response.body#/paymentId"},
    }
    assert created["headers"]["Location"]["required"] is True
    seller = document["paths"]["/api/v1/sellers"]["post"]["responses"]["201"]["links"]
    assert seller["GetSeller"]["operationId"] == "getSeller"
    ids = {op["operationId"] for _, _, op in operations(document)}
    assert {link["operationId"] for link in seller.values()} <= ids
