-- Loan events move to the platform's outbox (`outbox_events`, which the
-- platform creates before this runs; libs/platform/src/outbox.rs): each
-- application's events in order, backoff per event, dead letters.
-- Pending events move in their order, under their application (found from
-- the loan the event id names, or from the repayment's loan); events
-- already sent are removed. The old table stays, empty, for replicas of the
-- previous version during a rolling upgrade: the new relay runs this same
-- file again every few seconds and takes over what they still write there.
INSERT INTO outbox_events (event_id, aggregate_id, topic, payload, created_at, next_attempt_at)
SELECT o.event_id,
    COALESCE(
        CASE
            WHEN o.event_id LIKE 'disbursed:%' THEN
                (SELECT l.application_id FROM loans l WHERE l.loan_id = SUBSTR(o.event_id, 11))
            WHEN o.event_id LIKE 'void:%' THEN
                (SELECT l.application_id FROM loans l WHERE l.loan_id = SUBSTR(o.event_id, 6))
            WHEN o.event_id LIKE 'repaid:%' THEN
                (SELECT l.application_id FROM loans l WHERE l.loan_id =
                    (SELECT r.loan_id FROM repayments r WHERE r.repayment_id = SUBSTR(o.event_id, 8)))
        END,
        o.event_id),
    'acquisition.RecordLoanEvent', o.payload, o.created_at, o.created_at
FROM outbox o WHERE o.sent_at = 0 ORDER BY o.created_at, o.event_id
ON CONFLICT (event_id) DO NOTHING;
DELETE FROM outbox WHERE sent_at > 0
    OR EXISTS (SELECT 1 FROM outbox_events e WHERE e.event_id = outbox.event_id);
