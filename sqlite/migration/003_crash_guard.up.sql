-- The opt-in crash guard: attempts started, counted before the handler runs.
CREATE TABLE started (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    started         INTEGER NOT NULL,
    last_started_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX started_last_started_at_idx ON started (last_started_at);
