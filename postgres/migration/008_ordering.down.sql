DROP TABLE {{schema}}.entity_marks;
