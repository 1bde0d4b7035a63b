-- Delivery reports (SMS-STATUS-REPORT, TS 23.040 §9.2.2.3).
-- A report names its message only by the SIM it was sent from, TP-MR (8 bits, wrapping after
-- 256 sends), the recipient and the service centre's time stamp; each sent part keeps what
-- matching needs.
ALTER TABLE parts ADD COLUMN sim TEXT;              -- IMSI of the SIM that sent it
ALTER TABLE parts ADD COLUMN sent_at INTEGER;       -- when the modem answered +CMGS
ALTER TABLE parts ADD COLUMN report_status INTEGER; -- TP-ST of the last report that counted
ALTER TABLE parts ADD COLUMN report_at INTEGER;     -- when that report arrived
CREATE INDEX parts_report_match ON parts (sim, message_ref, sent_at);

-- Every report received, matched or not, so that a stray one can be looked into.
CREATE TABLE reports (
    id            INTEGER PRIMARY KEY,
    received_at   INTEGER NOT NULL,
    modem         TEXT NOT NULL,
    sim           TEXT,
    message_ref   INTEGER NOT NULL,
    recipient     TEXT NOT NULL,
    scts          TEXT NOT NULL,            -- as received, with its UTC offset
    discharge     TEXT NOT NULL,
    status        INTEGER NOT NULL,         -- TP-ST
    part_id       INTEGER REFERENCES parts (id),
    outcome       TEXT NOT NULL             -- what it did, in words
);
CREATE INDEX reports_part ON reports (part_id);
