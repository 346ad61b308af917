-- Where and what: the host that dead-lettered the event, and the event's type and version.
ALTER TABLE {{schema}}.dead_letters
    ADD COLUMN host          text NOT NULL DEFAULT '',
    ADD COLUMN event_type    text NOT NULL DEFAULT '',
    ADD COLUMN event_version text NOT NULL DEFAULT '';
