"""The bench's arithmetic and definitions, free of I/O: percentiles, when a payment counts as
settled, the settle-lag figures, the request body, and the printed table."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marketplace_pay.entrypoints.bench.wire import COUNTER_MARK

# payment statuses after which nothing happens to a payment any more
TERMINAL_STATUSES = ("CAPTURED", "CAPTURED_PARTIALLY", "CAPTURE_FAILED")
# a payment answered 202 while its authorization was pending can still end here: it never settles
DECLINED = "DECLINED"

# every figure of the JSON object, in the order of the table
FIGURES: tuple[tuple[str, str], ...] = (
    ("accepted_per_s", "payments/s answered 202 during the measured window"),
    ("latency_p50_ms", "POST latency, median (202s of requests due/sent in the window)"),
    ("latency_p90_ms", "POST latency, 90th percentile"),
    ("latency_p99_ms", "POST latency, 99th percentile"),
    ("settled_per_s", "payments/s whose last journal was written during the measured window"),
    ("settle_lag_p50_ms", "202 -> last journal, median (payments accepted in the window)"),
    ("settle_lag_p99_ms", "202 -> last journal, 99th percentile (null: >1 % never settled)"),
    ("settle_lag_first_third_p50_ms", "settle lag median, payments accepted in the window's first third"),
    ("settle_lag_last_third_p50_ms", "settle lag median, payments accepted in the window's last third"),
    ("settle_lag_growth", "last third / first third (about 1: the pipeline keeps up)"),
    ("peak_rss_mb", "peak RSS of the service process and its children, summed"),
    ("reconcile_clean", "`marketplace-pay reconcile` exited 0 after the drain"),
    ("pgbench_tps", "pgbench -N -c 8 -j 2 -T 15 on the same server, this run"),
    ("accepted_ratio", "accepted_per_s / pgbench_tps"),
    ("settled_ratio", "settled_per_s / pgbench_tps"),
    ("requests", "requests due (open loop) or sent (closed loop) in the window"),
    ("errors", "outcomes other than 202 of those requests, by status"),
    ("accepted", "payments accepted in the window"),
    ("settled", "payments settled in the window"),
    ("unsettled_after_drain", "accepted payments (whole run) not settled when the drain ended"),
    ("declined_after_accept", "accepted payments that ended DECLINED (pending authorization declined)"),
    ("drain_s", "seconds from the end of the load until every payment settled (or the bound)"),
    ("rows_written_per_payment", "rows inserted+updated+deleted in the service's database / payment"),
    ("wal_bytes_per_payment", "WAL the PostgreSQL server wrote / payment (server-wide)"),
    ("duration_s", "length of the measured window"),
    ("warmup_s", "load before the window, not measured"),
    ("mode", "open loop (rate) or closed loop (concurrency)"),
    ("rate", "requests/s offered (open loop)"),
    ("concurrency", "connections each with one request outstanding (closed loop)"),
    ("sellers_per_payment", "payment orders per payment"),
    ("scenario", "PSP simulator scenario"),
    ("workers", "service worker processes asked for (null: the service's default)"),
    ("service_processes", "most processes seen in the service's process tree"),
    ("service_cpu_pct", "CPU the service's processes used during the load, % of one core"),
    ("generator_cpu_pct", "CPU the load generator used, % of one core"),
    ("generator_cpu_us_per_request", "load generator CPU per request sent"),
    ("bench_cpu_pct", "CPU the bench's own process (polling, bookkeeping) used during the load, % of one core"),
    ("settle_poll_ms_mean", "time of one settlement polling round (the bench's own database load)"),
    ("db_clock_offset_ms", "database clock minus this host's clock"),
    ("serve_exit_code", "exit status of the service the bench started (--serve)"),
)
JSON_KEYS = tuple(name for name, _ in FIGURES)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values: the smallest value with at least p % of
    the values at or below it. None when there are none or when it falls on an infinity (a
    payment that never settled has an infinite lag: it cannot make a percentile look better)."""
    if not values:
        return None
    rank = max(1, math.ceil(len(values) * p / 100))
    value = values[rank - 1]
    return None if math.isinf(value) else value


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def commission_minor(amount_minor: int, commission_bps: int) -> int:
    """The platform's fee on an order: basis points of the amount, half up, in minor units."""
    return (amount_minor * commission_bps + 5000) // 10000


@dataclass(frozen=True, slots=True)
class OrderRow:
    payment_order_id: int
    seller_id: str
    amount_minor: int
    status: str


def is_settled(
    payment_id: int,
    status: str,
    orders: Sequence[OrderRow],
    journal_ids: Iterable[str],
    *,
    expected_orders: int,
    commission_bps: Mapping[str, int],
) -> bool:
    """A payment is settled when nothing more happens to it and the ledger holds all of it:
    its status is terminal, it has the orders it was created with, its authorization journal is
    written, and every order is closed in the ledger — captured (capture journal, plus the
    commission journal when the seller's fee on it is above zero) or failed (release journal).
    A seller whose commission rate is unknown is not held to a commission journal."""
    if status not in TERMINAL_STATUSES or len(orders) != expected_orders:
        return False
    journals = set(journal_ids)
    if f"AUTH:{payment_id}" not in journals:
        return False
    for order in orders:
        po = order.payment_order_id
        if order.status == "CAPTURED":
            if f"CAPTURE:{po}" not in journals:
                return False
            bps = commission_bps.get(order.seller_id)
            if bps is not None and commission_minor(order.amount_minor, bps) > 0 and f"COMMISSION:{po}" not in journals:
                return False
        elif order.status == "CAPTURE_FAILED":
            if f"AUTH_RELEASE:{po}" not in journals:
                return False
        else:
            return False
    return True


def order_amounts(sellers: Sequence[str]) -> list[tuple[str, int]]:
    """(seller, amount) lines of the bench's payments: 10.00, 20.00, ... EUR. Amounts ending in
    00 keep clear of the simulator's test values (a capture of an amount ending in 66 is
    declined, in 13 retried every time), so the PSP scenario alone decides."""
    return [(seller, 1000 * (i + 1)) for i, seller in enumerate(sellers)]


def payment_body(lines: Sequence[tuple[str, int]], run_id: str, currency: str = "EUR") -> bytes:
    """The POST body with the counter mark in buyerId and orderId: every request is a new
    payment, since (buyerId, orderId, totalAmount) identifies one and a repeat is only replayed."""
    body = {
        "buyerId": f"BENCH-{run_id}-{COUNTER_MARK.decode()}",
        "orderId": f"ORDER-{COUNTER_MARK.decode()}",
        "totalAmount": {"quantity": sum(q for _, q in lines), "currency": currency},
        "paymentOrders": [{"sellerId": s, "amount": {"quantity": q, "currency": currency}} for s, q in lines],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def settled_in_window(settled_at: Iterable[float], window_start: float, window_end: float, offset_s: float) -> int:
    """Settlements completed inside the window. Settle times are on the database clock, the
    window on this host's: the window moves by the clocks' offset (database minus host)."""
    return sum(1 for t in settled_at if window_start + offset_s <= t < window_end + offset_s)


def window_lags(
    accepted_at: Mapping[int, float],
    settled_at: Mapping[int, float],
    declined: Collection[int],
    window_start: float,
    window_end: float,
    offset_s: float,
) -> list[tuple[float, float]]:
    """(accept time, settle lag) of the payments accepted inside the window: lag = settle time
    (database clock) - accept time moved onto the database clock; infinite if it never settled.
    A payment declined after its 202 has nothing to settle and is left out."""
    lags = []
    for payment_id, at in accepted_at.items():
        if not window_start <= at < window_end or payment_id in declined:
            continue
        settle = settled_at.get(payment_id)
        # the 202 is read after the server committed, so an early journal can predate it by a hair
        lags.append((at, max(0.0, settle - (at + offset_s)) if settle is not None else math.inf))
    return lags


@dataclass(frozen=True, slots=True)
class LagFigures:
    p50_s: float | None
    p99_s: float | None
    first_third_p50_s: float | None
    last_third_p50_s: float | None
    growth: float | None


def lag_figures(accepted: Sequence[tuple[float, float]], window_start: float, window_end: float) -> LagFigures:
    """`accepted`: (accept time, settle lag in s, inf if it never settled) of the payments
    accepted inside [window_start, window_end). Growth compares the lag of the first third of the
    window with the last third: a pipeline that keeps up has about the same lag in both."""
    lags = sorted(lag for _, lag in accepted)
    third = (window_end - window_start) / 3
    first = sorted(lag for t, lag in accepted if t < window_start + third)
    last = sorted(lag for t, lag in accepted if t >= window_end - third)
    f50, l50 = percentile(first, 50), percentile(last, 50)
    growth = round(l50 / f50, 2) if f50 and l50 is not None else None
    return LagFigures(percentile(lags, 50), percentile(lags, 99), f50, l50, growth)


def per_s(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def table(figures: Mapping[str, Any]) -> str:
    rows = [(name, _cell(figures.get(name)), meaning) for name, meaning in FIGURES]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{w0}}  {'value':>{w1}}  meaning", f"{'-' * w0}  {'-' * w1}  {'-' * 7}"]
    lines += [f"{n:<{w0}}  {v:>{w1}}  {m}" for n, v, m in rows]
    return "\n".join(lines)
