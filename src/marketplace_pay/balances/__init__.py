"""Balances context: real-time account balances (a snapshot in Postgres plus the recent postings
in Redis), folding and reconciliation.

Other contexts and the composition root import only what is exposed here."""

from marketplace_pay.balances.application.ports import BalanceStore, Overlay, OverlayUnavailable
from marketplace_pay.balances.application.reconcile import ReconcileReport
from marketplace_pay.balances.application.service import Balances, SellerAccounts
from marketplace_pay.balances.domain.balance import Balance, Entry

__all__ = [
    "Balance",
    "BalanceStore",
    "Balances",
    "Entry",
    "Overlay",
    "OverlayUnavailable",
    "ReconcileReport",
    "SellerAccounts",
]
