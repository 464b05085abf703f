-- liege schema v1. Integers that hold u64 values (incarnation, epoch, rev) are stored as
-- their two's-complement i64 bit pattern; the store only compares them for equality.

-- Facts fixed at cluster creation; exactly one row.
CREATE TABLE cluster_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    partitions      INTEGER NOT NULL,
    secret_salt     BLOB    NOT NULL,
    secret_verifier BLOB    NOT NULL
);

-- Membership: one row per node name; live iff lease_expires_at > now (Unix ms).
CREATE TABLE nodes (
    name             TEXT    PRIMARY KEY,
    incarnation      INTEGER NOT NULL,
    region           TEXT    NOT NULL,
    cluster_addr     TEXT    NOT NULL,
    http_addr        TEXT    NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    has_left         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The partition directory: owner (name + incarnation, both NULL when unowned) and epoch.
CREATE TABLE partitions (
    id                INTEGER PRIMARY KEY,
    owner_name        TEXT,
    owner_incarnation INTEGER,
    epoch             INTEGER NOT NULL DEFAULT 0
);

-- One checkpoint per agent key.
CREATE TABLE checkpoints (
    kind TEXT    NOT NULL,
    id   TEXT    NOT NULL,
    rev  INTEGER NOT NULL,
    data BLOB    NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

-- Every committed write when auditing is on; AUTOINCREMENT keeps seq strictly increasing.
CREATE TABLE audit (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind               TEXT    NOT NULL,
    id                 TEXT    NOT NULL,
    partition_id       INTEGER NOT NULL,
    epoch              INTEGER NOT NULL,
    writer_name        TEXT    NOT NULL,
    writer_incarnation INTEGER NOT NULL,
    rev                INTEGER NOT NULL
);
