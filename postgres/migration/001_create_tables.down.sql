DROP TABLE {{schema}}.dead_letters;
DROP TABLE {{schema}}.attempts;
DROP TABLE {{schema}}.processed;
