DROP TABLE dead_letters;
DROP TABLE attempts;
DROP TABLE processed;
