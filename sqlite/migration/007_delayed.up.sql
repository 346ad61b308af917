-- Delayed retries: a message kept for its next attempt, with the time it is due
-- (UTC text, as every time here), one per event and consumer; re-published and
-- deleted when due.
CREATE TABLE delayed (
    consumer  TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    topic     TEXT NOT NULL,
    payload   BLOB NOT NULL,
    metadata  TEXT NOT NULL,
    due_at    TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX delayed_due_at_idx ON delayed (due_at);
