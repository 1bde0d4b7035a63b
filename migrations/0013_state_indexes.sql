-- The full indexes on the state columns changed at every step of every SMS: a part's and its
-- recipient's state move twice per SMS, each move a delete and an insert in each index, on
-- pages of their own that every commit then writes to the WAL (about a tenth of the gateway's
-- CPU while modems drain the queue). What reads them wants only the few rows still queued or
-- in flight, which small partial indexes give, each changed once or twice per SMS:
--   parts in flight: recovery at start, and the workload a peer link advertises (with
--     `parts_ready` for the queued parts);
--   queued recipients: the peer links' forwarding candidates and the hand-over's questions.
-- The other readers go through the request (`requests_received`) or scan history as before.
DROP INDEX parts_state;
DROP INDEX recipients_state;
CREATE INDEX parts_in_flight ON parts (state) WHERE state = 'sending';
CREATE INDEX recipients_queued ON recipients (id) WHERE state IN ('accepted', 'routed');
