"""Ledger context: accounts, the account directory (sellers), journals and postings.

Other contexts and the composition root import only what is exposed here."""

from marketplace_pay.ledger.application.directory import CachedSellers, OnboardSeller, Seller, SellerStore
from marketplace_pay.ledger.application.recording import LedgerUnitOfWork
from marketplace_pay.ledger.application.service import Ledger, PaymentLookup
from marketplace_pay.ledger.application.views import JournalView, LedgerReads, PostingLine
from marketplace_pay.ledger.domain.accounts import (
    ACCOUNT_CODE_LENGTH_MAX,
    ACCOUNT_CODE_PATTERN,
    AccountStatus,
    is_account_code,
)
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded

__all__ = [
    "ACCOUNT_CODE_LENGTH_MAX",
    "ACCOUNT_CODE_PATTERN",
    "AccountStatus",
    "CachedSellers",
    "JournalView",
    "Ledger",
    "LedgerEntriesRecorded",
    "LedgerReads",
    "LedgerUnitOfWork",
    "OnboardSeller",
    "PaymentLookup",
    "PostingLine",
    "Seller",
    "SellerStore",
    "is_account_code",
]
