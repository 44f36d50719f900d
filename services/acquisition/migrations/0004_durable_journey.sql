-- The journey as a durable state machine with one owner at a time: the
-- owner holds a lease it renews at each step; a journey whose owner died
-- (lease expired) is taken over by the sweeper of any replica. A parked
-- journey remembers the step it stopped at.
ALTER TABLE applications ADD COLUMN parked_step TEXT NOT NULL DEFAULT '';
ALTER TABLE applications ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE applications ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;

-- Status changes for the partner's watch streams, written in the same
-- transaction as the change (event_id = the history event's id) and
-- relayed at least once.
CREATE TABLE outbox (
    event_id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (sent_at, created_at);
