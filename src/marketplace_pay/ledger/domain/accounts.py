"""Accounts. Code: `<TYPE>.<entityId>.<CCY>`, e.g.
`MERCHANT_PAYABLE.SELLER-111.EUR`; platform-wide accounts use the entity `GLOBAL`."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cache

import msgspec

from marketplace_pay.shared.client_ids import ID_LENGTH_MAX, SELLER_ID_CHAR, encodable
from marketplace_pay.shared.money import Currency

GLOBAL = "GLOBAL"


class NormalBalance(StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"


class AccountType(StrEnum):
    PLATFORM_CASH = "PLATFORM_CASH"
    PSP_RECEIVABLES = "PSP_RECEIVABLES"
    AUTH_RECEIVABLE = "AUTH_RECEIVABLE"
    AUTH_LIABILITY = "AUTH_LIABILITY"
    MERCHANT_PAYABLE = "MERCHANT_PAYABLE"
    PLATFORM_COMMISSION_REVENUE = "PLATFORM_COMMISSION_REVENUE"
    PSP_FEE_EXPENSE = "PSP_FEE_EXPENSE"
    PAYOUTS_IN_TRANSIT = "PAYOUTS_IN_TRANSIT"  # paid out to a seller, not yet confirmed by the bank
    INTERCHANGE_FEES = "INTERCHANGE_FEES"
    SCHEME_FEES = "SCHEME_FEES"
    BANK_FEES = "BANK_FEES"

    @property
    def normal_balance(self) -> NormalBalance:
        return _NORMAL[self]


_NORMAL = {
    AccountType.PLATFORM_CASH: NormalBalance.DEBIT,
    AccountType.PSP_RECEIVABLES: NormalBalance.DEBIT,
    AccountType.AUTH_RECEIVABLE: NormalBalance.DEBIT,
    AccountType.AUTH_LIABILITY: NormalBalance.CREDIT,
    AccountType.MERCHANT_PAYABLE: NormalBalance.CREDIT,
    AccountType.PLATFORM_COMMISSION_REVENUE: NormalBalance.CREDIT,
    AccountType.PSP_FEE_EXPENSE: NormalBalance.DEBIT,
    AccountType.PAYOUTS_IN_TRANSIT: NormalBalance.CREDIT,
    AccountType.INTERCHANGE_FEES: NormalBalance.DEBIT,
    AccountType.SCHEME_FEES: NormalBalance.DEBIT,
    AccountType.BANK_FEES: NormalBalance.DEBIT,
}


class AccountStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    CLOSED = "CLOSED"


class Account(msgspec.Struct, frozen=True):
    type: AccountType
    entity_id: str
    currency: Currency

    @property
    def code(self) -> str:
        return account_code(self.type, self.entity_id, self.currency)

    @classmethod
    def global_(cls, type_: AccountType, currency: Currency) -> Account:
        return cls(type_, GLOBAL, currency)

    @classmethod
    def merchant(cls, seller_id: str, currency: Currency) -> Account:
        return cls(AccountType.MERCHANT_PAYABLE, seller_id, currency)


@cache  # a handful of account types, currencies and sellers: every journal asks again
def account_code(type_: AccountType, entity_id: str, currency: Currency) -> str:
    return f"{type_.value}.{entity_id}.{currency.value}"


class InvalidAccountCode(ValueError):
    pass


# Every code `account_code` can make: a type, GLOBAL or a seller id, a currency. Published as the
# accountCode path parameter's pattern; a code outside it names no account (404).
ACCOUNT_CODE_PATTERN = (
    f"^(?:{'|'.join(t.value for t in AccountType)})"
    f"\\.{SELLER_ID_CHAR}{{1,{ID_LENGTH_MAX}}}"
    f"\\.(?:{'|'.join(c.value for c in Currency)})$"
)
ACCOUNT_CODE_LENGTH_MAX = max(len(t.value) for t in AccountType) + ID_LENGTH_MAX + 5
_ACCOUNT_CODE = re.compile(ACCOUNT_CODE_PATTERN)


def is_account_code(code: str) -> bool:
    return _ACCOUNT_CODE.fullmatch(code) is not None and encodable(code)


def parse_account_code(code: str) -> Account:
    """`TYPE.entity.CCY`; the entity may itself contain dots."""
    type_, _, rest = code.partition(".")
    entity, _, currency = rest.rpartition(".")
    if not entity:
        raise InvalidAccountCode(code)
    try:
        return Account(AccountType(type_), entity, Currency(currency))
    except ValueError:
        raise InvalidAccountCode(code) from None
