-- Ordering: the high-water mark of each entity per consumer, the highest sequence
-- number applied, moved in the transaction of the claim and the handler's writes;
-- gap_since is when a gap after it was first seen (strict gap policy, UTC text),
-- cleared when the mark moves.
CREATE TABLE entity_marks (
    consumer   TEXT    NOT NULL,
    entity_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    gap_since  TEXT,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (consumer, entity_id)
);
