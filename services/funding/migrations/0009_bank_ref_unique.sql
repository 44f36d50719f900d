-- One bank transaction is booked once per loan: a second repayment with the
-- same bank reference (under another request id) gets the booked result back
-- when its content matches and ALREADY_EXISTS when it does not. A database
-- that already holds such duplicates must have them resolved before this runs.
CREATE UNIQUE INDEX repayments_loan_bank_ref ON repayments (loan_id, bank_ref);
