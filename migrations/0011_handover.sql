-- The hand-over of forwarded messages between sites (peer::handover).
--
-- At the receiving site: a message a peer forwarded is held (not sent) until the origin site
-- says it is this site's. No row, or `held`, is held; `released` may be sent; `dropped` was
-- taken back by the origin and failed here. Messages forwarded before hand-overs existed were
-- sent without one: they are released.
CREATE TABLE handovers_in (
    recipient_id  INTEGER PRIMARY KEY REFERENCES recipients (id),
    peer          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('held', 'released', 'dropped')),
    updated_at    INTEGER NOT NULL
);
INSERT INTO handovers_in (recipient_id, peer, state, updated_at)
    SELECT r.id, COALESCE(q.client, ''), 'released', 0
    FROM recipients r JOIN requests q ON q.id = r.request_id
    WHERE q.source = 'peer';

-- At the origin site: messages forwarded to a peer that did not acknowledge them before its
-- link was lost (or that it asked about and was told "not yours"), and that this site took
-- back. They are never handed to that peer again, and its copy is never confirmed.
CREATE TABLE handovers_out (
    recipient_id  INTEGER NOT NULL REFERENCES recipients (id),
    peer          TEXT NOT NULL,
    taken_back_at INTEGER NOT NULL,
    PRIMARY KEY (recipient_id, peer)
);
