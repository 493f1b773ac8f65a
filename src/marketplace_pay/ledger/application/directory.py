"""The account directory: onboarding sellers (a seller is its MERCHANT_PAYABLE account) and
changing their status. Payments asks it, through its SellerDirectory port, who can be paid."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import msgspec

from marketplace_pay.ledger.domain.accounts import AccountStatus, AccountType, account_code
from marketplace_pay.shared.client_ids import RESERVED_SELLER_IDS, SELLER_ID_RULE, is_seller_id
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.errors import ConflictError, FieldError, NotFoundError, ValidationError
from marketplace_pay.shared.money import Currency


class Seller(msgspec.Struct, frozen=True):
    seller_id: str
    account_code: str
    currency: Currency
    status: AccountStatus
    commission_bps: int
    created_at: datetime
    updated_at: datetime


class OnboardSeller(msgspec.Struct, frozen=True):
    seller_id: str
    currency: Currency
    commission_bps: int


class SellerStore(Protocol):
    async def add(self, cmd: OnboardSeller) -> Seller | None:
        """Create the seller's MERCHANT_PAYABLE account. None if the seller already exists."""
        ...

    async def get(self, seller_id: str) -> Seller | None: ...

    async def set_status(self, seller_id: str, status: AccountStatus) -> Seller | None: ...

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]: ...

    async def list(self) -> list[Seller]: ...


RESERVED = frozenset(RESERVED_SELLER_IDS)


def _check(cmd: OnboardSeller) -> None:
    errors = []
    if not is_seller_id(cmd.seller_id):
        errors.append(FieldError("sellerId", SELLER_ID_RULE))
    elif cmd.seller_id in RESERVED:
        errors.append(FieldError("sellerId", f"{cmd.seller_id} is reserved"))
    if not 0 <= cmd.commission_bps <= 10000:
        errors.append(FieldError("commissionBps", "must be between 0 and 10000 basis points"))
    if errors:
        raise ValidationError("Invalid seller", errors=errors)


async def onboard_seller(cmd: OnboardSeller, *, store: SellerStore, cache: CachedSellers | None = None) -> Seller:
    _check(cmd)
    seller = await store.add(cmd)
    if cache is not None:
        cache.forget(cmd.seller_id)
    if seller is None:
        existing = await store.get(cmd.seller_id)
        raise ConflictError(
            f"Seller {cmd.seller_id} already exists" + (f" ({existing.account_code})" if existing else "")
        )
    return seller


async def change_seller_status(
    seller_id: str, status: AccountStatus, *, store: SellerStore, cache: CachedSellers | None = None
) -> Seller:
    seller = await store.set_status(seller_id, status)
    if cache is not None:
        cache.forget(seller_id)
    if seller is None:
        raise NotFoundError(f"Seller {seller_id} not found")
    return seller


def seller_account_code(seller_id: str, currency: Currency) -> str:
    return account_code(AccountType.MERCHANT_PAYABLE, seller_id, currency)


class CachedSellers:
    """The directory as every payment and every recording asks it: from memory, at most `ttl_ms`
    old. A change made through this process is seen at once; one made elsewhere (another
    process, the CLI) within `ttl_ms`. Unknown sellers are cached too, so a flood of requests for
    an unknown seller costs one query per `ttl_ms`."""

    def __init__(self, store: SellerStore, *, clock: Clock, ttl_ms: int = 1000, max_entries: int = 100_000) -> None:
        self.store = store
        self._ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[int, Seller | None]] = {}

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]:
        now = self._clock.now_ms()
        stale = [
            s for s in dict.fromkeys(seller_ids) if (e := self._entries.get(s)) is None or now - e[0] > self._ttl_ms
        ]
        stale_set = set(stale)
        answers = {s: self._entries[s][1] for s in seller_ids if s not in stale_set}
        if stale:
            found = dict.fromkeys(stale) | {s.seller_id: s for s in await self.store.many(stale)}
            if len(self._entries) > self._max_entries:  # bounded: forget everything rather than grow
                self._entries.clear()
            for seller_id, seller in found.items():
                self._entries[seller_id] = (now, seller)
            answers |= found
        return [seller for s in seller_ids if (seller := answers[s]) is not None]

    async def commission_bps(self, seller_ids: Sequence[str]) -> dict[str, int]:
        return {s.seller_id: s.commission_bps for s in await self.many(seller_ids)}

    def forget(self, seller_id: str) -> None:
        self._entries.pop(seller_id, None)
