DROP TABLE {{schema}}.started;
