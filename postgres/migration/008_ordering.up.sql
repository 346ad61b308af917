-- Ordering: the high-water mark of each entity per consumer, the highest sequence
-- number applied, moved in the transaction of the claim and the handler's writes;
-- gap_since is when a gap after it was first seen (strict gap policy), cleared when
-- the mark moves.
CREATE TABLE {{schema}}.entity_marks (
    consumer   text        NOT NULL,
    entity_id  text        NOT NULL,
    seq        bigint      NOT NULL,
    gap_since  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, entity_id)
);

-- The last sequence number outbox.PublishTx assigned to each entity (Config.
-- AssignSequence): bumped in the publishing transaction, so a rollback takes its
-- number back and the numbers have no gaps.
CREATE TABLE {{schema}}.entity_sequences (
    entity_id  text   NOT NULL PRIMARY KEY,
    seq        bigint NOT NULL
);
