-- Transactional outbox, inbox and dead letters: the delivery machinery every context uses.

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- publish order
    event_id     text        NOT NULL UNIQUE,                      -- deterministic: the same fact, the same id
    event_type   text        NOT NULL,
    topic        text        NOT NULL,
    msg_key      text        NOT NULL,                             -- Kafka key, per-aggregate order
    payload      bytea       NOT NULL,                             -- the envelope, JSON
    traceparent  text,
    status       text        NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'CLAIMED', 'SENT')),
    attempts     integer     NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(),              -- back-off after a failed publish
    claimed_by   text,
    claimed_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    last_error   text
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE status <> 'SENT';
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE status = 'SENT';

-- Wake relays in other processes at commit. Only sessions that set mp.notify = 'on' (the
-- Kafka deployment, where several processes share one outbox) pay for the notification.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('mp.notify', true) = 'on' THEN
        PERFORM pg_notify('mp_outbox', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- One row per (handler, event) it has applied, written in the handler's own transaction.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

-- Events a handler could not process after its retries: kept for an operator, never dropped.
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    topic        text        NOT NULL,
    msg_key      text        NOT NULL,
    payload      bytea       NOT NULL,
    traceparent  text,
    error        text        NOT NULL,
    attempts     integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, event_id)
);

-- Idempotency-Key requests: the first response, replayed for the same key and body.
CREATE TABLE idempotency_keys (
    scope           text        NOT NULL,                 -- the caller (JWT subject)
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint     bytea       NOT NULL,                 -- sha256 of the canonical request
    state           text        NOT NULL CHECK (state IN ('IN_PROGRESS', 'COMPLETED')),
    lease_token     text,
    lease_until     timestamptz,
    response_status smallint,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (scope, key),
    CHECK (state = 'IN_PROGRESS' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Snowflake instance ids (shared/ids.py). A process holds its id with a session advisory lock
-- and heartbeats this row; another process takes a free id only if its heartbeat is stale, and
-- the holder stops minting ids before that, so two processes never mint with one id.
CREATE TABLE instance_leases (
    instance_id  smallint    PRIMARY KEY CHECK (instance_id BETWEEN 0 AND 31),
    holder       text        NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

-- Which database this is: Redis state (retry timers, balance overlay) records it, so Redis keys
-- left over from another database (restored, recreated) are recognised and cleared at start.
CREATE TABLE database_identity (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    identity   text        NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_identity DEFAULT VALUES;
