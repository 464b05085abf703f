-- liege schema, version 4: incremental directory reads.
--
-- Every change of a directory row (owner or epoch) stamps the row with the next value of a
-- one-row counter, so a node that has read the directory at version V reads only the rows
-- stamped after V. The counter is a row, not a sequence: incrementing it takes its row lock
-- until commit, so transactions that change the directory commit in version order, and a
-- reader whose snapshot shows version V also shows every version below it. (With a sequence,
-- a transaction that drew 5 could commit after one that drew 6, and a reader that had seen 6
-- would never read 5.) Claims and releases lock their directory rows before they update them
-- and so before the counter, and fenced writes never touch the counter: no lock cycle.

CREATE TABLE liege_directory_clock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL
);
INSERT INTO liege_directory_clock (singleton, version) VALUES (true, 0);

ALTER TABLE liege_partitions ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE INDEX liege_partitions_by_version ON liege_partitions (version);

CREATE FUNCTION liege_directory_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE liege_directory_clock SET version = version + 1 RETURNING version INTO NEW.version;
    RETURN NEW;
END $$;

CREATE TRIGGER liege_directory_stamp BEFORE UPDATE ON liege_partitions
FOR EACH ROW
WHEN (OLD.owner_name IS DISTINCT FROM NEW.owner_name
      OR OLD.owner_incarnation IS DISTINCT FROM NEW.owner_incarnation
      OR OLD.epoch IS DISTINCT FROM NEW.epoch)
EXECUTE FUNCTION liege_directory_stamp();
