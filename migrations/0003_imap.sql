-- IMAP pickup. A mail taken from a mailbox is identified by (mailbox, UIDVALIDITY, UID)
-- (RFC 3501 §2.3.1.1: a UID names one message for as long as the UIDVALIDITY is the same).
-- The row is written in the same transaction as the request it produced, so a gateway that
-- stops between that commit and the MOVE finds the mail again, sees this row, and only moves
-- it (invariant 1: nothing is moved before it is on disk; nothing is queued twice).
CREATE TABLE imap_claims (
    mailbox       TEXT NOT NULL,            -- the [[mailbox]] name in the configuration
    uidvalidity   INTEGER NOT NULL,
    uid           INTEGER NOT NULL,
    -- `<message-id>` when the mail has one, else `sha256:<hex>` of its bytes: finds the same
    -- mail again under new UIDs after a UIDVALIDITY change, or delivered twice to the mailbox.
    message_key   TEXT NOT NULL,
    outcome       TEXT NOT NULL,            -- 'queued' | 'failed'
    request_id    TEXT REFERENCES requests (id),  -- the request it became (NULL when failed)
    reason        TEXT,                     -- why it failed, or which recipients were refused
    claimed_at    INTEGER NOT NULL,
    PRIMARY KEY (mailbox, uidvalidity, uid)
);
CREATE INDEX imap_claims_key ON imap_claims (mailbox, message_key);

-- Mails to send back to a sender (the reply that says why a mail gave no SMS). Written in the
-- same transaction as the decision that causes them, sent afterwards with retries, so a crash
-- cannot lose one.
CREATE TABLE notices (
    id            INTEGER PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    recipient     TEXT NOT NULL,            -- the sender of the original mail
    original_message_id TEXT,               -- for In-Reply-To / References
    original_subject TEXT,
    reason        TEXT NOT NULL,            -- the sentence the reply carries
    state         TEXT NOT NULL,            -- 'pending' | 'sent' | 'failed'
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,       -- written before the attempt
    last_error    TEXT,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX notices_pending ON notices (state, next_attempt_at);
