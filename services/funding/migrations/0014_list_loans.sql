-- ListLoans pages newest first (keyset on loan_id, time-ordered):
-- a partner's loans by (partner_id, loan_id), which also serves every lookup
-- by partner that loans_partner served; the bank's view by reservation date.
CREATE INDEX loans_partner_newest ON loans (partner_id, loan_id);
DROP INDEX IF EXISTS loans_partner;
CREATE INDEX loans_reserved_on ON loans (reserved_on, loan_id);
