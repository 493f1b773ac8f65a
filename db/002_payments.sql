-- Payments. Lines carry the payment-order ids allocated at creation.

CREATE TABLE payments (
    payment_id            bigint      PRIMARY KEY,
    buyer_id              text        NOT NULL CHECK (length(buyer_id) BETWEEN 1 AND 128),
    order_id              text        NOT NULL CHECK (length(order_id) BETWEEN 1 AND 128),
    currency              char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    total_amount_minor    bigint      NOT NULL CHECK (total_amount_minor > 0),
    captured_amount_minor bigint      NOT NULL DEFAULT 0
        CHECK (captured_amount_minor BETWEEN 0 AND total_amount_minor),
    status                text        NOT NULL CHECK (status IN ('PENDING_AUTH', 'AUTHORIZED', 'DECLINED',
                                                                 'CAPTURED', 'CAPTURED_PARTIALLY', 'CAPTURE_FAILED')),
    lines                 jsonb       NOT NULL,  -- [{"paymentOrderId": int, "sellerId": str, "amountMinor": int}]
    idempotency_key       text        UNIQUE,    -- "<caller>\x1f<Idempotency-Key>", NULL when keyed by business key
    trace_id              text        NOT NULL,
    traceparent           text,
    auth_check_after      timestamptz,           -- lease of the PENDING_AUTH resolver
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
-- Without an Idempotency-Key, (buyer, order, total) identifies the payment: a repeat finds it.
CREATE UNIQUE INDEX payments_business_key ON payments (buyer_id, order_id, total_amount_minor, currency)
    WHERE idempotency_key IS NULL;
CREATE INDEX payments_pending_auth ON payments (created_at) WHERE status = 'PENDING_AUTH';
