-- Where and what: the host that dead-lettered the event, and the event's type and version.
ALTER TABLE dead_letters ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN event_type TEXT NOT NULL DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN event_version TEXT NOT NULL DEFAULT '';
