-- Balances: snapshots folded from the postings, up to a horizon below which every
-- journal has committed. Real-time reads add the postings above the horizon, kept in Redis.

CREATE TABLE account_balances (
    account_code  text        PRIMARY KEY REFERENCES accounts,
    balance_minor bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every posting with seq <= folded_seq is in account_balances; none above it.
CREATE TABLE balance_horizon (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    folded_seq bigint      NOT NULL DEFAULT 0,
    folded_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO balance_horizon DEFAULT VALUES;
