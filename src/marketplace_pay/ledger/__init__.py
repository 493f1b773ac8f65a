"""Ledger context: accounts, the account directory (sellers), journals and postings.

Other contexts import only what is exposed here."""

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller

__all__ = ["OnboardSeller", "Seller"]
