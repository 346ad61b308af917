DROP TABLE {{schema}}.dead_letter_audit;
