CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- Policy versions; the one with the highest seq is in force.
CREATE TABLE policies (
    version TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every decision with its inputs and policy version (audit trail).
-- body is the Decision message.
CREATE TABLE decisions (
    decision_id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL,
    partner_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX decisions_application ON decisions (application_id);
