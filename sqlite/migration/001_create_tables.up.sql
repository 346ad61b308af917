-- idem schema for SQLite, version 1. Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.SSSZ',
-- from the database clock: they sort and compare as text.
CREATE TABLE processed (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX processed_processed_at_idx ON processed (processed_at);

CREATE TABLE attempts (
    consumer         TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    first_failure_at TEXT    NOT NULL,
    last_failure_at  TEXT    NOT NULL,
    last_error       TEXT    NOT NULL,
    errors           TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(errors)),
    PRIMARY KEY (consumer, event_id)
) STRICT;
CREATE INDEX attempts_last_failure_at_idx ON attempts (last_failure_at);

CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer         TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    handler          TEXT    NOT NULL,
    message_uuid     TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    metadata         TEXT    NOT NULL CHECK (json_valid(metadata)),
    reason           TEXT    NOT NULL,
    error            TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    correlation_id   TEXT    NOT NULL,
    trace_id         TEXT    NOT NULL,
    span_id          TEXT    NOT NULL,
    history          TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(history)),
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'replayed', 'discarded', 'resolved')),
    count            INTEGER NOT NULL DEFAULT 1,
    replay_count     INTEGER NOT NULL DEFAULT 0,
    first_failed_at  TEXT    NOT NULL,
    last_failed_at   TEXT    NOT NULL,
    dead_lettered_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (consumer, event_id)
) STRICT;
CREATE INDEX dead_letters_status_idx ON dead_letters (status, dead_lettered_at);
CREATE INDEX dead_letters_fingerprint_idx ON dead_letters (fingerprint);
