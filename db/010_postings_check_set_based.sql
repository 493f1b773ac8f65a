-- Recording a journal cost more in the database than everything else a payment does: the posting
-- check looped row by row in PL/pgSQL, and two foreign keys ran a lookup per posting that also
-- took a KEY SHARE lock on the account row — on the hot GLOBAL accounts, every concurrent writer
-- shares that lock (a multixact per row). Same rules, cheaper:
--
-- * the check is one set-based query per statement, planned as index lookups (a transition table
--   has no statistics, and a hash join would read the whole ledger: see migration 007);
-- * it is what keeps postings pointing at existing journals and accounts, so the foreign keys go;
--   journals could never be deleted, and now neither can accounts (a seller is closed instead).
CREATE OR REPLACE FUNCTION postings_checked() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    this_tx constant xid8 := pg_current_xact_id();
BEGIN
    IF EXISTS (SELECT 1 FROM new_postings p LEFT JOIN journal_entries j ON j.journal_id = p.journal_id
               WHERE j.tx IS DISTINCT FROM this_tx OR p.tx IS DISTINCT FROM this_tx OR p.seq IS DISTINCT FROM j.seq) THEN
        RAISE EXCEPTION 'postings can only be added, with its seq, to a journal created in the same transaction'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_postings p
               LEFT JOIN accounts a ON a.account_code = p.account_code
               LEFT JOIN account_types t ON t.account_type = a.account_type
               WHERE p.currency IS DISTINCT FROM a.currency
                  OR p.signed_amount_minor IS DISTINCT FROM
                     (CASE WHEN p.direction = t.normal_balance THEN p.amount_minor ELSE -p.amount_minor END)) THEN
        RAISE EXCEPTION 'posting currency or signed amount does not match its account (or the account does not exist)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

ALTER TABLE postings DROP CONSTRAINT postings_journal_id_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_account_code_fkey;

CREATE FUNCTION accounts_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never deleted (postings refer to them); close the account instead'
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_refuse_delete();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts FOR EACH STATEMENT EXECUTE FUNCTION accounts_refuse_delete();

-- Fewer indexes to maintain on every journal: a journal's seq comes from a sequence (unique by
-- construction, looked up by nobody), and a posting is identified by its journal and account —
-- which was already unique — so that pair becomes the primary key.
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_seq_key;
ALTER TABLE postings DROP CONSTRAINT postings_pkey;
ALTER TABLE postings DROP CONSTRAINT postings_journal_id_account_code_key;
ALTER TABLE postings ADD PRIMARY KEY (journal_id, account_code);
