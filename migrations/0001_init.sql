-- placeholder: the real schema lands with the persistence work
CREATE TABLE IF NOT EXISTS ts_placeholder (id INTEGER PRIMARY KEY);
