DROP TABLE {{schema}}.entity_sequences;
DROP TABLE {{schema}}.entity_marks;
