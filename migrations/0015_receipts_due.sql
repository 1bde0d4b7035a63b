-- The delivery receipts owed to SMPP clients and peers were found by scanning every recipient
-- twice a second (those from `smpp` or `peer` requests, final, with no `smpp_receipts` row): a
-- cost that grew with the history for as long as the site ran. A recipient now carries
-- `receipt_due` while a receipt may be owed for it (set when it is queued from SMPP or a peer,
-- cleared by the trigger below when its receipt is recorded), and the small partial index holds
-- just those: the receipts in flight and the ones owed.
ALTER TABLE recipients ADD COLUMN receipt_due INTEGER;
UPDATE recipients SET receipt_due = 1
WHERE request_id IN (SELECT id FROM requests WHERE source IN ('smpp', 'peer'))
  AND id NOT IN (SELECT recipient_id FROM smpp_receipts);
CREATE INDEX recipients_receipt_due ON recipients (id) WHERE receipt_due = 1;
CREATE TRIGGER smpp_receipts_settle AFTER INSERT ON smpp_receipts
BEGIN
    UPDATE recipients SET receipt_due = NULL WHERE id = NEW.recipient_id;
END;
