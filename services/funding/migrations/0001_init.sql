CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- Co-lending agreements, one row a version. Loans keep the version they were booked under.
CREATE TABLE agreements (
    partner_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    partner_share_bps BIGINT NOT NULL,
    bank_rate_bps BIGINT NOT NULL,
    partner_rate_bps BIGINT NOT NULL,
    currency TEXT NOT NULL,
    daily_quota BIGINT NOT NULL,
    total_quota BIGINT NOT NULL,
    effective_from TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (partner_id, version)
);

-- Partner principal reserved or outstanding (total quota), and reserved per day (daily quota).
CREATE TABLE partner_usage (
    partner_id TEXT PRIMARY KEY,
    used BIGINT NOT NULL
);
CREATE TABLE partner_daily_usage (
    partner_id TEXT NOT NULL,
    day TEXT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (partner_id, day)
);

CREATE TABLE loans (
    loan_id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL UNIQUE,
    partner_id TEXT NOT NULL,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    principal BIGINT NOT NULL,
    bank_amount BIGINT NOT NULL,
    partner_amount BIGINT NOT NULL,
    agreement_version BIGINT NOT NULL,
    partner_share_bps BIGINT NOT NULL,
    bank_rate_bps BIGINT NOT NULL,
    partner_rate_bps BIGINT NOT NULL,
    annual_rate_bps BIGINT NOT NULL,
    term_months BIGINT NOT NULL,
    method BIGINT NOT NULL,
    reserved_on TEXT NOT NULL,
    disbursed_on TEXT NOT NULL,
    disbursement_ref TEXT NOT NULL,
    principal_paid BIGINT NOT NULL,
    interest_paid BIGINT NOT NULL,
    penalty_paid BIGINT NOT NULL,
    partner_principal_paid BIGINT NOT NULL,
    partner_interest_paid BIGINT NOT NULL,
    partner_penalty_paid BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (bank_amount + partner_amount = principal)
);
CREATE INDEX loans_partner ON loans (partner_id);

CREATE TABLE instalments (
    loan_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    due_date TEXT NOT NULL,
    principal BIGINT NOT NULL,
    interest BIGINT NOT NULL,
    principal_paid BIGINT NOT NULL,
    interest_paid BIGINT NOT NULL,
    PRIMARY KEY (loan_id, seq)
);

-- body is the Repayment message with its allocations.
CREATE TABLE repayments (
    repayment_id TEXT PRIMARY KEY,
    loan_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    value_date TEXT NOT NULL,
    bank_ref TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX repayments_loan ON repayments (loan_id);

-- Double-entry ledger, per funder. Each posting balances per funder.
CREATE TABLE ledger_entries (
    entry_id TEXT PRIMARY KEY,
    posting_id TEXT NOT NULL,
    loan_id TEXT NOT NULL,
    funder TEXT NOT NULL,
    account TEXT NOT NULL,
    debit BIGINT NOT NULL,
    credit BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_loan ON ledger_entries (loan_id);
