-- Penalty interest accrues cumulatively within each instalment's overdue
-- segment (what is unpaid of it is constant within one): penalty accrued
-- through a day is round(unpaid × rate × days / basis), the days counted
-- from the segment's first day, and an accrual posts that less what was
-- posted in the segment. penalty_segment_from is the last change of the
-- unpaid amount ('' = none: the segment starts on the due date; it never
-- starts before it); penalty_segment_accrued is the penalty posted in the
-- segment so far.
ALTER TABLE instalments ADD COLUMN penalty_segment_from TEXT NOT NULL DEFAULT '';
ALTER TABLE instalments ADD COLUMN penalty_segment_accrued BIGINT NOT NULL DEFAULT 0;
-- Loans booked before keep the penalty they have posted; each instalment's
-- segment starts anew at the date the loan's penalty is accrued through.
UPDATE instalments SET penalty_segment_from = COALESCE(
    (SELECT loans.penalty_through FROM loans WHERE loans.loan_id = instalments.loan_id), ''
);
