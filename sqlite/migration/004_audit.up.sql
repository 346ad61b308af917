-- The audit of operators' review: one row per replay, discard or resolve, written in the
-- same transaction as the change of the dead letters it lists. Who: the OS user and host
-- the command ran as and on; SQLite has no database roles, so db_role is 'sqlite'.
-- When: the database clock. dead_letter_ids is a JSON array of the dead letters' ids.
CREATE TABLE dead_letter_audit (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    action          TEXT    NOT NULL CHECK (action IN ('replay', 'discard', 'resolve')),
    os_user         TEXT    NOT NULL,
    host            TEXT    NOT NULL,
    db_role         TEXT    NOT NULL DEFAULT 'sqlite',
    selector        TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    dead_letter_ids TEXT    NOT NULL CHECK (json_valid(dead_letter_ids))
) STRICT;
CREATE INDEX dead_letter_audit_at_idx ON dead_letter_audit (at);
