DROP TABLE parked_events;
DROP TABLE entity_marks;
