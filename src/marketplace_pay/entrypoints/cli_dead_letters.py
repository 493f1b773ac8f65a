"""`marketplace-pay dead-letters list|replay`: the events a handler gave up on, for an operator."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def _settings() -> Any:
    from marketplace_pay.entrypoints.cli import _settings as settings

    return settings()


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List dead letters, or put them back into the outbox to be delivered again."""
    from marketplace_pay.bootstrap import open_container

    if args.action == "replay" and not args.id and not args.consumer:
        print("error: say which: --id N (repeatable) or --consumer NAME", file=sys.stderr)
        return 2

    async def run() -> int:
        async with open_container(_settings()) as c:
            if args.action == "list":
                found = await c.dead_letters.find(consumer=args.consumer, include_replayed=args.all, limit=args.limit)
            else:
                found = await c.dead_letters.replay(ids=args.id or (), consumer=args.consumer)
        for d in found:
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": d.id,
                            "consumer": d.consumer,
                            "eventId": d.event_id,
                            "eventType": d.event_type,
                            "key": d.key,
                            "attempts": d.attempts,
                            "error": d.error,
                            "createdAt": d.created_at.isoformat(),
                            "replayedAt": d.replayed_at.isoformat() if d.replayed_at else None,
                        }
                    )
                )
            else:
                state = f"replayed {d.replayed_at:%Y-%m-%d %H:%M:%S}" if d.replayed_at else "waiting"
                print(f"{d.id:>6}  {d.consumer}  {d.event_type}  {d.event_id}  attempts={d.attempts}  {state}")
                print(f"        {d.error[:300]}")
        if not args.json:
            verb = "listed" if args.action == "list" else "put back into the outbox"
            print(f"{len(found)} dead letter(s) {verb}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def add_parser(sub: Any) -> None:
    dead = sub.add_parser("dead-letters", help="events a handler gave up on: list them, replay them")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    listing = dead_actions.add_parser("list", help="dead letters waiting for an operator")
    listing.add_argument("--consumer", help="only this consumer's")
    listing.add_argument("--all", action="store_true", help="include the ones already replayed")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = dead_actions.add_parser("replay", help="put dead letters back into the outbox (delivered again)")
    replay.add_argument("--id", type=int, action="append", help="a dead letter's id (repeatable)")
    replay.add_argument("--consumer", help="every waiting dead letter of this consumer")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    dead.set_defaults(fn=cmd_dead_letters)
