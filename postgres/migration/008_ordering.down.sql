DROP TABLE {{schema}}.entity_sequences;
DROP TABLE {{schema}}.parked_events;
DROP TABLE {{schema}}.entity_marks;
