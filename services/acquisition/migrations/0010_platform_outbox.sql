-- Status changes for the watch streams move to the platform's outbox
-- (`outbox_events`, which the platform creates before this runs;
-- libs/platform/src/outbox.rs): aggregate the application, no payload
-- (a watcher reads the application), purged after the platform's retention.
-- Pending events move in their order; events already relayed are removed.
-- The old table stays, empty, for replicas of the previous version during a
-- rolling upgrade: the new relay runs this same file again every few seconds
-- and takes over what they still write there.
INSERT INTO outbox_events (event_id, aggregate_id, topic, payload, created_at, next_attempt_at)
SELECT o.event_id, o.application_id, 'acquisition.ApplicationChanged', '', o.created_at, o.created_at
FROM outbox o WHERE o.sent_at = 0 ORDER BY o.created_at, o.event_id
ON CONFLICT (event_id) DO NOTHING;
DELETE FROM outbox WHERE sent_at > 0
    OR EXISTS (SELECT 1 FROM outbox_events e WHERE e.event_id = outbox.event_id);
