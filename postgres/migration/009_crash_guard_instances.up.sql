-- The crash guard counts starts per consumer process (instance), so that the
-- deliveries of a process that still runs are never taken for crashes. Rows from
-- before this migration belong to instance 0, which no process holds: they count.
ALTER TABLE {{schema}}.started ADD COLUMN instance integer NOT NULL DEFAULT 0;
ALTER TABLE {{schema}}.started DROP CONSTRAINT started_pkey;
ALTER TABLE {{schema}}.started ADD PRIMARY KEY (consumer, event_id, instance);
