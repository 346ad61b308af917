DROP INDEX dead_letters_unpublished_idx;
ALTER TABLE dead_letters DROP COLUMN published_at;
