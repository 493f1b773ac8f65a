-- The postings check of 005 joined the statement's new postings to journal_entries and accounts.
-- Planned without statistics (a transition table has none, and a server with autovacuum off
-- never analyzes journal_entries), that join hashed the whole journal_entries table on every
-- INSERT into postings: each ledger write read the entire ledger and recording slowed down as
-- the ledger grew. Same rules, checked row by row through the primary keys, so a write costs
-- the same on a ledger of any size.
CREATE OR REPLACE FUNCTION postings_checked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_xact constant xid := xid(pg_current_xact_id());
    p record;
    journal_seq bigint;
    journal_xmin xid;
    account_currency char(3);
    account_normal text;
BEGIN
    FOR p IN SELECT journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency
               FROM new_postings LOOP
        SELECT j.seq, j.xmin INTO journal_seq, journal_xmin FROM journal_entries j WHERE j.journal_id = p.journal_id;
        IF journal_xmin IS DISTINCT FROM this_xact OR p.seq IS DISTINCT FROM journal_seq THEN
            RAISE EXCEPTION 'postings can only be added, with its seq, to a journal created in the same transaction'
                USING ERRCODE = 'restrict_violation';
        END IF;
        SELECT a.currency, t.normal_balance INTO account_currency, account_normal
          FROM accounts a JOIN account_types t USING (account_type) WHERE a.account_code = p.account_code;
        IF p.currency IS DISTINCT FROM account_currency
           OR p.signed_amount_minor <> (CASE WHEN p.direction = account_normal THEN p.amount_minor ELSE -p.amount_minor END) THEN
            RAISE EXCEPTION 'posting currency or signed amount does not match its account' USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
