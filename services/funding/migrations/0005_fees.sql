-- Fees (credit enhancement included) charged with each instalment, and how
-- they are split between the funders.
ALTER TABLE agreements ADD COLUMN fee_partner_share_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN fee_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN fee_partner_bps BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN fee_paid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN partner_fee_paid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN fee_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE loans ADD COLUMN partner_fee_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN fee BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN fee_paid BIGINT NOT NULL DEFAULT 0;
