-- Parts handed to an external SMPP provider (a `[[channel]]` of kind `smpp` with a
-- `[channel.smpp]` link): written with the change that marks the part `sent`, when the
-- provider's submit_sm_resp arrived. Its delivery receipts name the part by `remote_id`, the
-- message_id of that response; some SMSCs give it in hex in the response and in decimal in the
-- receipt (or the other way), so receipts are matched on `remote_key`, the id lower-cased
-- without leading zeros, and on the key of its other base (`peer::receipt::match_keys`).
CREATE TABLE provider_parts (
    part_id       INTEGER PRIMARY KEY REFERENCES parts (id),
    provider      TEXT NOT NULL,            -- the channel's name
    remote_id     TEXT NOT NULL,            -- as the provider gave it
    remote_key    TEXT NOT NULL,
    submitted_at  INTEGER NOT NULL
);
CREATE INDEX provider_parts_key ON provider_parts (provider, remote_key);
