"""Payments' SellerDirectory port, answered by the ledger's account directory (through the
ledger's public surface): who can be paid, in which currency."""

from __future__ import annotations

from collections.abc import Sequence

from marketplace_pay.ledger import CachedSellers
from marketplace_pay.payments.application.ports import SellerAccount


class LedgerSellerDirectory:
    def __init__(self, directory: CachedSellers) -> None:
        self._directory = directory

    async def sellers(self, seller_ids: Sequence[str]) -> dict[str, SellerAccount]:
        return {
            s.seller_id: SellerAccount(s.seller_id, s.currency, s.status.value, s.commission_bps)
            for s in await self._directory.many(seller_ids)
        }
