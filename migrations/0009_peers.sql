-- Messages forwarded to a peer site over SMPP: written with the change that marks their parts
-- `sent` through `peer:<name>`, when the peer's submit_sm_resp arrived (it has stored them).
-- `remote_id` is the peer's message_id from that response, which its delivery receipts name.
CREATE TABLE forwards (
    recipient_id  INTEGER PRIMARY KEY REFERENCES recipients (id),
    peer          TEXT NOT NULL,
    remote_id     TEXT NOT NULL,
    forwarded_at  INTEGER NOT NULL
);
CREATE INDEX forwards_remote ON forwards (peer, remote_id);

-- Delivery receipts this site owes SMPP clients and peers (deliver_sm), one per recipient that
-- came in over SMPP and wanted one, written when the receipt was acknowledged (deliver_sm_resp),
-- so a restart sends the missing ones and never one twice over a healthy bind.
CREATE TABLE smpp_receipts (
    recipient_id  INTEGER PRIMARY KEY REFERENCES recipients (id),
    state         TEXT NOT NULL,            -- the recipient state the receipt reported
    sent_at       INTEGER NOT NULL
);
