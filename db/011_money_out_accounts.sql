-- Money out: the journal types of refunds, payouts and PSP settlement, and the account that holds
-- payouts on their way to a seller's bank (PAYOUTS_IN_TRANSIT, a liability), per currency.

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_journal_type_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_journal_type_check CHECK (journal_type IN (
    'AUTH_HOLD', 'CAPTURE', 'COMMISSION_FEE', 'AUTH_RELEASE',
    'REFUND', 'COMMISSION_REFUND', 'PAYOUT', 'PAYOUT_PAID', 'PAYOUT_RETURNED', 'SETTLEMENT',
    'ADJUSTMENT'))  -- an operator's correction, written by hand
    -- Not re-checked against the rows already there (that would scan the whole ledger under an
    -- exclusive lock): each of them passed the constraint this one replaces, whose types are all
    -- in this list. New rows are checked as always.
    NOT VALID;

INSERT INTO account_types VALUES ('PAYOUTS_IN_TRANSIT', 'CREDIT', 'LIABILITY');

INSERT INTO accounts (account_code, account_type, entity_id, currency)
SELECT 'PAYOUTS_IN_TRANSIT.GLOBAL.' || c.currency, 'PAYOUTS_IN_TRANSIT', 'GLOBAL', c.currency
FROM (VALUES ('EUR'), ('USD'), ('GBP')) AS c(currency);
