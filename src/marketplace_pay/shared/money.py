"""Money: integer minor units and a currency. Never a float."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Currency(StrEnum):
    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class CurrencyMismatch(ValueError):
    pass


class Money(msgspec.Struct, frozen=True):
    """An amount in minor units (cents). Zero and negative values exist for arithmetic
    (balances, differences); amounts a client sends are validated positive at the edge."""

    amount_minor: int
    currency: Currency

    @classmethod
    def zero(cls, currency: Currency) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __str__(self) -> str:
        return f"{self.amount_minor} {self.currency} (minor units)"


class AmountView(msgspec.Struct, frozen=True):
    """Money as the API shows it: {"quantity": <minor units>, "currency": "EUR"}."""

    quantity: int
    currency: str

    @classmethod
    def of(cls, money: Money) -> AmountView:
        return cls(quantity=money.amount_minor, currency=money.currency.value)
