-- The pipeline's second shape: fewer events, no inbox, queue tables dropped whole, and
-- horizons taken from transaction ids instead of locks.
--
-- Outbox. Rows are inserted once and never updated. Each row belongs to one of 32 shards (by its
-- key), and the relay that leads a shard reads it in (tx, id) order behind the transaction-id
-- horizon: a row whose transaction id is below the oldest transaction still running
-- (pg_snapshot_xmin) can no longer be joined by an earlier, slower transaction, so reading
-- "everything after my cursor below that horizon" never skips a row that commits late. Each
-- shard's cursor says how far its events were handled. The table is partitioned by time; a
-- partition is dropped whole once every shard's cursor is past it.
ALTER TABLE outbox RENAME TO outbox_v1;
DROP TRIGGER outbox_notify ON outbox_v1;
DROP FUNCTION outbox_notify();

CREATE SEQUENCE outbox_position_seq;
CREATE TABLE outbox (
    shard       smallint    NOT NULL CHECK (shard BETWEEN 0 AND 31),
    tx          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id          bigint      NOT NULL DEFAULT nextval('outbox_position_seq'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    event_id    text        NOT NULL,   -- deterministic: the same fact has the same id
    event_type  text        NOT NULL,
    topic       text        NOT NULL,
    msg_key     text        NOT NULL,   -- per-key order; Kafka key
    payload     bytea       NOT NULL,   -- the envelope, JSON
    traceparent text
) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_default PARTITION OF outbox DEFAULT;  -- only if the partition job fell behind
CREATE INDEX outbox_shard_position ON outbox (shard, tx, id);

CREATE TABLE outbox_cursors (
    shard      smallint    PRIMARY KEY CHECK (shard BETWEEN 0 AND 31),
    tx         xid8        NOT NULL DEFAULT '0',
    id         bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox_cursors (shard) SELECT generate_series(0, 31);

-- Carry over what the previous relay had not sent yet, in its order. They are dated in the past
-- so that they stay in the default partition, which time partitions never overlap.
INSERT INTO outbox (shard, created_at, event_id, event_type, topic, msg_key, payload, traceparent)
SELECT (hashtext(msg_key) & 2147483647) % 32, 'epoch', event_id, event_type, topic, msg_key, payload, traceparent
FROM outbox_v1 WHERE status <> 'SENT' ORDER BY id;
DROP TABLE outbox_v1;

-- Handlers are idempotent by state guards (an order only accepts the attempt it waits for, a
-- journal id is recorded once, an overlay entry is a set member), so no inbox rows are kept.
DROP TABLE inbox;

-- Dead letters can be replayed; the row stays as history.
ALTER TABLE dead_letters ADD COLUMN replayed_at timestamptz;

-- Payments: the Idempotency-Key and the business key belong to the calling client. The key's
-- request fingerprint lives as long as the payment, so a key reused with another body is refused
-- for good; the first response is kept for replay for the retention period.
ALTER TABLE payments ADD COLUMN client_id text NOT NULL DEFAULT '';
ALTER TABLE payments ADD COLUMN request_fingerprint bytea;
ALTER TABLE payments DROP CONSTRAINT payments_idempotency_key_key;
DROP INDEX payments_business_key;
UPDATE payments p SET request_fingerprint = k.fingerprint
FROM idempotency_keys k
WHERE p.idempotency_key = k.scope || E'\x1f' || k.key;
UPDATE payments SET client_id = split_part(idempotency_key, E'\x1f', 1),
                    idempotency_key = substr(idempotency_key, strpos(idempotency_key, E'\x1f') + 1)
WHERE idempotency_key LIKE E'%\x1f%';
CREATE UNIQUE INDEX payments_idempotency_key ON payments (client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX payments_business_key ON payments (client_id, buyer_id, order_id, total_amount_minor, currency)
    WHERE idempotency_key IS NULL;

CREATE TABLE idempotency_responses (
    payment_id      bigint      NOT NULL,
    response_status smallint    NOT NULL,
    response_body   bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
CREATE TABLE idempotency_responses_default PARTITION OF idempotency_responses DEFAULT;
CREATE INDEX idempotency_responses_payment ON idempotency_responses (payment_id);
INSERT INTO idempotency_responses (payment_id, response_status, response_body, created_at)
SELECT p.payment_id, k.response_status, k.response_body, k.created_at
FROM idempotency_keys k JOIN payments p ON p.client_id = k.scope AND p.idempotency_key = k.key
WHERE k.state = 'COMPLETED';
DROP TABLE idempotency_keys;

-- Payment orders: which attempt's PSP idempotency key the next call uses (a retry after an
-- unanswered call must reuse it), and whether the last call went unanswered.
ALTER TABLE payment_orders ADD COLUMN psp_key_attempt integer NOT NULL DEFAULT 0 CHECK (psp_key_attempt >= 0);
ALTER TABLE payment_orders ADD COLUMN psp_outcome_unknown boolean NOT NULL DEFAULT false;
ALTER TABLE payment_orders ADD CONSTRAINT payment_orders_key_attempt CHECK (psp_key_attempt <= retry_count);
CREATE INDEX payment_orders_open ON payment_orders (updated_at)
    WHERE status IN ('INITIATED_PENDING', 'CAPTURE_REQUESTED', 'PENDING_CAPTURE');

-- Ledger: every journal and posting carries its transaction id. The balance fold takes the
-- transaction-id horizon (below it every transaction has finished), so it needs no lock that
-- writers must share; and "a posting joins only a journal of its own transaction" compares
-- 64-bit transaction ids, which never wrap.
ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_immutable;
ALTER TABLE postings DISABLE TRIGGER postings_immutable;
ALTER TABLE journal_entries ADD COLUMN tx xid8;
ALTER TABLE postings ADD COLUMN tx xid8;
UPDATE journal_entries SET tx = '1';
UPDATE postings SET tx = '1';
ALTER TABLE journal_entries ENABLE TRIGGER journal_entries_immutable;
ALTER TABLE postings ENABLE TRIGGER postings_immutable;
ALTER TABLE journal_entries ALTER COLUMN tx SET DEFAULT pg_current_xact_id(), ALTER COLUMN tx SET NOT NULL;
ALTER TABLE postings ALTER COLUMN tx SET DEFAULT pg_current_xact_id(), ALTER COLUMN tx SET NOT NULL;
DROP INDEX postings_seq;
CREATE INDEX postings_tx ON postings (tx);

CREATE OR REPLACE FUNCTION postings_checked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    this_tx constant xid8 := pg_current_xact_id();
    p record;
    journal_seq bigint;
    journal_tx xid8;
    account_currency char(3);
    account_normal text;
BEGIN
    FOR p IN SELECT journal_id, seq, tx, account_code, direction, amount_minor, signed_amount_minor, currency
               FROM new_postings LOOP
        SELECT j.seq, j.tx INTO journal_seq, journal_tx FROM journal_entries j WHERE j.journal_id = p.journal_id;
        IF journal_tx IS DISTINCT FROM this_tx OR p.tx IS DISTINCT FROM this_tx OR p.seq IS DISTINCT FROM journal_seq THEN
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

-- Fold whatever the previous horizon had not, then switch the horizon to transaction ids: every
-- posting written before this migration carries tx 1, below the new horizon.
INSERT INTO account_balances AS b (account_code, balance_minor, updated_at)
SELECT account_code, sum(signed_amount_minor), now()
FROM postings WHERE seq > (SELECT folded_seq FROM balance_horizon)
GROUP BY account_code
ON CONFLICT (account_code) DO UPDATE SET balance_minor = b.balance_minor + EXCLUDED.balance_minor, updated_at = now();
ALTER TABLE balance_horizon DROP COLUMN folded_seq;
ALTER TABLE balance_horizon ADD COLUMN folded_tx xid8 NOT NULL DEFAULT '2';

-- Redis state (retry timers, the balance overlay keyed by the old horizon) no longer matches:
-- a new identity makes the service clear it at start; Postgres holds everything it derives from.
UPDATE database_identity SET identity = md5(random()::text || clock_timestamp()::text);

-- The cursors are updated all day: leave room for updates in place.
ALTER TABLE outbox_cursors SET (fillfactor = 50);
