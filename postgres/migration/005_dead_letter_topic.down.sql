ALTER TABLE {{schema}}.dead_letters DROP COLUMN published_at;
