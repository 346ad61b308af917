-- Delayed retries: a message kept for its next attempt, with the time it is due
-- (database clock), one per event and consumer; re-published and deleted when due.
CREATE TABLE {{schema}}.delayed (
    consumer  text        NOT NULL,
    event_id  text        NOT NULL,
    topic     text        NOT NULL,
    payload   bytea       NOT NULL,
    metadata  jsonb       NOT NULL,
    due_at    timestamptz NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX delayed_due_at_idx ON {{schema}}.delayed (due_at);
