ALTER TABLE {{schema}}.processed DROP COLUMN payload_hash;
