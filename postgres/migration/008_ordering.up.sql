-- Ordering: the high-water mark of each entity per consumer, the highest sequence
-- number applied, moved in the transaction of the claim and the handler's writes;
-- gap_since is when a gap after it was first seen (strict gap policy), cleared when
-- the mark moves. blocked_by and blocked_seq name the dead-lettered event the entity
-- is quarantined behind, until its review.
CREATE TABLE {{schema}}.entity_marks (
    consumer    text        NOT NULL,
    entity_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    gap_since   timestamptz,
    blocked_by  text,
    blocked_seq bigint,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, entity_id)
);
CREATE INDEX entity_marks_blocked_by_idx ON {{schema}}.entity_marks (consumer, blocked_by) WHERE blocked_by IS NOT NULL;

-- The events parked behind a quarantined entity's dead letter, one row per event,
-- released in sequence order by the dead letter's review.
CREATE TABLE {{schema}}.parked_events (
    consumer  text        NOT NULL,
    event_id  text        NOT NULL,
    entity_id text        NOT NULL,
    seq       bigint      NOT NULL,
    topic     text        NOT NULL,
    payload   bytea       NOT NULL,
    metadata  jsonb       NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX parked_events_entity_idx ON {{schema}}.parked_events (consumer, entity_id, seq);

-- The last sequence number outbox.PublishTx assigned to each entity (Config.
-- AssignSequence): bumped in the publishing transaction, so a rollback takes its
-- number back and the numbers have no gaps.
CREATE TABLE {{schema}}.entity_sequences (
    entity_id  text   NOT NULL PRIMARY KEY,
    seq        bigint NOT NULL
);
