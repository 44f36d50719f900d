-- Applications closed before they were funded (a journey abandoned by the
-- bank's operators): a reservation request for one that is still in
-- flight in the network is refused, so no orphan reservation holds quota.
CREATE TABLE closed_applications (
    application_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    closed_at BIGINT NOT NULL
);
