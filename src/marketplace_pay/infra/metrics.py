"""Prometheus metrics, exposed at /metrics. Definitions only; no I/O."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Outbox rows not yet sent")
OUTBOX_PUBLISHED = Counter("outbox_published_total", "Outbox rows published and marked sent")
OUTBOX_PUBLISH_FAILURES = Counter("outbox_publish_failures_total", "Outbox batches that failed to publish")
PSP_CALLS = Counter("psp_calls_total", "PSP calls by operation and result", ["operation", "result"])
RETRY_QUEUE_SIZE = Gauge("retry_queue_size", "Capture retries waiting in Redis", ["state"])
CONSUMER_LAG = Gauge(
    "consumer_lag", "Kafka consumer lag (records) per consumer group and partition", ["consumer", "topic", "partition"]
)
BALANCE_DRIFT = Gauge("balance_drift_accounts", "Accounts whose balance differs from the sum of their postings")
BALANCE_DRIFT_MINOR = Gauge("balance_drift_minor_units", "Sum of absolute balance differences, minor units")
HANDLED_EVENTS = Counter("handler_events_total", "Events handled", ["consumer"])
HANDLER_FAILURES = Counter("handler_failures_total", "Handler failures", ["consumer", "kind"])
HANDLER_SECONDS = Histogram(
    "handler_batch_seconds",
    "Handler batch duration",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
DEAD_LETTERS = Counter("dead_letters_total", "Events dead-lettered", ["consumer"])
DEAD_LETTERS_WAITING = Gauge("dead_letters_waiting", "Dead letters not replayed yet", ["consumer"])
STUCK_ORDERS = Gauge(
    "payment_orders_stuck", "Open payment orders that have not moved for longer than their schedule allows"
)
STUCK_REDRIVEN = Counter("payment_orders_redriven_total", "Stuck payment orders the sweeper drove again")
PSP_UNKNOWN = Gauge("psp_outcome_unknown_orders", "Payment orders whose last PSP call went unanswered")
OVERLAY_SKIPPED = Counter(
    "balance_overlay_skipped_entries_total",
    "Postings not added to the Redis overlay (Redis down); the fold restores them",
)
PSP_UNKNOWN_ANSWERS = Counter(
    "psp_unknown_answers_total", "PSP calls that got no answer (timeout, unreachable)", ["operation"]
)
PAYMENTS_CREATED = Counter("payments_created_total", "Payments created, by authorization result", ["status"])
# -- payouts and PSP settlement ------------------------------------------------------------------
PAYOUTS = Counter("payouts_total", "Seller payouts by outcome: created, paid, failed (money returned)", ["outcome"])
BANK_CALLS = Counter(
    "bank_calls_total", "Calls to the (simulated) bank by operation and result", ["operation", "result"]
)
BANK_UNKNOWN_ANSWERS = Counter(
    "bank_unknown_answers_total", "Bank calls that got no answer (timeout, unreachable): asked again", ["operation"]
)
PAYOUTS_DISPATCHED = Counter("payouts_dispatched_total", "Bank calls of payouts dispatched again (retries, re-drives)")
SETTLEMENTS = Counter("settlements_total", "PSP settlements recorded", ["currency"])
SETTLED_GROSS_MINOR = Counter(
    "settlement_gross_minor_units_total", "Captured minus refunded money settled by the PSP, minor units", ["currency"]
)
SETTLEMENT_FEES_MINOR = Counter(
    "settlement_fee_minor_units_total", "The PSP's fees on settlements, minor units", ["currency"]
)
