ALTER TABLE {{schema}}.dead_letters DROP COLUMN host, DROP COLUMN event_type, DROP COLUMN event_version;
