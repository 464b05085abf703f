-- liege schema v6: a journal per key.
--
-- Entries are numbered 1, 2, 3, … per key without gaps; a row is inserted only in a
-- transaction that checked the writer's fence and the head revision it expected (alone, or
-- with a checkpoint write of the same key), and removed only with the key's checkpoint.
CREATE TABLE journal (
    kind  TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    rev   INTEGER NOT NULL,
    entry BLOB    NOT NULL,
    PRIMARY KEY (kind, id, rev)
) WITHOUT ROWID;
