-- Related parties (rule C2): institutions whose whitelist entry names the
-- same group_id count their co-lent balances together. Empty: a group of
-- its own (every entry made before groups existed).
ALTER TABLE whitelist ADD COLUMN group_id TEXT NOT NULL DEFAULT '';
CREATE INDEX whitelist_group ON whitelist (group_id);
