-- The durable queue. Times are Unix milliseconds (UTC).
-- One row per accepted mail; the text is decided once, at intake, so every recipient gets the
-- same SMS and a status reply can say exactly what was sent.
CREATE TABLE requests (
    id            TEXT PRIMARY KEY,         -- stable request id (UUIDv7, hex), invariant 4
    received_at   INTEGER NOT NULL,
    source        TEXT NOT NULL,            -- 'smtp' | 'imap'
    client        TEXT,                     -- SMTP client address
    helo          TEXT,
    auth_user     TEXT,
    mail_from     TEXT NOT NULL,            -- envelope sender; '' is the null sender <>
    message_id    TEXT,
    subject       TEXT,
    dsn_envid     TEXT,                     -- RFC 3461 ENVID
    dsn_ret       TEXT,                     -- RFC 3461 RET: 'full' | 'hdrs'
    text          TEXT NOT NULL,            -- the SMS text all recipients get
    encoding      TEXT NOT NULL,            -- 'gsm7' | 'ucs2'
    part_count    INTEGER NOT NULL,
    truncated     INTEGER NOT NULL,
    size          INTEGER NOT NULL,         -- octets of the mail as received
    headers       BLOB NOT NULL             -- the mail's header block, for status replies
);
CREATE INDEX requests_received ON requests (received_at);

CREATE TABLE recipients (
    id            INTEGER PRIMARY KEY,
    request_id    TEXT NOT NULL REFERENCES requests (id),
    idx           INTEGER NOT NULL,         -- order in the envelope
    address       TEXT NOT NULL,            -- as given in RCPT TO (or the header)
    number        TEXT NOT NULL,            -- E.164
    name          TEXT,
    dsn_notify    TEXT,                     -- RFC 3461 NOTIFY, e.g. 'SUCCESS,FAILURE'
    dsn_orcpt     TEXT,                     -- RFC 3461 ORCPT
    state         TEXT NOT NULL,            -- summary of its parts' states
    updated_at    INTEGER NOT NULL,
    -- sender NUL message-id NUL number: the same mail to the same number is queued once.
    dedup_key     TEXT UNIQUE,
    UNIQUE (request_id, idx)
);
CREATE INDEX recipients_state ON recipients (state);

CREATE TABLE parts (
    id            INTEGER PRIMARY KEY,
    recipient_id  INTEGER NOT NULL REFERENCES recipients (id),
    seq           INTEGER NOT NULL,         -- 1-based position in the concatenated SMS
    text          TEXT NOT NULL,
    state         TEXT NOT NULL,            -- accepted|routed|sending|sent|delivered|failed|uncertain
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,                -- written before an attempt, so a crash cannot hide it
    channel       TEXT,                     -- modem (by SIM) or peer that took it
    message_ref   INTEGER,                  -- TP-MR the modem answered
    updated_at    INTEGER NOT NULL,
    UNIQUE (recipient_id, seq)
);
CREATE INDEX parts_state ON parts (state, next_attempt_at);

-- Every state change, with its reason (invariant 6).
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    request_id    TEXT NOT NULL REFERENCES requests (id),
    recipient_id  INTEGER REFERENCES recipients (id),
    part_id       INTEGER REFERENCES parts (id),
    state         TEXT NOT NULL,
    reason        TEXT NOT NULL
);
CREATE INDEX events_request ON events (request_id, id);
