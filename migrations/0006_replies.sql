-- Status replies (RFC 3464 delivery status notifications) owed to senders.
-- A row is written in the same transaction as the recipient state change that causes it, so a
-- crash can neither lose a reply nor send one for a change that was rolled back. The sending
-- task decides later whether the sender asked for it (NOTIFY, receipt headers, per-domain
-- config) and sends it with retries; rows it will not send stay as 'skipped' with the reason.
CREATE TABLE status_replies (
    id            INTEGER PRIMARY KEY,
    created_at    INTEGER NOT NULL,
    request_id    TEXT NOT NULL REFERENCES requests (id),
    recipient_id  INTEGER NOT NULL REFERENCES recipients (id),
    sender        TEXT NOT NULL,            -- envelope sender of the request (never '')
    action        TEXT NOT NULL,            -- RFC 3464 Action: relayed|delivered|failed|delayed
    diagnostic    TEXT NOT NULL,            -- the sentence the reply carries (TP-ST or +CMS)
    state         TEXT NOT NULL,            -- 'pending' | 'sent' | 'skipped' | 'failed'
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,       -- written before the attempt
    last_error    TEXT,                     -- or why it was skipped
    sent_at       INTEGER,
    updated_at    INTEGER NOT NULL,
    -- One reply per message event: a 3-part SMS is reported delivered once.
    UNIQUE (recipient_id, action)
);
CREATE INDEX status_replies_pending ON status_replies (state, next_attempt_at);
CREATE INDEX status_replies_rate ON status_replies (sender, sent_at);
