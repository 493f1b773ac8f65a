"""Journal entries and postings.

A journal entry is immutable, has at least two postings, debits equal credits, no account
appears twice and every posting is in the journal's currency. Its id says what it records, so
recording the same fact twice finds the first journal instead of writing a second.

    AUTH:<paymentId>               DR AUTH_RECEIVABLE a        CR AUTH_LIABILITY a
    CAPTURE:<paymentOrderId>       CR AUTH_RECEIVABLE a        DR AUTH_LIABILITY a
                                   DR PSP_RECEIVABLES a        CR MERCHANT_PAYABLE.<seller> a
    COMMISSION:<paymentOrderId>    DR MERCHANT_PAYABLE.<seller> fee
                                   CR PLATFORM_COMMISSION_REVENUE fee          (only if fee > 0)
    AUTH_RELEASE:<paymentOrderId>  CR AUTH_RECEIVABLE a        DR AUTH_LIABILITY a

fee = (a × commissionBps + 5000) // 10000 (half up, in minor units).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache

import msgspec

from marketplace_pay.ledger.domain.accounts import Account, AccountType, NormalBalance
from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.money import Currency, Money


class Direction(StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


class JournalType(StrEnum):
    AUTH_HOLD = "AUTH_HOLD"
    CAPTURE = "CAPTURE"
    COMMISSION_FEE = "COMMISSION_FEE"
    AUTH_RELEASE = "AUTH_RELEASE"


class Posting(msgspec.Struct, frozen=True):
    account: Account
    direction: Direction
    amount_minor: int

    @property
    def signed_amount_minor(self) -> int:
        """The effect on the account's balance: + on its normal side, − on the other."""
        return _SIGN[(self.account.type, self.direction)] * self.amount_minor


_SIGN = {
    (t, d): 1 if (d is Direction.DEBIT) == (t.normal_balance is NormalBalance.DEBIT) else -1
    for t in AccountType
    for d in Direction
}


def debit(account: Account, amount: Money) -> Posting:
    return Posting(account, Direction.DEBIT, amount.amount_minor)


def credit(account: Account, amount: Money) -> Posting:
    return Posting(account, Direction.CREDIT, amount.amount_minor)


class JournalEntry(msgspec.Struct, frozen=True):
    journal_id: str
    type: JournalType
    name: str
    currency: Currency
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise InvariantViolation(f"journal {self.journal_id} must have at least 2 postings")
        if any(p.amount_minor <= 0 for p in self.postings):
            raise InvariantViolation(f"journal {self.journal_id}: posting amounts must be positive")
        if any(p.account.currency is not self.currency for p in self.postings):
            raise InvariantViolation(f"journal {self.journal_id}: every posting must be in {self.currency}")
        codes = [p.account.code for p in self.postings]
        if len(set(codes)) != len(codes):
            raise InvariantViolation(f"journal {self.journal_id} contains duplicate accounts: {codes}")
        debits = sum(p.amount_minor for p in self.postings if p.direction is Direction.DEBIT)
        credits = sum(p.amount_minor for p in self.postings if p.direction is Direction.CREDIT)
        if debits != credits:
            raise InvariantViolation(
                f"Unbalanced journal entry {self.journal_id}: debits {debits} != credits {credits}"
            )


@cache  # one per type and currency: built once, not for every journal
def _global(type_: AccountType, currency: Currency) -> Account:
    return Account.global_(type_, currency)


def auth_hold(payment_id: int, amount: Money) -> JournalEntry:
    c = amount.currency
    return JournalEntry(
        f"AUTH:{payment_id}",
        JournalType.AUTH_HOLD,
        "Authorization Hold",
        c,
        (
            debit(_global(AccountType.AUTH_RECEIVABLE, c), amount),
            credit(_global(AccountType.AUTH_LIABILITY, c), amount),
        ),
    )


def capture(payment_order_id: int, seller_id: str, amount: Money) -> JournalEntry:
    c = amount.currency
    return JournalEntry(
        f"CAPTURE:{payment_order_id}",
        JournalType.CAPTURE,
        "Payment Capture",
        c,
        (
            credit(_global(AccountType.AUTH_RECEIVABLE, c), amount),
            debit(_global(AccountType.AUTH_LIABILITY, c), amount),
            debit(_global(AccountType.PSP_RECEIVABLES, c), amount),
            credit(Account.merchant(seller_id, c), amount),
        ),
    )


def commission_fee(amount_minor: int, commission_bps: int) -> int:
    if not 0 <= commission_bps <= 10000:
        raise InvariantViolation(f"commission must be 0..10000 bps, got {commission_bps}")
    return (amount_minor * commission_bps + 5000) // 10000


def commission(payment_order_id: int, seller_id: str, amount: Money, commission_bps: int) -> JournalEntry | None:
    fee = Money(commission_fee(amount.amount_minor, commission_bps), amount.currency)
    if fee.amount_minor == 0:
        return None
    c = amount.currency
    return JournalEntry(
        f"COMMISSION:{payment_order_id}",
        JournalType.COMMISSION_FEE,
        "Platform commission",
        c,
        (debit(Account.merchant(seller_id, c), fee), credit(_global(AccountType.PLATFORM_COMMISSION_REVENUE, c), fee)),
    )


def auth_release(payment_order_id: int, amount: Money) -> JournalEntry:
    c = amount.currency
    return JournalEntry(
        f"AUTH_RELEASE:{payment_order_id}",
        JournalType.AUTH_RELEASE,
        "Authorization Release",
        c,
        (
            credit(_global(AccountType.AUTH_RECEIVABLE, c), amount),
            debit(_global(AccountType.AUTH_LIABILITY, c), amount),
        ),
    )
