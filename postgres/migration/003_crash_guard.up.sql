-- The opt-in crash guard: attempts started, counted before the handler runs.
CREATE TABLE {{schema}}.started (
    consumer        text        NOT NULL,
    event_id        text        NOT NULL,
    started         integer     NOT NULL,
    last_started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX started_last_started_at_idx ON {{schema}}.started (last_started_at);
