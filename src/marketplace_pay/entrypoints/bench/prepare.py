"""The bench's set-up: its arguments checked, the database it reads, the service it loads
(given, or started), the sellers its payments go to, and a probe payment before the load."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from marketplace_pay.entrypoints.bench import figures as fig
from marketplace_pay.entrypoints.bench.probes import BenchError, ServeProcess, say, wait_ready
from marketplace_pay.entrypoints.bench.settle import payment_id_from_location

SEEDED_SELLERS = ("SELLER-111", "SELLER-222", "SELLER-333")
DEFAULT_SCENARIO = "BEST_PSP_EVER"


def redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


def token_refused(r: httpx.Response) -> BenchError:
    return BenchError(
        f"the service refused the bench's token ({r.status_code}): the bench signs it with MP_JWT_SECRET (or the "
        f"data directory's generated secret), so give the bench the service's secret. Answer: {r.text[:300]}"
    )


class Setup:
    """The set-up steps of a run (`Bench` holds the state they fill in)."""

    args: argparse.Namespace
    env: dict[str, str]
    serve: ServeProcess | None
    workers: int | None
    scenario: str | None
    conn: asyncpg.Connection | None
    run_id: str
    commission_bps: dict[str, int]

    def _check_args(self) -> None:
        a = self.args
        if a.duration <= 0 or a.warmup < 0:
            raise BenchError("--duration must be > 0 and --warmup >= 0")
        if a.rate is not None and a.rate <= 0:
            raise BenchError("--rate must be > 0")
        if a.concurrency is not None and a.concurrency < 1:
            raise BenchError("--concurrency must be >= 1")
        if not 1 <= a.sellers_per_payment <= 100:
            raise BenchError("--sellers-per-payment must be 1-100 (a payment has 1-100 orders)")
        if a.url and (a.scenario or a.workers):
            raise BenchError("--scenario and --workers apply to a service the bench starts (--serve)")

    async def _database(self) -> tuple[Any, str]:
        from marketplace_pay.infra.resources import resolve_dsn
        from marketplace_pay.settings import Settings, SettingsError

        try:
            settings = Settings.from_env(self.env)
        except SettingsError as exc:
            raise BenchError(str(exc)) from None
        try:
            dsn = await resolve_dsn(settings)
        except Exception as exc:  # noqa: BLE001 - the embedded server failing has many shapes
            raise BenchError(f"no database: {type(exc).__name__}: {exc}") from None
        try:
            self.conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BenchError(f"cannot connect to the database {redacted(dsn)}: {exc}") from None
        return settings, dsn

    async def _check_tables(self, dsn: str) -> None:
        """Once the service runs (it migrates at start): the tables the bench reads exist."""
        assert self.conn is not None
        present = await self.conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('payments', 'payment_orders', 'journal_entries')"
        )
        if present != 3:
            raise BenchError(
                f"the database {redacted(dsn)} has no payments/ledger tables: point the bench at the service's "
                "database (the same DATABASE_URL)"
            )

    async def _service(self) -> str:
        a = self.args
        if a.url:
            url: str = a.url.rstrip("/")
            if urlsplit(url).scheme != "http":
                raise BenchError("--url must be an http:// URL (the load generator speaks plain HTTP/1.1)")
            try:
                await wait_ready(url, timeout_s=10)
            except BenchError as exc:
                raise BenchError(f"the service is not reachable: {exc}") from None
            return url
        self.scenario = a.scenario or DEFAULT_SCENARIO
        self.workers = a.workers  # None: the service's default (one per core)
        self.serve = ServeProcess(scenario=self.scenario, workers=a.workers, env=self.env)
        say(
            f"starting `marketplace-pay serve` on {self.serve.url} "
            f"(scenario {self.scenario}, log {self.serve.log_path})"
        )
        await self.serve.start()
        return self.serve.url

    async def _sellers(self, url: str, admin_token: str) -> list[str]:
        k = self.args.sellers_per_payment
        sellers = list(SEEDED_SELLERS[:k]) + [f"BENCH-SELLER-{n}" for n in range(1, k - len(SEEDED_SELLERS) + 1)]
        headers = {"Authorization": f"Bearer {admin_token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
            for seller in sellers[len(SEEDED_SELLERS) :]:
                r = await client.post(
                    "/api/v1/sellers", json={"sellerId": seller, "currency": "EUR", "commissionBps": 500}
                )
                if r.status_code == 401:
                    raise token_refused(r)
                if r.status_code not in (201, 409):
                    raise BenchError(f"onboarding {seller} failed: {r.status_code} {r.text[:400]}")
            for seller in sellers:
                r = await client.get(f"/api/v1/sellers/{seller}")
                if r.status_code == 401:
                    raise token_refused(r)
                if r.status_code != 200:
                    say(f"cannot read seller {seller} ({r.status_code}): its commission journal is not required")
                    continue
                body = r.json()
                if body.get("status") != "ACTIVE" or body.get("currency") != "EUR":
                    raise BenchError(f"seller {seller} must be ACTIVE and settle in EUR, it is {body}")
                self.commission_bps[seller] = int(body["commissionBps"])
        return sellers

    async def _probe(self, url: str, token: str, lines: list[tuple[str, int]]) -> None:
        """One payment before the load: the token is accepted, the sellers are valid, and the
        service writes to the database the bench reads."""
        assert self.conn is not None
        body = json.loads(fig.payment_body(lines, self.run_id).replace(b"@N@", b"probe"))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            r = await client.post("/api/v1/payments", json=body, headers={"Authorization": f"Bearer {token}"})
        if r.status_code in (401, 403):
            raise token_refused(r)
        if r.status_code != 202 or "location" not in r.headers:
            raise BenchError(f"a probe payment was not accepted: {r.status_code} {r.text[:600]}")
        payment_id = payment_id_from_location(r.headers["location"].encode())
        deadline = time.monotonic() + 5
        while not await self.conn.fetchval("SELECT true FROM payments WHERE payment_id = $1", payment_id):
            if time.monotonic() > deadline:
                raise BenchError(
                    "the service accepted a payment that the bench cannot find in its database: point the bench "
                    "at the service's database (the same DATABASE_URL)"
                )
            await asyncio.sleep(0.1)
