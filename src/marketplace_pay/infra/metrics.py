"""Prometheus metrics, exposed at /metrics. Definitions and the exposition; no other I/O.

Names follow Prometheus' conventions: one `marketplace_pay_` prefix, the unit last and in base
units (`_seconds`), `_total` on counters, and label values drawn from sets fixed by the code —
HTTP method and route template (not the path), consumer, topic, partition (bounded by the
topic's partition count), PSP operation and result — never ids, amounts or error texts.

**Several worker processes** (`serve --workers N`): prometheus-client keeps values per process,
so `/metrics` would answer for whichever worker took the scrape. `serve` therefore gives the
workers a fresh directory in `PROMETHEUS_MULTIPROC_DIR` before it starts them; every worker
writes its values there and any worker answers a scrape with all of them: counters and
histograms summed, gauges as their `multiprocess_mode` says. Our gauges are facts about the
cluster read from PostgreSQL, Redis or Kafka by jobs that any worker may run, so the value of the
latest run is the truth (`mostrecent`); the worker count is summed over live workers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_P = "marketplace_pay_"

# With several workers every metric update asks the process id, to notice a fork that would
# need fresh files; that is a system call per update, a dozen per payment. The id is kept here
# instead and refreshed in a forked child, which is the only way it can change.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _cached_pid() -> int:
    return _pid


os.register_at_fork(after_in_child=_refresh_pid)
if os.environ.get(MULTIPROC_DIR_ENV):  # the metrics below are created after this line
    values.ValueClass = values.MultiProcessValue(process_identifier=_cached_pid)  # type: ignore[no-untyped-call]

# -- HTTP ---------------------------------------------------------------------------------------

HTTP_LATENCY = Histogram(
    _P + "http_request_duration_seconds",
    "HTTP request latency, first byte handled to last byte sent, by method, route template and status code",
    ["method", "route", "code"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_method(method: str) -> str:
    """The method as a label value: anything a client invents counts as OTHER."""
    return method if method in HTTP_METHODS else "OTHER"


# -- payments -----------------------------------------------------------------------------------

PAYMENTS_CREATED = Counter(
    _P + "payments_created",
    "Payments created (not replays), by the status they were answered with: AUTHORIZED, DECLINED, PENDING_AUTH",
    ["status"],
)
ORDERS_SETTLED = Counter(
    _P + "payment_orders_settled",
    "Payment orders whose final journal (CAPTURE or AUTH_RELEASE) the ledger recorded, by final status",
    ["status"],
)
SETTLE_LAG = Histogram(
    _P + "settle_lag_seconds",
    "From a payment's creation (its id) to the ledger recording the final journal of one of its orders",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
PSP_CALLS = Counter(
    _P + "psp_calls",
    "PSP calls by operation and result; TIMEOUT: the caller gave up before the answer",
    ["operation", "result"],
)
PSP_UNKNOWN_ANSWERS = Counter(
    _P + "psp_unanswered_calls",
    "Capture calls that got no answer in time (timeout, PSP unreachable): outcome unknown, asked again later",
    ["operation"],
)
PSP_UNKNOWN = Gauge(
    _P + "psp_outcome_unknown_payment_orders",
    "Payment orders waiting for a retry whose last PSP call went unanswered",
    multiprocess_mode="mostrecent",
)
RETRY_QUEUE_SIZE = Gauge(
    _P + "retry_queue_items",
    "Capture retries in Redis: waiting for their time, or taken by a dispatcher and not yet acknowledged",
    ["state"],
    multiprocess_mode="mostrecent",
)
STUCK_ORDERS = Gauge(
    _P + "stuck_payment_orders",
    "Open payment orders that have not moved for longer than their schedule allows",
    multiprocess_mode="mostrecent",
)
STUCK_REDRIVEN = Counter(_P + "stuck_payment_orders_redriven", "Stuck payment orders the sweeper drove again")
REFUND_OUTCOMES = Counter(_P + "refund_outcomes", "Refunds that reached a final status at the PSP", ["result"])
PAYOUT_OUTCOMES = Counter(_P + "payout_outcomes", "Seller payouts that reached a final status at the bank", ["result"])

# -- payouts and PSP settlement -----------------------------------------------------------------

PAYOUTS_CREATED = Counter(_P + "payouts_created", "Seller payouts created (their money set aside at once)")
BANK_CALLS = Counter(
    _P + "bank_calls", "Calls to the (simulated) bank by operation and result", ["operation", "result"]
)
BANK_UNANSWERED_CALLS = Counter(
    _P + "bank_unanswered_calls", "Bank calls that got no answer (timeout, unreachable): asked again", ["operation"]
)
PAYOUTS_DISPATCHED = Counter(_P + "payouts_dispatched", "Bank calls of payouts dispatched again (retries, re-drives)")
SETTLEMENTS = Counter(_P + "settlements", "PSP settlements recorded", ["currency"])
SETTLED_GROSS_MINOR = Counter(
    _P + "settlement_gross_minor_units", "Captured minus refunded money settled by the PSP, minor units", ["currency"]
)
SETTLEMENT_FEES_MINOR = Counter(
    _P + "settlement_fee_minor_units", "The PSP's fees on settlements, minor units", ["currency"]
)

# -- outbox, bus, handlers ----------------------------------------------------------------------

OUTBOX_BACKLOG = Gauge(
    _P + "outbox_backlog_events",
    "Committed outbox events not yet delivered (behind a shard's saved cursor)",
    multiprocess_mode="mostrecent",
)
OUTBOX_PUBLISHED = Counter(_P + "outbox_published_events", "Outbox events published and durable on the bus")
OUTBOX_PUBLISH_FAILURES = Counter(
    _P + "outbox_publish_failures", "Outbox batches the bus did not take (published again)"
)
HANDLED_EVENTS = Counter(_P + "handled_events", "Events handled, by consumer", ["consumer"])
HANDLER_FAILURES = Counter(
    _P + "handler_failures",
    "Handler runs that failed, by consumer and kind (transient: retried without limit)",
    ["consumer", "kind"],
)
HANDLER_SECONDS = Histogram(
    _P + "handler_batch_duration_seconds",
    "Duration of one handler call on a batch of events, by consumer",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    _P + "consumer_lag_records",
    "Kafka records not yet consumed, per consumer group, topic and partition (partitions bounded by the topic)",
    ["consumer", "topic", "partition"],
    multiprocess_mode="mostrecent",
)
DEAD_LETTERS = Counter(_P + "dead_letters", "Events a consumer gave up on and kept in dead_letters", ["consumer"])
DEAD_LETTERS_WAITING = Gauge(
    _P + "dead_letters_waiting",
    "Dead letters not replayed yet, per consumer",
    ["consumer"],
    multiprocess_mode="mostrecent",
)

# -- balances -----------------------------------------------------------------------------------

BALANCE_DRIFT = Gauge(
    _P + "balance_drift_accounts",
    "Accounts whose balance differed from the sum of their postings at the last reconciliation",
    multiprocess_mode="mostrecent",
)
BALANCE_DRIFT_MINOR = Gauge(
    _P + "balance_drift_minor_units",
    "Sum of absolute balance differences at the last reconciliation, in minor units of money",
    multiprocess_mode="mostrecent",
)
RECONCILIATION_DIFFERENCES = Gauge(
    _P + "reconciliation_differences",
    "Differences the last reconciliation found, by check: snapshot and real-time (a balance against its"
    " postings), trial-balance (debits against credits, per currency), auth-open (a finished payment's"
    " AUTH_* accounts not netting to zero)",
    ["check"],
    multiprocess_mode="mostrecent",
)
RECONCILIATION_CHECKS = ("snapshot", "real-time", "trial-balance", "auth-open", "psp-receivables")
RECONCILED_AT = Gauge(
    _P + "reconciliation_last_run_timestamp_seconds",
    "When a reconciliation last finished (Unix time)",
    multiprocess_mode="mostrecent",
)
OVERLAY_SKIPPED = Counter(
    _P + "balance_overlay_skipped_entries",
    "Postings not added to the Redis overlay (Redis down); the next fold restores them",
)

# -- the process --------------------------------------------------------------------------------

WORKER_PROCESSES = Gauge(
    _P + "worker_processes",
    "Worker processes of this service instance that have started serving",
    multiprocess_mode="livesum",
)

# Label values known in advance, so their series exist (at 0) before the first event: a rate over
# a series that appears only with its first increment misses that increment.
_KNOWN_LABELS: tuple[tuple[Counter, tuple[tuple[str, ...], ...]], ...] = (
    (PAYMENTS_CREATED, (("AUTHORIZED",), ("DECLINED",), ("PENDING_AUTH",))),
    (ORDERS_SETTLED, (("CAPTURED",), ("CAPTURE_FAILED",))),
    (REFUND_OUTCOMES, (("SUCCEEDED",), ("FAILED",))),
    (PAYOUT_OUTCOMES, (("PAID",), ("FAILED",))),
)


def setup_metrics() -> None:
    """Once per serving process: create the series whose label values are known in advance, and
    leave out the `_created` series — one more series per counter that nobody graphs, and that
    the multiprocess exposition lacks anyway."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    for metric, label_sets in _KNOWN_LABELS:
        for labels in label_sets:
            metric.labels(*labels)


# -- exposition ---------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def exposition() -> tuple[bytes, str]:
    """The /metrics body and its content type: every worker's values when several share the
    multiprocess directory, else this process's registry."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def prepare_multiprocess_dir(default_parent: Path | None = None) -> tuple[Path, bool]:
    """Before worker processes start: the directory they share, emptied of what earlier runs
    left (their files would be summed in). An operator's `PROMETHEUS_MULTIPROC_DIR` is used as
    it is; otherwise a fresh one is made (under `default_parent` or the system's temporary
    directory). Sets the variable for the workers. Returns (directory, made here)."""
    import tempfile

    given = multiprocess_dir()
    if given is not None:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.glob("*.db"):
            leftover.unlink(missing_ok=True)
        made = False
    else:
        if default_parent is not None:
            default_parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="marketplace-pay-metrics-", dir=default_parent))
        made = True
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    return path, made


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def forget_processes(pids: Iterable[int | None]) -> None:
    """Workers that died: their live gauges (the worker count) stop counting."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    for pid in pids:
        if pid is not None:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
