-- liege schema, version 5: signal ids remembered for the dedupe retention.
--
-- A row is written only by the statement of a fenced checkpoint write of the same key, and
-- only for a write that committed (it joins the statement's committed writes), so it exists
-- iff the state change it describes committed. `record` is the 16-byte xxh3-128 hash of the
-- key and the signal id's hash (see `store::dedupe_record_key`): one short binary key, cheap
-- to compare and to index, instead of (kind, id, signal) compared under a text collation.
-- `expires_at` is Unix ms in the writer's clock, after which any node may delete the row;
-- rows arrive roughly in expiry order, so a BRIN index finds the expired ones at little cost
-- per insert.
CREATE TABLE liege_dedupe (
    record      bytea  PRIMARY KEY,
    fingerprint bigint NOT NULL,
    reply       bytea  NOT NULL,
    expires_at  bigint NOT NULL
);
CREATE INDEX liege_dedupe_by_expiry ON liege_dedupe USING brin (expires_at);
