-- What each modem driver last reported (identity, signal, state, counters), so that
-- `mail2sms modems` can show it from another process. Written at most once a second per modem.
CREATE TABLE modems (
    name        TEXT PRIMARY KEY,
    status      TEXT NOT NULL,          -- JSON of modem::driver::ModemStatus
    updated_at  INTEGER NOT NULL
);
