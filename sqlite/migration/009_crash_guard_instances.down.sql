-- Back to one count per event: the counts of all instances are added up.
CREATE TABLE started_merged (
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    started         INTEGER NOT NULL,
    last_started_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;
INSERT INTO started_merged (consumer, event_id, started, last_started_at)
    SELECT consumer, event_id, sum(started), max(last_started_at) FROM started GROUP BY consumer, event_id;
DROP TABLE started;
ALTER TABLE started_merged RENAME TO started;
CREATE INDEX started_last_started_at_idx ON started (last_started_at);
