-- The bank's reference data for the regulatory limits (one row, id = 1).
CREATE TABLE bank_reference (
    id BIGINT PRIMARY KEY,
    net_tier1_capital BIGINT NOT NULL,
    total_loan_balance BIGINT NOT NULL,
    currency TEXT NOT NULL,
    as_of TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The bank's share of co-lent principal reserved or outstanding:
-- scope 'ALL' (rule C3) and 'PARTNER:<id>' (rule C2).
CREATE TABLE bank_exposure (
    scope TEXT PRIMARY KEY,
    used BIGINT NOT NULL
);

-- Partners and credit-enhancement firms the bank works with (rule C12).
CREATE TABLE whitelist (
    institution_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    effective_from TEXT NOT NULL,
    effective_to TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (institution_id, kind, effective_from)
);

ALTER TABLE loans ADD COLUMN borrower_key TEXT NOT NULL DEFAULT '';
ALTER TABLE loans ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX loans_borrower ON loans (borrower_key, status);
CREATE INDEX loans_expiry ON loans (status, expires_at);
