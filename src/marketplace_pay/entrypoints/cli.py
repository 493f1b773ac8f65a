"""`marketplace-pay`: serve, migrate, token, sellers, reconcile, dead-letters, payouts, settle, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from marketplace_pay.settings import Settings, SettingsError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"marketplace-pay: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    from marketplace_pay.entrypoints.serve import serve

    return serve(args, _settings())


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from marketplace_pay.infra.db import migrate
    from marketplace_pay.infra.resources import resolve_dsn

    async def run() -> list[str]:
        conn = await asyncpg.connect(await resolve_dsn(_settings()))
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from marketplace_pay.infra.auth import ROLES, issue_token, resolve_jwt_secret

    settings = _settings()
    unknown = [r for r in args.role if r not in ROLES]
    if unknown:
        print(f"warning: unknown role(s) {', '.join(unknown)}; known: {', '.join(ROLES)}", file=sys.stderr)
    if "SELLER" in args.role and not args.seller:
        print("warning: a SELLER token without --seller cannot read any balance", file=sys.stderr)
    secret = resolve_jwt_secret(settings.jwt.secret, settings.process.data_dir)
    print(
        issue_token(
            secret,
            roles=args.role,
            seller_id=args.seller,
            ttl_s=args.ttl,
            subject=args.sub,
            issuer=settings.jwt.issuer,
            audience=settings.jwt.audience,
        )
    )
    return 0


def _seller_json(seller: Any) -> dict[str, Any]:
    return {
        "sellerId": seller.seller_id,
        "accountCode": seller.account_code,
        "currency": seller.currency.value,
        "status": seller.status.value,
        "commissionBps": seller.commission_bps,
    }


def cmd_sellers(args: argparse.Namespace) -> int:
    from marketplace_pay.bootstrap import open_container
    from marketplace_pay.shared.errors import DomainError

    async def run() -> int:
        async with open_container(_settings()) as c:
            try:
                if args.action == "add":
                    sellers = [await c.ledger.add_seller(args.seller_id, args.currency, args.commission_bps)]
                elif args.action == "list":
                    sellers = await c.ledger.sellers()
                elif args.action == "show":
                    sellers = [await c.ledger.seller(args.seller_id)]
                else:
                    sellers = [await c.ledger.set_seller_status(args.seller_id, args.status)]
            except DomainError as exc:
                print(f"error: {exc.detail}", file=sys.stderr)
                for error in exc.errors:
                    print(f"  {error.field}: {error.message}", file=sys.stderr)
                return 1
        for seller in sellers:
            print(json.dumps(_seller_json(seller)))
        return 0

    return asyncio.run(run())


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare every balance with its postings; exit 1 on any difference. --repair rebuilds the
    snapshots and the Redis overlay from the postings first."""
    from marketplace_pay.bootstrap import open_container

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    async def run() -> int:
        async with open_container(_settings()) as c:
            say("reconcile: folding, then checking every account against its postings ...")
            if args.repair:
                say("reconcile: --repair: rebuilding snapshots and the Redis overlay from the postings ...")
            report = await c.balances.reconcile(repair=args.repair, grace_s=args.grace_s)
            trial = await c.balances.trial_balance()
        differences = report.differences()
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "accountsChecked": report.accounts_checked,
                        "repaired": report.repaired,
                        "differences": differences,
                        "trialBalance": [
                            {"currency": t.currency, "debits": t.debits_minor, "credits": t.credits_minor}
                            for t in trial
                        ],
                    }
                )
            )
        else:
            for t in trial:
                print(
                    f"trial balance {t.currency}: debits {t.debits_minor} credits {t.credits_minor} "
                    f"difference {t.debits_minor - t.credits_minor}"
                )
            for d in differences:
                print(
                    f"DIFFERENCE {d['check']} {d['subject']}: expected {d['expected']} actual {d['actual']} "
                    f"({d['difference']:+d} minor units)"
                )
            print(
                f"{'OK' if report.ok else 'FAILED'}: {report.accounts_checked} accounts checked, "
                f"{len(differences)} difference(s){', repaired' if report.repaired else ''}"
            )
        return 0 if report.ok else 1

    return asyncio.run(run())


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting: its environment variable, the value it has here, its default, its meaning."""
    from marketplace_pay.settings_docs import describe

    settings = _settings()
    if args.markdown:  # the README's Configuration table: every setting, its default, its meaning
        print("| variable | default | meaning |\n|---|---|---|")
        for title, rows in describe(Settings()):
            print(f"| **{title.rstrip('.')}** | | |")
            for r in rows:
                print(f"| `{r.env}` | `{r.default}` | {r.doc} |")
        return 0
    for title, rows in describe(settings):
        if args.json:
            for r in rows:
                print(json.dumps({"group": title, **r._asdict()}))
            continue
        print(f"# {title}")
        for r in rows:
            changed = "" if r.value == r.default else f"   (default {r.default})"
            print(f"{r.env:<34} {r.value}{changed}")
            print(f"{'':<34} {r.doc}")
        print()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marketplace-pay", description="Payments, ledger and balances for marketplaces")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API, the consumers and the jobs")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes: API workers share the port, pipeline workers (half, rounded down) run the pipeline "
        "(default: MP_WORKERS, else one per CPU core, at most 4)",
    )
    serve.set_defaults(fn=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)

    shown = sub.add_parser("settings", help="every setting: environment variable, value here, default, meaning")
    shown.add_argument("--json", action="store_true", help="one JSON object per setting")
    shown.add_argument("--markdown", action="store_true", help="the defaults as the README's Configuration table")
    shown.set_defaults(fn=cmd_settings)

    token = sub.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument(
        "--role", action="append", required=True, help="repeatable: payment:write, payment:read, SELLER, FINANCE, ADMIN"
    )
    token.add_argument("--seller", help="seller_id claim (for SELLER tokens)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (default 3600)")
    token.add_argument("--sub", default="marketplace-pay-cli", help="subject claim")
    token.set_defaults(fn=cmd_token)

    sellers = sub.add_parser("sellers", help="manage sellers (MERCHANT_PAYABLE accounts)")
    actions = sellers.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="onboard a seller")
    add.add_argument("seller_id")
    add.add_argument("--currency", choices=["EUR", "USD", "GBP"], required=True)
    add.add_argument("--commission-bps", type=int, default=0, help="platform commission, basis points (default 0)")
    actions.add_parser("list", help="list sellers")
    show = actions.add_parser("show", help="show one seller")
    show.add_argument("seller_id")
    status = actions.add_parser("set-status", help="ACTIVE, SUSPENDED or CLOSED")
    status.add_argument("seller_id")
    status.add_argument("status", choices=["ACTIVE", "SUSPENDED", "CLOSED"])
    sellers.set_defaults(fn=cmd_sellers)

    reconcile = sub.add_parser("reconcile", help="check every balance against its postings (exit 1 on a difference)")
    reconcile.add_argument(
        "--repair", action="store_true", help="rebuild snapshots and the Redis overlay from the postings"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="postings and finished payments younger than this may still be in flight (default 30)",
    )
    reconcile.set_defaults(fn=cmd_reconcile)

    from marketplace_pay.entrypoints.bench import add_parser as add_bench_parser
    from marketplace_pay.entrypoints.cli_dead_letters import add_parser as add_dead_letters_parser
    from marketplace_pay.entrypoints.cli_treasury import add_parsers as add_treasury_parsers

    add_dead_letters_parser(sub)
    add_treasury_parsers(sub)
    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    # pgserver (embedded PostgreSQL) warns about a missing XDG_RUNTIME_DIR and falls back to /tmp
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
