"""PSP settlement: the PSP pays what it captured for us, minus refunds and its fee, into the
platform's cash.

    settle ──one transaction──▶ per currency with something to settle: SETTLEMENT:<id>
                                (DR PLATFORM_CASH net, DR PSP_FEE_EXPENSE fee, CR PSP_RECEIVABLES gross)
                                + a settlements row + the journals it covered + SettlementRecorded
                                + LedgerEntriesRecorded

What a run settles is every CAPTURE (+) and REFUND (−) journal's PSP_RECEIVABLES posting that no
earlier settlement covered; gross is their sum, fee = (gross × feeBps + 5000) // 10000. A currency
whose sum is not positive (refunds outweigh captures) is left for a later run, its journals
uncovered. Runs are serialized by a lock, and each covered journal is recorded once (primary
key): two runs racing settle each journal once, the second finding nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from marketplace_pay.infra import metrics
from marketplace_pay.ledger.application.payouts import announce
from marketplace_pay.ledger.application.ports import NewSettlement, TreasuryUnitOfWork
from marketplace_pay.ledger.application.recording import JournalRef
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.events import SettlementRecorded
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import envelope
from marketplace_pay.shared.ids import public_settlement_id
from marketplace_pay.shared.money import Currency, Money

log = logging.getLogger(__name__)


async def settle(*, uow: Callable[[], TreasuryUnitOfWork], clock: Clock, fee_bps: int) -> list[NewSettlement]:
    """Settle everything captured, minus refunded, that is not settled yet: one settlement per
    currency. Returns the settlements recorded (none when there is nothing to settle)."""
    done: list[NewSettlement] = []
    async with uow() as tx:
        await tx.settlements.lock()
        by_currency: dict[Currency, list[tuple[str, int]]] = {}
        for item in await tx.settlements.unsettled():
            by_currency.setdefault(item.currency, []).append((item.journal_id, item.signed_amount_minor))
        now = clock.now()
        for currency in sorted(by_currency):
            items = by_currency[currency]
            gross = sum(amount for _, amount in items)
            if gross <= 0:
                log.info("nothing to settle", extra={"currency": currency.value, "grossMinor": gross})
                continue
            settlement_id = await tx.settlements.next_id()
            entry = journals.settlement(settlement_id, Money(gross, currency), fee_bps)
            fee = journals.psp_fee(gross, fee_bps)
            settlement = NewSettlement(
                settlement_id=settlement_id,
                currency=currency,
                gross_minor=gross,
                fee_minor=fee,
                net_minor=gross - fee,
                fee_bps=fee_bps,
                journal_ids=sorted(journal_id for journal_id, _ in items),
            )
            recorded = envelope(
                SettlementRecorded(
                    settlement_id=str(settlement_id),
                    public_settlement_id=public_settlement_id(settlement_id),
                    currency=currency.value,
                    gross_minor=gross,
                    fee_minor=fee,
                    net_minor=gross - fee,
                    journals_covered=len(items),
                    timestamp=now,
                ),
                aggregate_id=str(settlement_id),
                timestamp=now,
                trace_id=f"{settlement_id:032x}"[-32:],
            )
            stored = await tx.journals.add_all([(entry, JournalRef(None, None, None, recorded.event_id))])
            await tx.settlements.add(settlement)
            tx.publish(recorded)
            announce(tx, list(stored.values()), now=now, cause=recorded)
            done.append(settlement)
        await tx.commit()
    for s in done:
        metrics.SETTLEMENTS.labels(s.currency.value).inc()
        metrics.SETTLED_GROSS_MINOR.labels(s.currency.value).inc(s.gross_minor)
        metrics.SETTLEMENT_FEES_MINOR.labels(s.currency.value).inc(s.fee_minor)
        log.info(
            "settled",
            extra={
                "settlementId": public_settlement_id(s.settlement_id),
                "currency": s.currency.value,
                "gross": s.gross_minor,
            },
        )
    return done
