-- The audit of operators' review: one row per replay, discard or resolve, written in the
-- same transaction as the change of the dead letters it lists. Who: the OS user and host
-- the command ran as and on, and the database role; when: the database clock.
CREATE TABLE {{schema}}.dead_letter_audit (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    action          text        NOT NULL CHECK (action IN ('replay', 'discard', 'resolve')),
    os_user         text        NOT NULL,
    host            text        NOT NULL,
    db_role         text        NOT NULL DEFAULT current_user,
    selector        text        NOT NULL,
    reason          text        NOT NULL,
    dead_letter_ids bigint[]    NOT NULL
);
CREATE INDEX dead_letter_audit_at_idx ON {{schema}}.dead_letter_audit (at);
CREATE INDEX dead_letter_audit_ids_idx ON {{schema}}.dead_letter_audit USING gin (dead_letter_ids);
