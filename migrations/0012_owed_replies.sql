-- The status replies a recipient can be owed, decided when its mail is accepted: the actions
-- between commas (',delivered,failed,'), empty for none. The queue writes an owed reply only
-- for these, so senders who ask for nothing cost no reply work per SMS. Rows from before
-- keep every action, decided at sending time as they were.
ALTER TABLE recipients ADD COLUMN replies TEXT NOT NULL DEFAULT ',relayed,delivered,failed,delayed,';
