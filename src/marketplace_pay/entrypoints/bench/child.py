"""The load generator's process: `run_child` runs a plan and reports through a pipe; `python -m
marketplace_pay.entrypoints.bench.child URL` loads any URL with GETs and prints what it could
push and the CPU it used."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from array import array
from typing import Any
from urllib.parse import urlsplit

from marketplace_pay.entrypoints.bench.loadgen import Generator, LoadPlan
from marketplace_pay.entrypoints.bench.wire import RequestTemplate


def run_child(plan: LoadPlan, pipe: Any) -> None:
    """Process entry point: run the plan under uvloop, send progress and the final dict."""
    import signal

    import uvloop

    # Ctrl-C reaches the whole process group: the parent decides when the load stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(message: dict[str, Any]) -> None:
        try:
            pipe.send(message)
        except OSError:
            os._exit(3)  # the parent is gone: there is nobody to load for

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(Generator(plan, report).run())
        pipe.send(result)
    except Exception as exc:  # noqa: BLE001 - the parent reports it; a traceback helps nobody here
        pipe.send({"type": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def percentile_ms(latency_s: array[float], p: float) -> float | None:
    values = sorted(latency_s)
    if not values:
        return None
    rank = max(1, -(-len(values) * p // 100))
    return round(float(values[int(rank) - 1]) * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    """Load a URL with GETs and say what the generator pushed and what CPU it used."""
    import uvloop

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("url", help="e.g. http://127.0.0.1:8000/health/live")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, help="open loop, requests/s")
    p.add_argument("--status", type=int, default=200, help="the answer that counts as success (default 200)")
    args = p.parse_args(argv)
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    plan = LoadPlan(
        host=host,
        port=port,
        template=RequestTemplate.build("GET", url.path or "/", f"{host}:{port}"),
        warmup_s=args.warmup,
        duration_s=args.duration,
        rate=args.rate,
        concurrency=args.concurrency,
        ok_status=args.status,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(Generator(plan, lambda _: None).run())
    latency = array("d")
    latency.frombytes(result["latency_s"])
    ok = result["window_outcomes"].get(str(args.status), 0)
    print(
        f"{ok / args.duration:.0f} requests/s answered {args.status} in the measured {args.duration:g} s "
        f"(outcomes {result['window_outcomes']}); latency p50 {percentile_ms(latency, 50)} ms "
        f"p99 {percentile_ms(latency, 99)} ms; generator CPU {result['cpu_s']:.2f} s over "
        f"{result['active_s']:.1f} s = {100 * result['cpu_s'] / result['active_s']:.0f} % of one core, "
        f"{1e6 * result['cpu_s'] / max(1, result['sent']):.1f} µs per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
