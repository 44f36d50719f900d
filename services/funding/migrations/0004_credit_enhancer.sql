-- The credit-enhancement firm (guarantor or insurer) of the partnership, if any (rule C12).
ALTER TABLE agreements ADD COLUMN credit_enhancer_id TEXT NOT NULL DEFAULT '';
