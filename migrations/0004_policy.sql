-- Who sent what, for quotas and the SMS-pumping guard.
-- `sender` is the authenticated user when there is one, else the envelope sender, lower-cased;
-- `sender_domain` is the envelope sender's domain. `country` is the destination's ISO code.
ALTER TABLE requests ADD COLUMN sender TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN sender_domain TEXT NOT NULL DEFAULT '';
ALTER TABLE recipients ADD COLUMN country TEXT;
CREATE INDEX requests_sender ON requests (sender, received_at);
CREATE INDEX requests_sender_domain ON requests (sender_domain, received_at);
