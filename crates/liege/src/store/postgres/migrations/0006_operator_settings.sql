-- liege schema, version 6: operator settings (drains, paused rebalancing), one row per
-- setting that is on: `node:NAME`, `region:NAME` or `rebalance-paused`. Read with the
-- membership; a change notifies `liege_changes` so every node re-reads at once.
CREATE TABLE liege_operator_settings (
    name text PRIMARY KEY
);
