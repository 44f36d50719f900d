-- Rolling re-matching of every break class, and the settlement of resolved breaks.

-- How a RESOLVED break was closed ('' while open):
--   MATCHED    a later run's records make it match; that run settles it (BANK_PARTNER);
--   REPLACED   a later run's records changed it but it still differs; a break of that run
--              carries the transaction on;
--   CLEARED    a DUPLICATE whose other side a later run sent the same copy of; settles
--              nothing (its transaction settled when its first records matched);
--   SUPERSEDED its day was reconciled again;
--   BY_HAND    ResolveBreak.
ALTER TABLE recon_breaks ADD COLUMN resolution_kind TEXT NOT NULL DEFAULT '';
-- ResolveBreak with settle: the business day (YYYY-MM-DD, in the business time zone) from
-- which the bank's record settles; '' when the resolution settles nothing.
ALTER TABLE recon_breaks ADD COLUMN settle_on TEXT NOT NULL DEFAULT '';
-- The run whose settlement holds the break's amount; '' when none (yet).
ALTER TABLE recon_breaks ADD COLUMN settled_by_run_id TEXT NOT NULL DEFAULT '';

-- Breaks closed before this migration: closed by a run were either superseded or closed by
-- the arrival of their missing record; any other resolver is a person. A missing record
-- that arrived closed the break whether or not the pair then agreed: when the closing run
-- found a break of its own for the same transaction (other than a duplicate copy), the pair
-- still differed and that break holds it (REPLACED, settles nothing); otherwise the pair
-- matched and settled in the closing run when BANK_PARTNER (MATCHED).
UPDATE recon_breaks SET resolution_kind = CASE
        WHEN resolved_by <> 'colend-reconciliation' THEN 'BY_HAND'
        WHEN resolution_reason LIKE 'superseded%' THEN 'SUPERSEDED'
        WHEN EXISTS (
            SELECT 1 FROM recon_breaks AS successor
            WHERE successor.run_id = recon_breaks.resolved_by_run_id
              AND successor.partner_id = recon_breaks.partner_id
              AND successor.pair = recon_breaks.pair
              AND successor.transaction_id = recon_breaks.transaction_id
              AND successor.break_class <> 'DUPLICATE'
        ) THEN 'REPLACED'
        ELSE 'MATCHED'
    END
WHERE status = 'RESOLVED';
UPDATE recon_breaks SET settled_by_run_id = resolved_by_run_id
WHERE resolution_kind = 'MATCHED' AND pair = 'BANK_PARTNER';

-- A run finds what the earlier runs of its day closed, and the hand resolutions it settles.
CREATE INDEX recon_runs_day ON recon_runs (partner_id, business_date);
CREATE INDEX recon_breaks_resolved_by ON recon_breaks (resolved_by_run_id);
CREATE INDEX recon_breaks_settle_on ON recon_breaks (partner_id, settle_on);
