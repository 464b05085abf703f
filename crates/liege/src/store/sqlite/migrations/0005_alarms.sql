-- liege schema v5: durable alarms, one per key.
--
-- A row is set, moved or removed only in the transaction of a fenced checkpoint write of the
-- same key (deleting the checkpoint removes it), so a stale owner can change no alarm. The
-- index by (partition, due) lets an owner ask for the due alarms of the partitions it holds
-- at a cost in the due rows, however many are pending.
CREATE TABLE alarms (
    kind         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    partition_id INTEGER NOT NULL,
    due_ms       INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX alarms_by_due ON alarms (partition_id, due_ms);
-- Is anything due at all? One probe, so an idle poll costs one index lookup.
CREATE INDEX alarms_by_due_ms ON alarms (due_ms);
