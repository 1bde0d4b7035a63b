-- Only sent parts can match a status report (the query asks for `sent_at IS NOT NULL`), yet the
-- full index held an entry for every part from the moment it was accepted: one more index
-- insert per part at intake, and at `sent` a delete from the NULL entries and an insert among
-- the SIM's, on two pages the commit then writes. The partial index holds the sent parts only.
DROP INDEX parts_report_match;
CREATE INDEX parts_report_match ON parts (sim, message_ref, sent_at) WHERE sent_at IS NOT NULL;
