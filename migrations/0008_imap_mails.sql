-- IMAP pickup's Message-ID check as a constraint: one row per mail (its Message-ID, or a digest
-- of its bytes) and mailbox, whatever UIDs it had. `imap_claims` keeps one row per name
-- (mailbox, UIDVALIDITY, UID) a mail was seen under; a mail can have several (a UIDVALIDITY
-- change, a restored copy, a second delivery). The first handling of a mail writes its row
-- here in the same transaction as the request it became; the primary key makes a second
-- request for the same mail impossible, not merely unlikely, whichever writer tries.
CREATE TABLE imap_mails (
    mailbox       TEXT NOT NULL,            -- the [[mailbox]] name in the configuration
    message_key   TEXT NOT NULL,            -- `<message-id>` or `sha256:<hex>`
    outcome       TEXT NOT NULL,            -- 'queued' | 'failed'
    request_id    TEXT REFERENCES requests (id),
    handled_at    INTEGER NOT NULL,
    PRIMARY KEY (mailbox, message_key)
);

-- Mail handled before this table existed: the first claim of each mail decides.
INSERT OR IGNORE INTO imap_mails (mailbox, message_key, outcome, request_id, handled_at)
    SELECT mailbox, message_key, outcome, request_id, claimed_at
    FROM imap_claims ORDER BY claimed_at, rowid;
