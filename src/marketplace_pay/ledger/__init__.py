"""Ledger context: accounts, the account directory (sellers), journals and postings.

Other contexts import only what is exposed here."""

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller
from marketplace_pay.ledger.domain.accounts import ACCOUNT_CODE_LENGTH_MAX, ACCOUNT_CODE_PATTERN, is_account_code

__all__ = ["ACCOUNT_CODE_LENGTH_MAX", "ACCOUNT_CODE_PATTERN", "OnboardSeller", "Seller", "is_account_code"]
