-- The ledger's account directory: every account, with status and, for sellers, the
-- commission rate. A seller is its MERCHANT_PAYABLE account.

CREATE TABLE account_types (
    account_type   text PRIMARY KEY,
    normal_balance text NOT NULL CHECK (normal_balance IN ('DEBIT', 'CREDIT')),
    category       text NOT NULL CHECK (category IN ('ASSET', 'EXPENSE', 'LIABILITY', 'EQUITY', 'REVENUE'))
);
INSERT INTO account_types VALUES
    ('PLATFORM_CASH',               'DEBIT',  'ASSET'),
    ('PSP_RECEIVABLES',             'DEBIT',  'ASSET'),
    ('AUTH_RECEIVABLE',             'DEBIT',  'ASSET'),
    ('AUTH_LIABILITY',              'CREDIT', 'LIABILITY'),
    ('MERCHANT_PAYABLE',            'CREDIT', 'LIABILITY'),
    ('PLATFORM_COMMISSION_REVENUE', 'CREDIT', 'REVENUE'),
    ('PSP_FEE_EXPENSE',             'DEBIT',  'EXPENSE'),
    ('INTERCHANGE_FEES',            'DEBIT',  'EXPENSE'),
    ('SCHEME_FEES',                 'DEBIT',  'EXPENSE'),
    ('BANK_FEES',                   'DEBIT',  'EXPENSE');

CREATE TABLE accounts (
    account_code   text        PRIMARY KEY,
    account_type   text        NOT NULL REFERENCES account_types,
    entity_id      text        NOT NULL CHECK (length(entity_id) BETWEEN 1 AND 128 AND entity_id !~ '\s'),
    currency       char(3)     NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    status         text        NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED', 'CLOSED')),
    commission_bps integer     CHECK (commission_bps BETWEEN 0 AND 10000),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (account_code = account_type || '.' || entity_id || '.' || currency),
    CHECK ((account_type = 'MERCHANT_PAYABLE') = (commission_bps IS NOT NULL))
);
-- One settlement currency per seller.
CREATE UNIQUE INDEX accounts_one_payable_per_seller ON accounts (entity_id) WHERE account_type = 'MERCHANT_PAYABLE';

INSERT INTO accounts (account_code, account_type, entity_id, currency)
SELECT t.account_type || '.GLOBAL.' || c.currency, t.account_type, 'GLOBAL', c.currency
FROM account_types t CROSS JOIN (VALUES ('EUR'), ('USD'), ('GBP')) AS c(currency)
WHERE t.account_type <> 'MERCHANT_PAYABLE';

INSERT INTO accounts (account_code, account_type, entity_id, currency, commission_bps) VALUES
    ('MERCHANT_PAYABLE.SELLER-111.EUR', 'MERCHANT_PAYABLE', 'SELLER-111', 'EUR', 500),
    ('MERCHANT_PAYABLE.SELLER-222.EUR', 'MERCHANT_PAYABLE', 'SELLER-222', 'EUR', 500),
    ('MERCHANT_PAYABLE.SELLER-333.EUR', 'MERCHANT_PAYABLE', 'SELLER-333', 'EUR', 500);
