-- liege members file, schema v1: the lease table alone, so renewals never wait behind
-- checkpoint batches on the main file's write lock.
CREATE TABLE nodes (
    name             TEXT    PRIMARY KEY,
    incarnation      INTEGER NOT NULL,
    region           TEXT    NOT NULL,
    cluster_addr     TEXT    NOT NULL,
    http_addr        TEXT    NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    has_left         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
