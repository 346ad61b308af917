-- idem schema, version 1. {{schema}} is replaced by the quoted schema name.
CREATE TABLE {{schema}}.processed (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_processed_at_idx ON {{schema}}.processed (processed_at);

CREATE TABLE {{schema}}.attempts (
    consumer         text        NOT NULL,
    event_id         text        NOT NULL,
    attempts         integer     NOT NULL,
    first_failure_at timestamptz NOT NULL,
    last_failure_at  timestamptz NOT NULL,
    last_error       text        NOT NULL,
    errors           jsonb       NOT NULL DEFAULT '[]',
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX attempts_last_failure_at_idx ON {{schema}}.attempts (last_failure_at);

CREATE TABLE {{schema}}.dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer         text        NOT NULL,
    event_id         text        NOT NULL,
    topic            text        NOT NULL,
    handler          text        NOT NULL,
    message_uuid     text        NOT NULL,
    payload          bytea       NOT NULL,
    metadata         jsonb       NOT NULL,
    reason           text        NOT NULL,
    error            text        NOT NULL,
    fingerprint      text        NOT NULL,
    attempts         integer     NOT NULL,
    correlation_id   text        NOT NULL,
    trace_id         text        NOT NULL,
    span_id          text        NOT NULL,
    history          jsonb       NOT NULL DEFAULT '[]',
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'replayed', 'discarded', 'resolved')),
    count            integer     NOT NULL DEFAULT 1,
    replay_count     integer     NOT NULL DEFAULT 0,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, event_id)
);
CREATE INDEX dead_letters_status_idx ON {{schema}}.dead_letters (status, dead_lettered_at);
CREATE INDEX dead_letters_fingerprint_idx ON {{schema}}.dead_letters (fingerprint);
