"""`marketplace-pay payouts run` and `marketplace-pay settle`: the treasury's scheduled work, once,
from the command line (what the jobs on MP_PAYOUT_SCHEDULE and MP_SETTLEMENT_SCHEDULE do).

Both are safe to run again, also after a crash mid-run and while the service runs: a payout is
decided under the seller's lock against the balance left, and a journal is settled once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from marketplace_pay.shared.ids import public_payout_id, public_settlement_id


def _settings() -> Any:
    from marketplace_pay.entrypoints.cli import _settings as settings

    return settings()


def cmd_payouts_run(args: argparse.Namespace) -> int:
    from marketplace_pay.bootstrap import open_container

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    async def run() -> list[Any]:
        settings = _settings()
        async with open_container(settings) as c:
            say(
                f"payouts: paying every ACTIVE seller with at least {settings.payout.minimum_minor} "
                "(minor units) available ..."
            )

            def progress(seller_id: str, payout: Any) -> None:
                if payout is None:
                    say(f"  {seller_id}: below the minimum now, skipped")
                else:
                    say(f"  {seller_id}: {payout.amount.amount_minor} {payout.amount.currency} -> {payout.public_id}")

            return await c.treasury.run_scheduled_payouts(progress)

    paid = asyncio.run(run())
    if args.json:
        print(
            json.dumps(
                {
                    "payouts": [
                        {
                            "payoutId": public_payout_id(p.payout_id),
                            "sellerId": p.seller_id,
                            "amount": {"quantity": p.amount.amount_minor, "currency": p.amount.currency.value},
                            "status": p.status.value,
                        }
                        for p in paid
                    ]
                }
            )
        )
    else:
        total: dict[str, int] = {}
        for p in paid:
            total[p.amount.currency.value] = total.get(p.amount.currency.value, 0) + p.amount.amount_minor
        sums = ", ".join(f"{v} {k}" for k, v in sorted(total.items())) or "nothing"
        print(f"{len(paid)} payout(s) created ({sums}); the bank pays them asynchronously (the service must run)")
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    from marketplace_pay.bootstrap import open_container

    async def run() -> list[Any]:
        settings = _settings()
        async with open_container(settings) as c:
            if not args.json:
                print(
                    f"settle: everything captured minus refunded and not settled yet, PSP fee "
                    f"{settings.psp.fee_bps} bps ...",
                    file=sys.stderr,
                    flush=True,
                )
            return await c.treasury.settle()

    done = asyncio.run(run())
    rows = [
        {
            "settlementId": public_settlement_id(s.settlement_id),
            "journalEntryId": f"SETTLEMENT:{s.settlement_id}",
            "currency": s.currency.value,
            "gross": s.gross_minor,
            "fee": s.fee_minor,
            "net": s.net_minor,
            "journalsCovered": len(s.journal_ids),
        }
        for s in done
    ]
    if args.json:
        print(json.dumps({"settlements": rows}))
    elif not rows:
        print("nothing to settle")
    else:
        for r in rows:
            print(
                f"{r['settlementId']} {r['currency']}: gross {r['gross']} fee {r['fee']} net {r['net']} "
                f"({r['journalsCovered']} journal(s) covered)"
            )
    return 0


def add_parsers(sub: Any) -> None:
    payouts = sub.add_parser("payouts", help="seller payouts")
    actions = payouts.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run", help="pay out every ACTIVE seller whose available balance is at least MP_PAYOUT_MINIMUM_MINOR"
    )
    run.add_argument("--json", action="store_true", help="print the payouts created as one JSON object")
    payouts.set_defaults(fn=cmd_payouts_run)

    settle = sub.add_parser("settle", help="record the PSP's settlement of everything captured and not settled yet")
    settle.add_argument("--json", action="store_true", help="print the settlements as one JSON object")
    settle.set_defaults(fn=cmd_settle)
