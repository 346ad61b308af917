-- The crash guard counts starts per Store (instance), so that the deliveries of a
-- process that still runs are never taken for crashes of each other. Rows from
-- before this migration belong to instance 0, which no Store uses: they count.
CREATE TABLE started_by_instance (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    instance        INTEGER NOT NULL DEFAULT 0,
    started         INTEGER NOT NULL,
    last_started_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id, instance)
) STRICT, WITHOUT ROWID;
INSERT INTO started_by_instance (consumer, event_id, instance, started, last_started_at)
    SELECT consumer, event_id, 0, started, last_started_at FROM started;
DROP TABLE started;
ALTER TABLE started_by_instance RENAME TO started;
CREATE INDEX started_last_started_at_idx ON started (last_started_at);
