DROP TABLE entity_marks;
