-- Reconciliation at scale: break status and history, three-way pairs,
-- the records behind each break, settlement lines, staged record bodies.

-- The staged record as sent (hex of the Record message).
ALTER TABLE recon_records ADD COLUMN body TEXT NOT NULL DEFAULT '';

ALTER TABLE recon_breaks ADD COLUMN partner_id TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN business_date TEXT NOT NULL DEFAULT '';
-- BANK_PARTNER, BANK_LEDGER or PARTNER_LEDGER; "left" is the first book.
ALTER TABLE recon_breaks ADD COLUMN pair TEXT NOT NULL DEFAULT 'BANK_PARTNER';
-- OPEN or RESOLVED.
ALTER TABLE recon_breaks ADD COLUMN status TEXT NOT NULL DEFAULT 'OPEN';
ALTER TABLE recon_breaks ADD COLUMN ledger_amount BIGINT NOT NULL DEFAULT 0;
-- Comma-separated names of what differs.
ALTER TABLE recon_breaks ADD COLUMN components TEXT NOT NULL DEFAULT '';
-- Hex of the Record messages behind the break ('' when that side has none).
ALTER TABLE recon_breaks ADD COLUMN left_record TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN right_record TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN resolved_by TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN resolution_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN resolved_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE recon_breaks ADD COLUMN resolved_by_run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE recon_breaks ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;

UPDATE recon_breaks SET
    partner_id = (SELECT r.partner_id FROM recon_runs r WHERE r.run_id = recon_breaks.run_id),
    business_date = (SELECT r.business_date FROM recon_runs r WHERE r.run_id = recon_breaks.run_id)
WHERE EXISTS (SELECT 1 FROM recon_runs r WHERE r.run_id = recon_breaks.run_id);

CREATE INDEX recon_breaks_open ON recon_breaks (partner_id, status, business_date);
CREATE INDEX recon_breaks_partner ON recon_breaks (partner_id, break_id);

-- A run's settlement lines: each body is an encoded
-- StreamSettlementLinesResponse of up to 20,000 lines.
CREATE TABLE recon_settlement_chunks (
    run_id TEXT NOT NULL,
    chunk BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (run_id, chunk)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
