-- When the dead letter was published to the dead-letter topic (NULL: not yet).
ALTER TABLE dead_letters ADD COLUMN published_at TEXT;
CREATE INDEX dead_letters_unpublished_idx ON dead_letters (id) WHERE published_at IS NULL;
