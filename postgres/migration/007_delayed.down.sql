DROP TABLE {{schema}}.delayed;
