CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);

-- One row an application. request_body is the SubmitApplicationRequest as
-- received (the journey reads it); borrower keys are keyed blind indexes.
CREATE TABLE applications (
    application_id TEXT PRIMARY KEY,
    partner_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason_codes TEXT NOT NULL,
    business_name TEXT NOT NULL,
    credit_code TEXT NOT NULL,
    masked_resident_id TEXT NOT NULL,
    person_key TEXT NOT NULL,
    business_key TEXT NOT NULL,
    currency TEXT NOT NULL,
    requested_amount BIGINT NOT NULL,
    term_months BIGINT NOT NULL,
    purpose BIGINT NOT NULL,
    repayment_method BIGINT NOT NULL,
    request_body TEXT NOT NULL,
    consent_scopes TEXT NOT NULL,
    consent_channel TEXT NOT NULL,
    consent_text_version TEXT NOT NULL,
    consent_granted_at BIGINT NOT NULL,
    kyc_check_id TEXT NOT NULL,
    kyc_age BIGINT NOT NULL,
    kyc_region TEXT NOT NULL,
    decision TEXT NOT NULL,
    funding TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX applications_partner ON applications (partner_id, application_id);
CREATE INDEX applications_status ON applications (status);

CREATE TABLE application_events (
    event_id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    reason_codes TEXT NOT NULL,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX application_events_app ON application_events (application_id, event_id);

-- A borrower (by person and by business) in flight with a partner: the
-- primary key makes concurrent duplicate submissions impossible.
CREATE TABLE inflight_borrowers (
    partner_id TEXT NOT NULL,
    borrower_key TEXT NOT NULL,
    application_id TEXT NOT NULL,
    PRIMARY KEY (partner_id, borrower_key)
);
