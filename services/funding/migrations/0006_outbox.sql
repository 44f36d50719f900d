-- Events for other services, written in the same transaction as the change
-- they describe and relayed at least once (the receiver deduplicates by event id).
CREATE TABLE outbox (
    event_id TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (sent_at, created_at);
