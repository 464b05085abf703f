-- liege schema, version 8: a journal per key.
--
-- Entries are numbered 1, 2, 3, … per key without gaps. A row is inserted only by a statement
-- that checked the writer's fence and the head revision it expected (an append on its own,
-- or the statement of a fenced checkpoint write of the same key, for a write that committed),
-- and removed only with the key's checkpoint. Two appends at the same head collide on the
-- primary key: at most one commits.
CREATE TABLE liege_journal (
    kind  text   NOT NULL,
    id    text   NOT NULL,
    rev   bigint NOT NULL,
    entry bytea  NOT NULL,
    PRIMARY KEY (kind, id, rev)
);
