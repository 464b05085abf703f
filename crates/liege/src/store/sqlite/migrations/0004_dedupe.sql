-- liege schema v4: signal ids remembered for the dedupe retention.
--
-- A row is written only in the transaction of a fenced checkpoint write of the same key, so it
-- exists iff the state change it describes committed. `signal` is the 16-byte big-endian
-- xxh3-128 hash of the signal id; `expires_at` is Unix ms in the writer's clock, after which
-- any node may delete the row.
CREATE TABLE dedupe (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    signal      BLOB    NOT NULL,
    fingerprint INTEGER NOT NULL,
    reply       BLOB    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, id, signal)
);
CREATE INDEX dedupe_by_expiry ON dedupe (expires_at);
