-- Back to one count per event: the counts of all instances are added up.
CREATE TABLE {{schema}}.started_merged AS
    SELECT consumer, event_id, sum(started)::integer AS started, max(last_started_at) AS last_started_at
    FROM {{schema}}.started GROUP BY consumer, event_id;
DELETE FROM {{schema}}.started;
ALTER TABLE {{schema}}.started DROP CONSTRAINT started_pkey;
ALTER TABLE {{schema}}.started DROP COLUMN instance;
ALTER TABLE {{schema}}.started ADD PRIMARY KEY (consumer, event_id);
INSERT INTO {{schema}}.started (consumer, event_id, started, last_started_at)
    SELECT consumer, event_id, started, last_started_at FROM {{schema}}.started_merged;
DROP TABLE {{schema}}.started_merged;
