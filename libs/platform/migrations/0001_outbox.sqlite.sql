-- The outbox (libs/platform/src/outbox.rs), on SQLite. Events for other
-- services are written in the same transaction as the change they describe
-- and relayed at least once, in `seq` order within an aggregate. New tables
-- only: this runs before the service's own migrations, so one of them can
-- move an older outbox's pending events in.
CREATE TABLE IF NOT EXISTS outbox_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    aggregate_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    -- Hex of the payload bytes.
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Deliveries begun so far, the time the next may begin, why the last failed.
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    -- The relay round delivering it, until when (a lease, so replicas never deliver it at once).
    claimed_by TEXT NOT NULL DEFAULT '',
    claimed_until BIGINT NOT NULL DEFAULT 0,
    -- 0 while pending; when delivered (sent rows are purged after a retention).
    sent_at BIGINT NOT NULL DEFAULT 0
);
-- Pending events in order (sent_at = 0), and sent ones by age (the purge).
CREATE INDEX IF NOT EXISTS outbox_events_state ON outbox_events (sent_at, seq);
-- An aggregate's pending events: only the first of them may be delivered.
CREATE INDEX IF NOT EXISTS outbox_events_aggregate ON outbox_events (aggregate_id, seq) WHERE sent_at = 0;

-- Events given up on (too many attempts, or refused for good), with their
-- original seq; an aggregate with a dead letter is held until an operator
-- retries or drops it (`colend outbox retry|drop`).
CREATE TABLE IF NOT EXISTS outbox_dead_letters (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    aggregate_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    dead_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_dead_letters_aggregate ON outbox_dead_letters (aggregate_id);
