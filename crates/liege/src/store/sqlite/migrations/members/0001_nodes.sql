-- liege members file, schema v1. Integers that hold u64 values (incarnation) are stored as
-- their two's-complement i64 bit pattern.

-- Membership: one row per node name; live iff lease_expires_at > now (Unix ms). Rows are
-- never deleted: `leave` marks them, `join` replaces them once expired or left.
CREATE TABLE nodes (
    name             TEXT    PRIMARY KEY,
    incarnation      INTEGER NOT NULL,
    region           TEXT    NOT NULL,
    cluster_addr     TEXT    NOT NULL,
    http_addr        TEXT    NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    has_left         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
