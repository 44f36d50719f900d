-- Applications per borrower in the last 24 hours (the velocity limit).
CREATE INDEX applications_person ON applications (person_key, created_at);
