"""marketplace_pay: payments, a double-entry ledger and balances for multi-seller marketplaces."""
