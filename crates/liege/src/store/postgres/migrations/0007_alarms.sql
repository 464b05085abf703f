-- liege schema, version 7: durable alarms, one per key.
--
-- A row is set, moved or removed only by the statement of a fenced checkpoint write of the
-- same key, for a write that committed (it joins the statement's committed writes; deleting
-- the checkpoint removes it), so a stale owner can change no alarm. The index by
-- (partition, due) lets an owner ask for the due alarms of the partitions it holds at a cost
-- in the due rows, however many are pending.
CREATE TABLE liege_alarms (
    kind      text   NOT NULL,
    id        text   NOT NULL,
    partition bigint NOT NULL,
    due_ms    bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX liege_alarms_by_due ON liege_alarms (partition, due_ms);
