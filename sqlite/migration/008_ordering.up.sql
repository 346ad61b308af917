-- Ordering: the high-water mark of each entity per consumer, the highest sequence
-- number applied, moved in the transaction of the claim and the handler's writes;
-- gap_since is when a gap after it was first seen (strict gap policy, UTC text),
-- cleared when the mark moves. blocked_by and blocked_seq name the dead-lettered event
-- the entity is quarantined behind, until its review.
CREATE TABLE entity_marks (
    consumer    TEXT    NOT NULL,
    entity_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    gap_since   TEXT,
    blocked_by  TEXT,
    blocked_seq INTEGER,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (consumer, entity_id)
);
CREATE INDEX entity_marks_blocked_by_idx ON entity_marks (consumer, blocked_by) WHERE blocked_by IS NOT NULL;

-- The events parked behind a quarantined entity's dead letter, one row per event,
-- released in sequence order by the dead letter's review.
CREATE TABLE parked_events (
    consumer  TEXT    NOT NULL,
    event_id  TEXT    NOT NULL,
    entity_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    metadata  TEXT    NOT NULL,
    parked_at TEXT    NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX parked_events_entity_idx ON parked_events (consumer, entity_id, seq);
