-- The SHA-256 of each processed event's payload, so that a duplicate with other
-- content (a producer reusing an event ID) is noticed. NULL for rows claimed without one.
ALTER TABLE processed ADD COLUMN payload_hash BLOB;
