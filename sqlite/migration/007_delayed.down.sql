DROP TABLE delayed;
