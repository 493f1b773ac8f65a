-- Refunds: money of a captured payment order given back to the shopper through the PSP.
--
-- A refund is created PENDING with its amount reserved on its order (`refund_reserved_minor`),
-- under the order's row lock: what the order can still refund is its amount minus what was
-- refunded minus what is reserved, so concurrent refunds can never give back more than was
-- captured. The PSP is called afterwards; SUCCEEDED moves the amount from reserved to refunded
-- (on the order and on its payment), FAILED releases the reservation.

-- The ALTERs below take short exclusive locks on payments and payment_orders. Behind a long
-- transaction they would queue every request touching those tables: give up instead (the start
-- fails with a lock timeout, and is tried again when the database is quieter).
SET LOCAL lock_timeout = '5s';

CREATE SEQUENCE refund_id_seq;

ALTER TABLE payment_orders
    ADD COLUMN refunded_amount_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN refund_reserved_minor bigint NOT NULL DEFAULT 0;
-- New columns, all 0 in the rows already there: nothing to re-check in them.
ALTER TABLE payment_orders ADD CONSTRAINT payment_orders_refund_check CHECK (
    refunded_amount_minor >= 0 AND refund_reserved_minor >= 0
    AND refunded_amount_minor + refund_reserved_minor <= amount_minor) NOT VALID;

ALTER TABLE payments ADD COLUMN refunded_amount_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE payments ADD CONSTRAINT payments_refund_check
    CHECK (refunded_amount_minor BETWEEN 0 AND captured_amount_minor) NOT VALID;

-- Once money was refunded, a payment whose orders are all finished is PARTIALLY_REFUNDED (part of
-- what was captured went back) or REFUNDED (all of it). Every row there already passed the
-- constraint this one replaces, whose statuses are all in this list.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check CHECK (status IN (
    'PENDING_AUTH', 'AUTHORIZED', 'DECLINED', 'CAPTURED', 'CAPTURED_PARTIALLY', 'CAPTURE_FAILED',
    'PARTIALLY_REFUNDED', 'REFUNDED')) NOT VALID;

CREATE TABLE refunds (
    refund_id           bigint      PRIMARY KEY,
    payment_id          bigint      NOT NULL,
    payment_order_id    bigint      NOT NULL,
    seller_id           text        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    reason              text        CHECK (length(reason) <= 255),
    status              text        NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    attempt             integer     NOT NULL DEFAULT 0,  -- the PSP call the refund waits for
    psp_key_attempt     integer     NOT NULL DEFAULT 0,  -- the attempt whose key the next call reuses
    psp_outcome_unknown boolean     NOT NULL DEFAULT false,
    next_retry_at       timestamptz,                     -- PENDING: when the next call is due; NULL once dispatched
    client_id           text        NOT NULL,            -- who asked (Idempotency-Key scope)
    idempotency_key     text,
    request_fingerprint bytea,
    response_status     smallint,                        -- the first response, replayed for the same key
    response_body       bytea,
    trace_id            text        NOT NULL,
    traceparent         text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CHECK (0 <= psp_key_attempt AND psp_key_attempt <= attempt),
    CHECK (status = 'PENDING' OR next_retry_at IS NULL),
    CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL))
);
CREATE UNIQUE INDEX refunds_idempotency_key ON refunds (client_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX refunds_payment ON refunds (payment_id, refund_id);
CREATE INDEX refunds_open ON refunds (next_retry_at) WHERE status = 'PENDING';

-- SUCCEEDED and FAILED are final, and the attempt never goes back, whatever UPDATE is run.
CREATE FUNCTION refunds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'PENDING' AND (NEW.status <> OLD.status OR NEW.attempt <> OLD.attempt) THEN
        RAISE EXCEPTION 'refund % is % and cannot change', OLD.refund_id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempt < OLD.attempt OR NEW.amount_minor <> OLD.amount_minor
       OR NEW.payment_order_id <> OLD.payment_order_id THEN
        RAISE EXCEPTION 'refund %: attempt, amount and order cannot go back or change', OLD.refund_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refunds_guard BEFORE UPDATE ON refunds FOR EACH ROW EXECUTE FUNCTION refunds_guard();

-- Reconciliation leaves operators' correcting journals out of the PSP receivables check: found by
-- this index, not by reading every journal.
CREATE INDEX journal_entries_adjustments ON journal_entries (journal_id) WHERE journal_type = 'ADJUSTMENT';
