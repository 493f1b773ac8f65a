-- Seller payouts and PSP settlement: the ledger's treasury operations.
--
-- A payout takes money a seller is owed (MERCHANT_PAYABLE) to the seller's bank. Its PAYOUT
-- journal is written with the payout row, so the money is unavailable at once; the bank is asked
-- afterwards, and its answer writes PAYOUT_PAID (cash left) or PAYOUT_RETURNED (back to the
-- seller). Ids come from sequences, so a command-line run (which leases no snowflake instance)
-- can create payouts and settlements too.

CREATE SEQUENCE payout_id_seq;
CREATE SEQUENCE settlement_id_seq;

CREATE TABLE payouts (
    payout_id            bigint      PRIMARY KEY,
    seller_id            text        NOT NULL,
    account_code         text        NOT NULL,            -- the seller's MERCHANT_PAYABLE account
    amount_minor         bigint      NOT NULL CHECK (amount_minor > 0),
    currency             char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    status               text        NOT NULL CHECK (status IN ('PENDING', 'PAID', 'FAILED')),
    attempt              integer     NOT NULL DEFAULT 0,  -- the bank call the payout waits for
    bank_key_attempt     integer     NOT NULL DEFAULT 0,  -- the attempt whose key the next call reuses
    bank_outcome_unknown boolean     NOT NULL DEFAULT false,
    next_retry_at        timestamptz,                     -- PENDING: when the next call is due; NULL once dispatched
    client_id            text        NOT NULL,            -- who asked (Idempotency-Key scope)
    idempotency_key      text,
    request_fingerprint  bytea,
    response_status      smallint,                        -- the first response, replayed for the same key
    response_body        bytea,
    trace_id             text        NOT NULL,
    traceparent          text,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    CHECK (0 <= bank_key_attempt AND bank_key_attempt <= attempt),
    CHECK (status = 'PENDING' OR next_retry_at IS NULL),
    CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL))
);
CREATE UNIQUE INDEX payouts_idempotency_key ON payouts (client_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX payouts_seller ON payouts (seller_id, payout_id DESC);
CREATE INDEX payouts_open ON payouts (next_retry_at) WHERE status = 'PENDING';

-- PAID and FAILED are final, and the attempt never goes back, whatever UPDATE is run.
CREATE FUNCTION payouts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'PENDING' AND (NEW.status <> OLD.status OR NEW.attempt <> OLD.attempt) THEN
        RAISE EXCEPTION 'payout % is % and cannot change', OLD.payout_id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempt < OLD.attempt OR NEW.amount_minor <> OLD.amount_minor OR NEW.seller_id <> OLD.seller_id THEN
        RAISE EXCEPTION 'payout %: attempt, amount and seller cannot go back or change', OLD.payout_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payouts_guard BEFORE UPDATE ON payouts FOR EACH ROW EXECUTE FUNCTION payouts_guard();

-- One row per settlement run and currency: what the PSP paid into the platform's cash.
CREATE TABLE settlements (
    settlement_id    bigint      PRIMARY KEY,
    currency         char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    gross_minor      bigint      NOT NULL CHECK (gross_minor > 0),
    fee_minor        bigint      NOT NULL CHECK (fee_minor >= 0),
    net_minor        bigint      NOT NULL CHECK (net_minor >= 0),
    fee_bps          integer     NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    journals_covered integer     NOT NULL CHECK (journals_covered > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (gross_minor = fee_minor + net_minor)
);
CREATE INDEX settlements_created ON settlements (created_at);

-- Every CAPTURE and REFUND journal a settlement covered: at most once, whatever races.
CREATE TABLE settled_journals (
    journal_id    text   PRIMARY KEY,
    settlement_id bigint NOT NULL REFERENCES settlements
);
CREATE INDEX settled_journals_settlement ON settled_journals (settlement_id);

-- Correcting journals (type ADJUSTMENT, written by an operator: the ledger is never edited, a
-- mistake is corrected by a new journal) were allowed from the start; the list of journal types
-- rewritten for money out left them out by mistake. Every type, once more.
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_journal_type_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_journal_type_check CHECK (journal_type IN (
    'AUTH_HOLD', 'CAPTURE', 'COMMISSION_FEE', 'AUTH_RELEASE',
    'REFUND', 'COMMISSION_REFUND', 'PAYOUT', 'PAYOUT_PAID', 'PAYOUT_RETURNED', 'SETTLEMENT', 'ADJUSTMENT'));
