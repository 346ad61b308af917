ALTER TABLE dead_letters DROP COLUMN event_version;
ALTER TABLE dead_letters DROP COLUMN event_type;
ALTER TABLE dead_letters DROP COLUMN host;
