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
    REFUND:<refundId>              DR MERCHANT_PAYABLE.<seller> r  CR PSP_RECEIVABLES r
    COMMISSION_REFUND:<refundId>   DR PLATFORM_COMMISSION_REVENUE f
                                   CR MERCHANT_PAYABLE.<seller> f              (only if f > 0)
    PAYOUT:<payoutId>              DR MERCHANT_PAYABLE.<seller> p  CR PAYOUTS_IN_TRANSIT p
    PAYOUT_PAID:<payoutId>         DR PAYOUTS_IN_TRANSIT p     CR PLATFORM_CASH p
    PAYOUT_RETURNED:<payoutId>     DR PAYOUTS_IN_TRANSIT p     CR MERCHANT_PAYABLE.<seller> p
    SETTLEMENT:<settlementId>      DR PLATFORM_CASH net        DR PSP_FEE_EXPENSE fee
                                   CR PSP_RECEIVABLES gross

fee = (a × commissionBps + 5000) // 10000 (half up, in minor units). A refund gives back the
commission pro rata: f = min(fee − fee refunded so far, (r × commissionBps + 5000) // 10000), and
the refund of everything still captured gives back everything left of the fee. The PSP's fee on
a settlement is (gross × feeBps + 5000) // 10000.
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
    REFUND = "REFUND"
    COMMISSION_REFUND = "COMMISSION_REFUND"
    PAYOUT = "PAYOUT"
    PAYOUT_PAID = "PAYOUT_PAID"
    PAYOUT_RETURNED = "PAYOUT_RETURNED"
    SETTLEMENT = "SETTLEMENT"


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


# -- money out --------------------------------------------------------------------------------


def _transfer(
    journal_id: str, type_: JournalType, name: str, source: Account, target: Account, amount: Money
) -> JournalEntry:
    """Money moved from one account to another: DR `source`, CR `target`."""
    return JournalEntry(journal_id, type_, name, amount.currency, (debit(source, amount), credit(target, amount)))


def refund(refund_id: int, seller_id: str, amount: Money) -> JournalEntry:
    c = amount.currency
    return _transfer(
        f"REFUND:{refund_id}", JournalType.REFUND, "Refund",
        Account.merchant(seller_id, c), _global(AccountType.PSP_RECEIVABLES, c), amount,
    )  # fmt: skip


def refunded_fee(
    refund_minor: int, *, commission_bps: int, fee_minor: int, fee_refunded_minor: int, rest_minor: int
) -> int:
    """The commission a refund of `refund_minor` gives back: pro rata, never more than is left of
    the order's fee, and all of what is left when nothing captured remains (`rest_minor`, what is
    still captured and not refunded after this refund, is 0)."""
    left = fee_minor - fee_refunded_minor
    if left <= 0:
        return 0
    if rest_minor == 0:
        return left
    return min(left, commission_fee(refund_minor, commission_bps))


def commission_refund(refund_id: int, seller_id: str, fee: Money) -> JournalEntry | None:
    if fee.amount_minor == 0:
        return None
    c = fee.currency
    return _transfer(
        f"COMMISSION_REFUND:{refund_id}", JournalType.COMMISSION_REFUND, "Commission refund",
        _global(AccountType.PLATFORM_COMMISSION_REVENUE, c), Account.merchant(seller_id, c), fee,
    )  # fmt: skip


def payout(payout_id: int, seller_id: str, amount: Money) -> JournalEntry:
    c = amount.currency
    return _transfer(
        f"PAYOUT:{payout_id}", JournalType.PAYOUT, "Seller payout",
        Account.merchant(seller_id, c), _global(AccountType.PAYOUTS_IN_TRANSIT, c), amount,
    )  # fmt: skip


def payout_paid(payout_id: int, amount: Money) -> JournalEntry:
    c = amount.currency
    return _transfer(
        f"PAYOUT_PAID:{payout_id}", JournalType.PAYOUT_PAID, "Payout paid by the bank",
        _global(AccountType.PAYOUTS_IN_TRANSIT, c), _global(AccountType.PLATFORM_CASH, c), amount,
    )  # fmt: skip


def payout_returned(payout_id: int, seller_id: str, amount: Money) -> JournalEntry:
    c = amount.currency
    return _transfer(
        f"PAYOUT_RETURNED:{payout_id}", JournalType.PAYOUT_RETURNED, "Payout returned to the seller",
        _global(AccountType.PAYOUTS_IN_TRANSIT, c), Account.merchant(seller_id, c), amount,
    )  # fmt: skip


def psp_fee(gross_minor: int, fee_bps: int) -> int:
    if not 0 <= fee_bps <= 10000:
        raise InvariantViolation(f"PSP fee must be 0..10000 bps, got {fee_bps}")
    return (gross_minor * fee_bps + 5000) // 10000


def settlement(settlement_id: int, gross: Money, fee_bps: int) -> JournalEntry:
    """The PSP pays `gross` minus its fee into the platform's cash."""
    c = gross.currency
    fee = Money(psp_fee(gross.amount_minor, fee_bps), c)
    net = Money(gross.amount_minor - fee.amount_minor, c)
    postings = [credit(_global(AccountType.PSP_RECEIVABLES, c), gross)]
    if net.amount_minor > 0:
        postings.insert(0, debit(_global(AccountType.PLATFORM_CASH, c), net))
    if fee.amount_minor > 0:
        postings.insert(1 if net.amount_minor > 0 else 0, debit(_global(AccountType.PSP_FEE_EXPENSE, c), fee))
    return JournalEntry(f"SETTLEMENT:{settlement_id}", JournalType.SETTLEMENT, "PSP settlement", c, tuple(postings))
