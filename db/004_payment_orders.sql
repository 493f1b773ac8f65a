-- Payment orders: one per payment line, captured on its own.

ALTER TABLE payments ADD COLUMN orders_open integer NOT NULL DEFAULT 0 CHECK (orders_open >= 0);
UPDATE payments SET orders_open = jsonb_array_length(lines) WHERE status IN ('PENDING_AUTH', 'AUTHORIZED');

CREATE TABLE payment_orders (
    payment_order_id bigint      PRIMARY KEY,                     -- allocated with the payment
    payment_id       bigint      NOT NULL REFERENCES payments,
    seller_id        text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    status           text        NOT NULL CHECK (status IN ('INITIATED_PENDING', 'CAPTURE_REQUESTED',
                                                            'PENDING_CAPTURE', 'CAPTURED', 'CAPTURE_FAILED')),
    retry_count      integer     NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    next_retry_at    timestamptz,  -- PENDING_CAPTURE: when the retry is due; NULL once it is dispatched
    trace_id         text        NOT NULL,
    traceparent      text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CHECK (status <> 'CAPTURE_REQUESTED' OR retry_count = 0),
    CHECK (status <> 'PENDING_CAPTURE' OR retry_count > 0)
);
CREATE INDEX payment_orders_payment_id ON payment_orders (payment_id);
CREATE INDEX payment_orders_retry_due ON payment_orders (next_retry_at) WHERE status = 'PENDING_CAPTURE';

-- Terminal statuses are sticky and the retry count never goes back, whatever UPDATE is run.
CREATE FUNCTION payment_orders_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('CAPTURED', 'CAPTURE_FAILED')
       AND (NEW.status <> OLD.status OR NEW.retry_count <> OLD.retry_count) THEN
        RAISE EXCEPTION 'payment order % is % and cannot change', OLD.payment_order_id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_count < OLD.retry_count THEN
        RAISE EXCEPTION 'payment order % retry count cannot go back (% -> %)',
            OLD.payment_order_id, OLD.retry_count, NEW.retry_count USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payment_orders_guard BEFORE UPDATE ON payment_orders
    FOR EACH ROW EXECUTE FUNCTION payment_orders_guard();
