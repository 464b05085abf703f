-- liege schema, version 5: signal ids remembered for the dedupe retention.
--
-- A row is written only by the statement of a fenced checkpoint write of the same key, and
-- only for a write that committed (it joins the statement's committed writes), so it exists
-- iff the state change it describes committed. `signal` is the 16-byte big-endian xxh3-128
-- hash of the signal id; `expires_at` is Unix ms in the writer's clock, after which any node
-- may delete the row.
CREATE TABLE liege_dedupe (
    kind        text   NOT NULL,
    id          text   NOT NULL,
    signal      bytea  NOT NULL,
    fingerprint bigint NOT NULL,
    reply       bytea  NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (kind, id, signal)
);
CREATE INDEX liege_dedupe_by_expiry ON liege_dedupe (expires_at);
