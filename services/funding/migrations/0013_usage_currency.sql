-- The currency of a partner's quota usage: `used` is a sum of loans in this
-- one currency. The reservation that takes `used` above zero sets it; while
-- `used` is above zero a loan in another currency is refused
-- (CURRENCY_MISMATCH), and so is an agreement version in another currency;
-- once `used` is back at zero it means nothing (the next reservation sets
-- it again).
ALTER TABLE partner_usage ADD COLUMN currency TEXT NOT NULL DEFAULT '';
ALTER TABLE partner_daily_usage ADD COLUMN currency TEXT NOT NULL DEFAULT '';
-- Usage recorded before: the currency of the partner's live loans (of that
-- day's, for a day's usage), else of the partner's latest agreement version.
UPDATE partner_usage SET currency = COALESCE(
    (SELECT l.currency FROM loans l
     WHERE l.partner_id = partner_usage.partner_id AND l.status IN ('RESERVED', 'DISBURSED')
     ORDER BY l.created_at DESC, l.loan_id DESC LIMIT 1),
    (SELECT a.currency FROM agreements a
     WHERE a.partner_id = partner_usage.partner_id
     ORDER BY a.version DESC LIMIT 1),
    '');
UPDATE partner_daily_usage SET currency = COALESCE(
    (SELECT l.currency FROM loans l
     WHERE l.partner_id = partner_daily_usage.partner_id AND l.reserved_on = partner_daily_usage.day
       AND l.status <> 'VOID'
     ORDER BY l.created_at DESC, l.loan_id DESC LIMIT 1),
    (SELECT a.currency FROM agreements a
     WHERE a.partner_id = partner_daily_usage.partner_id
     ORDER BY a.version DESC LIMIT 1),
    '');
