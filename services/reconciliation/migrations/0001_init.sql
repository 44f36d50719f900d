CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- Both sides' records of a business day.
CREATE TABLE recon_records (
    record_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    business_date TEXT NOT NULL,
    side TEXT NOT NULL,
    kind TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    loan_id TEXT NOT NULL,
    value_date TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount BIGINT NOT NULL,
    bank_portion BIGINT NOT NULL,
    partner_portion BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX recon_records_day ON recon_records (partner_id, business_date);

-- body is the Run message.
CREATE TABLE recon_runs (
    run_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    business_date TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE recon_breaks (
    break_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    break_class TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    loan_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    bank_amount BIGINT NOT NULL,
    partner_amount BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX recon_breaks_run ON recon_breaks (run_id, break_id);
