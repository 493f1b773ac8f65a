-- The double-entry ledger. The database itself keeps it honest: journals and postings
-- cannot be changed or deleted, a journal that does not balance cannot commit, and postings can
-- only join a journal created in the same transaction.

CREATE SEQUENCE journal_seq;

CREATE TABLE journal_entries (
    journal_id       text        PRIMARY KEY,      -- AUTH:<paymentId>, CAPTURE:<paymentOrderId>, ...
    seq              bigint      NOT NULL UNIQUE DEFAULT nextval('journal_seq'),
    journal_type     text        NOT NULL CHECK (journal_type IN ('AUTH_HOLD', 'CAPTURE', 'COMMISSION_FEE', 'AUTH_RELEASE',
                                                                  'SETTLEMENT', 'PAYOUT', 'REFUND', 'ADJUSTMENT')),
    name             text        NOT NULL,
    currency         char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    payment_id       bigint,
    payment_order_id bigint,
    seller_id        text,
    source_event_id  text        NOT NULL,          -- the LedgerRecordingCommand recorded
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_payment_id ON journal_entries (payment_id);

CREATE TABLE postings (
    posting_id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    journal_id          text        NOT NULL REFERENCES journal_entries,
    seq                 bigint      NOT NULL,       -- the journal's seq (balances fold by it)
    account_code        text        NOT NULL REFERENCES accounts,
    direction           text        NOT NULL CHECK (direction IN ('DEBIT', 'CREDIT')),
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    signed_amount_minor bigint      NOT NULL,       -- effect on the account's balance (+ on its normal side)
    currency            char(3)     NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (journal_id, account_code)               -- no account twice in one journal
);
CREATE INDEX postings_account_statement ON postings (account_code, posting_id DESC);
CREATE INDEX postings_seq ON postings (seq);

-- Immutability.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is immutable: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation', HINT = 'record a correcting journal instead';
END $$;
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- At commit: every journal written in the transaction has >= 2 postings, balances, and is in
-- one currency.
CREATE FUNCTION journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    debits bigint;
    credits bigint;
    other_currency integer;
BEGIN
    SELECT count(*),
           coalesce(sum(amount_minor) FILTER (WHERE direction = 'DEBIT'), 0),
           coalesce(sum(amount_minor) FILTER (WHERE direction = 'CREDIT'), 0),
           count(*) FILTER (WHERE currency <> NEW.currency)
      INTO n, debits, credits, other_currency
      FROM postings WHERE journal_id = NEW.journal_id;
    IF n < 2 THEN
        RAISE EXCEPTION 'journal % has % posting(s); at least 2 are required', NEW.journal_id, n
            USING ERRCODE = 'check_violation';
    END IF;
    IF debits <> credits THEN
        RAISE EXCEPTION 'journal % is unbalanced: debits % <> credits %', NEW.journal_id, debits, credits
            USING ERRCODE = 'check_violation';
    END IF;
    IF other_currency > 0 THEN
        RAISE EXCEPTION 'journal % mixes currencies', NEW.journal_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER journal_balanced AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_balanced();

-- Postings join only a journal created in this transaction (so a committed journal can never
-- gain a posting), carry its seq, and their signed amount follows the account's normal balance.
CREATE FUNCTION postings_checked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_postings p JOIN journal_entries j USING (journal_id)
               WHERE j.xmin <> xid(pg_current_xact_id()) OR p.seq <> j.seq) THEN
        RAISE EXCEPTION 'postings can only be added, with its seq, to a journal created in the same transaction'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_postings p
               JOIN accounts a USING (account_code)
               JOIN account_types t USING (account_type)
               WHERE p.currency <> a.currency
                  OR p.signed_amount_minor <> CASE WHEN p.direction = t.normal_balance
                                                   THEN p.amount_minor ELSE -p.amount_minor END) THEN
        RAISE EXCEPTION 'posting currency or signed amount does not match its account' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER postings_checked AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION postings_checked();
