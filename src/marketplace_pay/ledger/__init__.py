"""Ledger context: accounts, the account directory (sellers), journals and postings.

Other contexts and the composition root import only what is exposed here."""

from marketplace_pay.ledger.application.directory import CachedSellers, OnboardSeller, Seller, SellerStore
from marketplace_pay.ledger.application.payouts import PayoutPolicy
from marketplace_pay.ledger.application.ports import BankGateway, TreasuryReads, TreasuryUnitOfWork
from marketplace_pay.ledger.application.recording import RECORD_REFUNDS, LedgerUnitOfWork
from marketplace_pay.ledger.application.service import Ledger, PaymentLookup
from marketplace_pay.ledger.application.treasury import Treasury, TreasuryPolicy
from marketplace_pay.ledger.application.views import JournalView, LedgerReads, PostingLine
from marketplace_pay.ledger.domain.accounts import (
    ACCOUNT_CODE_LENGTH_MAX,
    ACCOUNT_CODE_PATTERN,
    AccountStatus,
    is_account_code,
)
from marketplace_pay.ledger.domain.events import (
    LedgerEntriesRecorded,
    PayoutFailed,
    PayoutPaid,
    PayoutRequested,
    PayPayout,
    SettlementRecorded,
)

__all__ = [
    "ACCOUNT_CODE_LENGTH_MAX",
    "ACCOUNT_CODE_PATTERN",
    "RECORD_REFUNDS",
    "AccountStatus",
    "BankGateway",
    "CachedSellers",
    "JournalView",
    "Ledger",
    "LedgerEntriesRecorded",
    "LedgerReads",
    "LedgerUnitOfWork",
    "OnboardSeller",
    "PayPayout",
    "PaymentLookup",
    "PayoutFailed",
    "PayoutPaid",
    "PayoutPolicy",
    "PayoutRequested",
    "PostingLine",
    "Seller",
    "SellerStore",
    "SettlementRecorded",
    "Treasury",
    "TreasuryPolicy",
    "TreasuryReads",
    "TreasuryUnitOfWork",
    "is_account_code",
]
