-- liege schema v4: signal ids remembered for the dedupe retention.
--
-- A row is written only in the transaction of a fenced checkpoint write of the same key, so it
-- exists iff the state change it describes committed. `record` is the 16-byte xxh3-128 hash
-- of the key and the signal id's hash (see `store::dedupe_record_key`); `expires_at` is Unix
-- ms in the writer's clock, after which any node may delete the row.
CREATE TABLE dedupe (
    record      BLOB    PRIMARY KEY,
    fingerprint INTEGER NOT NULL,
    reply       BLOB    NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedupe_by_expiry ON dedupe (expires_at);
