CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- One row a check. subject_key is a keyed blind index of the person and
-- business; no identifier is stored in clear. body is the KycCheck message.
CREATE TABLE kyc_checks (
    check_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    subject_key TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX kyc_checks_subject ON kyc_checks (subject_key);

CREATE TABLE watchlist_entries (
    entry_id TEXT PRIMARY KEY,
    kind BIGINT NOT NULL,
    name TEXT NOT NULL,
    normalized_name TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
