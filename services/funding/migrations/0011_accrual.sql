-- Daily accrual and the interest split between the funders.
--
-- How an agreement shares the borrower's interest: PRO_RATA (by principal
-- share) or OWN_RATE (each funder its own rate on its own principal, the
-- residual to residual_party, negative only when allowed).
ALTER TABLE agreements ADD COLUMN interest_split TEXT NOT NULL DEFAULT 'PRO_RATA';
ALTER TABLE agreements ADD COLUMN residual_party TEXT NOT NULL DEFAULT 'BANK';
ALTER TABLE agreements ADD COLUMN allow_negative_residual BIGINT NOT NULL DEFAULT 0;
-- Versions stored before keep the split their loans have always had
-- (RATE_WEIGHTED: by principal × rate weights): a loan reserved under one
-- after the upgrade is split as it would have been before, until the bank
-- stores a new version (which states PRO_RATA or OWN_RATE).
UPDATE agreements SET interest_split = 'RATE_WEIGHTED';
-- Frozen on each loan (rule P2). Loans booked before this migration keep the
-- rate-weighted split they were booked with (RATE_WEIGHTED).
ALTER TABLE loans ADD COLUMN interest_split TEXT NOT NULL DEFAULT 'RATE_WEIGHTED';
ALTER TABLE loans ADD COLUMN residual_party TEXT NOT NULL DEFAULT 'BANK';
ALTER TABLE loans ADD COLUMN allow_negative_residual BIGINT NOT NULL DEFAULT 0;
-- Interest and fees are accrued (and posted) through this date; '' before
-- the first accrual (the disbursement date then).
ALTER TABLE loans ADD COLUMN accrued_through TEXT NOT NULL DEFAULT '';
-- Paid beyond the payoff, owed back to the borrower.
ALTER TABLE loans ADD COLUMN overpayment BIGINT NOT NULL DEFAULT 0;
-- Loans booked before: accrued through their last accrual (penalty_through
-- moved with every repayment).
UPDATE loans SET accrued_through = penalty_through WHERE disbursed_on <> '';

-- Each instalment's balance segment: its interest accrues from accrual_from
-- ('' = the period's first day) on balance, after interest_before (and
-- fee_before, and each funder's own-rate interest) accrued in the period
-- before a prepayment; interest_accrued and fee_accrued are what was posted.
ALTER TABLE instalments ADD COLUMN accrual_from TEXT NOT NULL DEFAULT '';
ALTER TABLE instalments ADD COLUMN balance BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN interest_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN fee_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN bank_own_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN partner_own_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN interest_accrued BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instalments ADD COLUMN fee_accrued BIGINT NOT NULL DEFAULT 0;
-- The balance of an existing instalment: its principal and the later ones'.
UPDATE instalments SET balance = (
    SELECT SUM(later.principal) FROM instalments later
    WHERE later.loan_id = instalments.loan_id AND later.seq >= instalments.seq
);
-- `accrued` = 1 marks an instalment accrued whole under the earlier rules:
-- its interest and fee are posted in full (it stays payable in full).
UPDATE instalments SET interest_accrued = interest, fee_accrued = fee WHERE accrued = 1;
