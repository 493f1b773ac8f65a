"""The bench's pure parts: the request body, percentiles, the settled definition, the lag
figures and the output."""

from __future__ import annotations

import json
import math

import pytest

from marketplace_pay.entrypoints.bench.figures import (
    JSON_KEYS,
    OrderRow,
    commission_minor,
    is_settled,
    lag_figures,
    order_amounts,
    payment_body,
    percentile,
    ratio,
    settled_in_window,
    table,
    window_lags,
)
from marketplace_pay.entrypoints.bench.probes import parse_tps, with_database
from marketplace_pay.entrypoints.bench.settle import payment_id_from_location
from marketplace_pay.entrypoints.bench.wire import RequestTemplate
from marketplace_pay.shared.ids import public_payment_id

# --- the request ----------------------------------------------------------------------------


def test_every_request_is_a_new_payment_of_the_chosen_sellers() -> None:
    body = payment_body(order_amounts(["SELLER-111", "SELLER-222"]), "run1")
    t = RequestTemplate.build("POST", "/api/v1/payments", "h", {}, body)
    first, second = (json.loads(t.render(n).partition(b"\r\n\r\n")[2]) for n in (1, 2))
    assert first == {
        "buyerId": "BENCH-run1-000000000001",
        "orderId": "ORDER-000000000001",
        "totalAmount": {"quantity": 3000, "currency": "EUR"},
        "paymentOrders": [
            {"sellerId": "SELLER-111", "amount": {"quantity": 1000, "currency": "EUR"}},
            {"sellerId": "SELLER-222", "amount": {"quantity": 2000, "currency": "EUR"}},
        ],
    }
    # (buyerId, orderId, totalAmount) identifies a payment: each request must differ in it
    assert (first["buyerId"], first["orderId"]) != (second["buyerId"], second["orderId"])


def test_bench_amounts_keep_clear_of_the_simulators_forced_outcomes() -> None:
    lines = order_amounts([f"S{i}" for i in range(100)])
    assert all(q % 100 not in (13, 66) for _, q in lines)
    assert sum(q for _, q in lines) % 100 not in (13, 66)


def test_location_gives_the_internal_payment_id() -> None:
    assert payment_id_from_location(f"/api/v1/payments/{public_payment_id(251388470413512704)}".encode()) == (
        251388470413512704
    )


# --- percentiles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 99, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # nearest rank: ceil(0.5 * 4) = 2nd
        ([1.0, 2.0, 3.0, 4.0], 51, 3.0),
        ([float(i) for i in range(1, 101)], 90, 90.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 100, 100.0),
        ([1.0] * 99 + [math.inf], 99, 1.0),  # one never settled in 100: p99 still defined
        ([1.0] * 98 + [math.inf] * 2, 99, None),  # two: p99 is unknown, not flattering
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_ratio_needs_a_baseline() -> None:
    assert ratio(500.0, 2000.0) == 0.25
    assert ratio(500.0, None) is None
    assert ratio(None, 2000.0) is None
    assert ratio(500.0, 0.0) is None


# --- when a payment is settled --------------------------------------------------------------

PID = 100
BPS = {"S-5": 500, "S-0": 0}


def orders(*rows: tuple[int, str, int, str]) -> list[OrderRow]:
    return [OrderRow(*r) for r in rows]


CAPTURED_BOTH = orders((1, "S-5", 1000, "CAPTURED"), (2, "S-0", 2000, "CAPTURED"))
FULL_LEDGER = {"AUTH:100", "CAPTURE:1", "COMMISSION:1", "CAPTURE:2"}


@pytest.mark.parametrize(
    ("status", "order_rows", "journals", "settled"),
    [
        # terminal, every journal there (no commission journal for a 0 bps seller)
        ("CAPTURED", CAPTURED_BOTH, FULL_LEDGER, True),
        # the ledger is behind
        ("CAPTURED", CAPTURED_BOTH, FULL_LEDGER - {"AUTH:100"}, False),
        ("CAPTURED", CAPTURED_BOTH, FULL_LEDGER - {"CAPTURE:2"}, False),
        ("CAPTURED", CAPTURED_BOTH, FULL_LEDGER - {"COMMISSION:1"}, False),
        # not terminal yet, even with journals
        ("AUTHORIZED", CAPTURED_BOTH, FULL_LEDGER, False),
        ("PENDING_AUTH", [], set(), False),
        ("DECLINED", [], set(), False),
        # a failed order is closed by its release journal
        (
            "CAPTURED_PARTIALLY",
            orders((1, "S-5", 1000, "CAPTURED"), (2, "S-0", 2000, "CAPTURE_FAILED")),
            {"AUTH:100", "CAPTURE:1", "COMMISSION:1", "AUTH_RELEASE:2"},
            True,
        ),
        (
            "CAPTURE_FAILED",
            orders((1, "S-5", 1000, "CAPTURE_FAILED"), (2, "S-0", 2000, "CAPTURE_FAILED")),
            {"AUTH:100", "AUTH_RELEASE:1"},
            False,
        ),
        # an order still open cannot be settled, whatever the payment says
        ("CAPTURED", orders((1, "S-5", 1000, "CAPTURED"), (2, "S-0", 2000, "PENDING_CAPTURE")), FULL_LEDGER, False),
        # orders missing: not the payment the bench created
        ("CAPTURED", CAPTURED_BOTH[:1], {"AUTH:100", "CAPTURE:1", "COMMISSION:1"}, False),
        # a seller of unknown rate is not held to a commission journal
        (
            "CAPTURED",
            orders((1, "S-?", 1000, "CAPTURED"), (2, "S-0", 2000, "CAPTURED")),
            {"AUTH:100", "CAPTURE:1", "CAPTURE:2"},
            True,
        ),
    ],
)
def test_settled_means_terminal_and_every_journal_in_the_ledger(
    status: str, order_rows: list[OrderRow], journals: set[str], settled: bool
) -> None:
    assert is_settled(PID, status, order_rows, journals, expected_orders=2, commission_bps=BPS) is settled


def test_a_fee_that_rounds_to_zero_needs_no_commission_journal() -> None:
    assert commission_minor(9, 500) == 0  # 0.45 minor units, half up -> 0
    assert commission_minor(10, 500) == 1  # 0.5 -> 1
    tiny = orders((1, "S-5", 9, "CAPTURED"))
    assert is_settled(PID, "CAPTURED", tiny, {"AUTH:100", "CAPTURE:1"}, expected_orders=1, commission_bps=BPS)


# --- lag figures ----------------------------------------------------------------------------


def test_settled_per_s_counts_settlements_inside_the_window_on_the_database_clock() -> None:
    # window [100, 110) on this host; the database clock runs 2 s ahead: [102, 112) there
    settle_times = [100.5, 110.5, 111.99, 112.0]
    assert settled_in_window(settle_times, 100.0, 110.0, offset_s=2.0) == 2  # 110.5 and 111.99
    assert settled_in_window(settle_times, 100.0, 110.0, offset_s=0.0) == 1  # 100.5


def test_settle_lag_runs_from_the_202_to_the_last_journal_for_payments_accepted_in_the_window() -> None:
    accepted = {1: 99.0, 2: 100.0, 3: 105.0, 4: 106.0, 5: 109.9, 6: 110.0}
    settled = {1: 101.0, 2: 102.5, 3: 107.0, 6: 111.0, 5: 111.9}
    lags = window_lags(accepted, settled, declined={4}, window_start=100.0, window_end=110.0, offset_s=2.0)
    # 1 and 6 were accepted outside the window; 4 was declined; 3 settled "before" its 202
    # once the clocks are aligned (an early journal read late): 0, never negative
    assert lags == [(100.0, 0.5), (105.0, 0.0), (109.9, 0.0)]
    no_offset = window_lags(accepted, {}, declined=set(), window_start=100.0, window_end=110.0, offset_s=0.0)
    assert [lag for _, lag in no_offset] == [math.inf] * 4


def test_lag_growth_compares_the_first_and_the_last_third_of_the_window() -> None:
    # window [0, 30): lag 0.1 s early on, 0.4 s at the end
    accepted = [(t + 0.5, 0.1) for t in range(10)] + [(t + 0.5, 0.2) for t in range(10, 20)]
    accepted += [(t + 0.5, 0.4) for t in range(20, 30)]
    lag = lag_figures(accepted, 0.0, 30.0)
    assert (lag.first_third_p50_s, lag.last_third_p50_s, lag.growth) == (0.1, 0.4, 4.0)
    assert lag.p50_s == 0.2
    assert lag.p99_s == 0.4


def test_payments_that_never_settled_make_the_lag_unknown_rather_than_small() -> None:
    accepted = [(1.0, 0.1)] * 90 + [(29.0, math.inf)] * 10
    lag = lag_figures(accepted, 0.0, 30.0)
    assert lag.p50_s == 0.1
    assert lag.p99_s is None
    assert lag.last_third_p50_s is None
    assert lag.growth is None


# --- output ---------------------------------------------------------------------------------


def test_the_table_has_a_row_per_json_key() -> None:
    text = table({"accepted_per_s": 1234.5, "reconcile_clean": True, "errors": {"503": 2}})
    rows = text.splitlines()[2:]
    assert [r.split()[0] for r in rows] == list(JSON_KEYS)
    assert "1,234.5" in rows[0]
    assert "503: 2" in text


def test_pgbench_tps_is_read_from_its_summary() -> None:
    out = (
        "number of failed transactions: 0 (0.000%)\nlatency average = 4.1 ms\n"
        "tps = 1942.335918 (without initial connection time)\n"
    )
    assert parse_tps(out) == 1942.335918
    assert parse_tps("pgbench: error: connection refused") is None


def test_the_baseline_database_is_the_same_server_with_another_name() -> None:
    assert with_database("postgresql://u:p@h:5432/app?sslmode=disable", "scratch") == (
        "postgresql://u:p@h:5432/scratch?sslmode=disable"
    )
