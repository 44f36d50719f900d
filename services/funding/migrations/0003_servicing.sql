-- Servicing terms, frozen from the agreement onto each loan (rule P2).
ALTER TABLE agreements ADD COLUMN day_count TEXT NOT NULL DEFAULT 'ACT_360';
ALTER TABLE agreements ADD COLUMN penalty_rate_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agreements ADD COLUMN waterfall TEXT NOT NULL DEFAULT 'PENALTY,INTEREST,PRINCIPAL';
ALTER TABLE loans ADD COLUMN day_count TEXT NOT NULL DEFAULT 'ACT_360';
ALTER TABLE loans ADD COLUMN penalty_rate_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN waterfall TEXT NOT NULL DEFAULT 'PENALTY,INTEREST,PRINCIPAL';
-- Interest and penalty accrued so far, and the partner's running part of each.
ALTER TABLE loans ADD COLUMN interest_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN partner_interest_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN penalty_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN partner_penalty_accrued BIGINT NOT NULL DEFAULT 0;
-- Penalty interest has been accrued up to this date.
ALTER TABLE loans ADD COLUMN penalty_through TEXT NOT NULL DEFAULT '';
-- 1 once the instalment's interest has been accrued in the ledger.
ALTER TABLE instalments ADD COLUMN accrued BIGINT NOT NULL DEFAULT 0;
