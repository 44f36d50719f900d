-- The service moves its own outbox's pending events into the platform's
-- (which exists by now: the platform's new tables come first).
INSERT INTO outbox_events (event_id, aggregate_id, topic, payload, created_at, next_attempt_at)
SELECT o.event_id, o.aggregate, 'legacy', o.payload, o.created_at, o.created_at
FROM outbox o WHERE o.sent_at = 0 ORDER BY o.created_at, o.event_id
ON CONFLICT (event_id) DO NOTHING;
DELETE FROM outbox WHERE sent_at > 0 OR EXISTS (SELECT 1 FROM outbox_events e WHERE e.event_id = outbox.event_id);
