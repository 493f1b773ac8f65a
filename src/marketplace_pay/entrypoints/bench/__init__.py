"""`marketplace-pay bench`: load a running service over HTTP and measure it as a black box.

The parser lives here and imports nothing heavy; the run is in `run.py`, the load generator in
`loadgen.py` (HTTP on the wire in `wire.py`, its process in `child.py`), the definitions in `figures.py`.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Drive a running service over HTTP (--url) or one it starts itself (--serve) with POST
/api/v1/payments, and print one table: payments accepted per second, API latency, payments
settled per second, settle lag, peak memory, and whether reconcile is clean afterwards.

Definitions (the README's Benchmark section says more):
  accepted_per_s    202 answers received during the measured window / its length.
  latency_p*_ms     of the 202 answers to requests due (--rate) or sent (--concurrency) in the
                    window; with --rate a request's latency runs from the moment it was due,
                    so a server that stalls is charged for the time requests waited.
  settled           a payment is settled when its status is terminal (CAPTURED,
                    CAPTURED_PARTIALLY, CAPTURE_FAILED) and the ledger holds its AUTH journal
                    and, per order, CAPTURE (+ COMMISSION when the fee is above 0) or
                    AUTH_RELEASE. Its settle time is its latest journal's created_at.
  settled_per_s     payments of this run whose settle time falls in the measured window / its
                    length (it counts settling work done in the window, as accepted_per_s
                    counts accepting work done in it).
  settle_lag_*_ms   settle time minus the arrival of the payment's 202, for payments accepted
                    in the window, after the pipeline drained (database clock; this host's
                    clock is corrected by the measured offset). A payment that never settled
                    counts as an infinite lag.
  ratios            with --baseline: figure / pgbench transactions per second measured on the
                    same PostgreSQL server in the same run. Compare ratios between runs, never
                    raw figures: machines are shared and noisy.

Exit status: 0 when the run completed, 1 when it ran but something is wrong (reconcile not
clean, nothing accepted, the started service did not exit 0), 2 when it could not run.
"""


def add_parser(sub: Any) -> None:
    from marketplace_pay.settings import PSP_SCENARIOS

    bench = sub.add_parser(
        "bench",
        help="load the service over HTTP and measure it (see bench --help)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--serve",
        action="store_true",
        help="start `marketplace-pay serve` on a free port with this environment (DATABASE_URL, REDIS_URL, MP_*), "
        "stop it with SIGTERM at the end",
    )
    bench.add_argument(
        "--scenario",
        choices=PSP_SCENARIOS,
        help="--serve: the PSP simulator's scenario (default BEST_PSP_EVER, whatever MP_PSP_SCENARIO says)",
    )
    bench.add_argument(
        "--workers", type=int, help="--serve: service processes (serve --workers; default: one per core, at most 4)"
    )
    bench.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    bench.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before the measured window (default 3)"
    )
    load = bench.add_mutually_exclusive_group()
    load.add_argument(
        "--rate", type=float, help="open loop: payments/s offered at fixed times, whatever the server does"
    )
    load.add_argument(
        "--concurrency", type=int, help="closed loop: connections, each waiting for its answer (default 64)"
    )
    bench.add_argument(
        "--connections", type=int, default=512, help="--rate: connections it may open when all are busy (default 512)"
    )
    bench.add_argument(
        "--sellers-per-payment",
        type=int,
        default=2,
        help="payment orders per payment, 1-100 (default 2): SELLER-111/222/333, "
        "then BENCH-SELLER-n onboarded as needed",
    )
    bench.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="after the load, wait at most this long for every payment to settle (default 120 s)",
    )
    bench.add_argument(
        "--stats-wait",
        type=float,
        default=11.0,
        help="seconds after the load before PostgreSQL's row counters are read: idle backends publish theirs "
        "about 10 s late, so less undercounts rows_written_per_payment (default 11)",
    )
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="first run pgbench -N -c 8 -j 2 -T 15 on a scratch database of the same server; adds the ratios",
    )
    bench.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON object, the last line of stdout"
    )
    bench.set_defaults(fn=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from marketplace_pay.entrypoints.bench.run import main

    return main(args)
