ALTER TABLE processed DROP COLUMN payload_hash;
