-- members file v2: operator settings (drains, paused rebalancing), one row per setting that
-- is on: `node:NAME`, `region:NAME` or `rebalance-paused`. Read with the membership.
CREATE TABLE operator_settings (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
