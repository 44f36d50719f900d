-- The idempotency keys (libs/platform/src/idempotency.rs) and the audit log
-- (libs/platform/src/audit.rs), for both backends. Every service created
-- these tables in its own first migrations; this runs after the service's
-- migrations and adopts them (IF NOT EXISTS), so from here on they are
-- defined once, here, and a new service does not repeat them.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
-- The retention purge deletes by age (`DELETE … WHERE created_at < $1`).
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- Append-only and hash-chained: each row's hash covers the previous row's
-- hash and its own fields; the single head row serializes appends and holds
-- the chain's last hash.
CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    caller_class TEXT NOT NULL,
    caller_subject TEXT NOT NULL,
    partner_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, '' WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1);
