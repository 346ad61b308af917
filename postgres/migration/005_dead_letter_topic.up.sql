-- When the dead letter was published to the dead-letter topic (NULL: not yet).
ALTER TABLE {{schema}}.dead_letters ADD COLUMN published_at timestamptz;
CREATE INDEX dead_letters_unpublished_idx ON {{schema}}.dead_letters (id) WHERE published_at IS NULL;
