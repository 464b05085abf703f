//! The [`Store`] operations of [`PostgresStore`]: one prepared statement each.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::batch::{self, get, partition_from_db, Columns};
use super::{from_db_u64, to_db_u64, ttl_to_db, PostgresStore};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::rules;
use crate::store::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, DueAlarm, JournalAppend, JournalEntry, Lease, Loaded, Membership, NodeLease,
    NodeRecord, OperatorSetting, PartitionRow, Settings, Store, StoreChange, StoreError,
    StoreResult, StoreTime, WriteError, COMPAT_LEGACY,
};

const INIT_SQL: &str =
    "SELECT o_partitions, o_salt, o_verifier, o_placement FROM liege_init_cluster($1, $2, $3, $4)";
const CLUSTER_SQL: &str =
    "SELECT partitions, secret_salt, secret_verifier, placement FROM liege_meta";
const SET_PLACEMENT_SQL: &str = "SELECT o_live FROM liege_set_placement($1)";
const NOW_SQL: &str = "SELECT liege_now_ms()";
const JOIN_SQL: &str = "SELECT o_ok, o_now, o_until FROM liege_join($1, $2, $3, $4, $5, $6, $7)";
const RENEW_SQL: &str = "SELECT o_now, o_until FROM liege_renew($1, $2, $3)";
const LEAVE_SQL: &str = "WITH t AS MATERIALIZED (SELECT liege_now_ms() AS now), \
     u AS (UPDATE liege_nodes n SET lease_expires_at = LEAST(n.lease_expires_at, t.now), \
           has_left = true FROM t WHERE n.name = $1 AND n.incarnation = $2 RETURNING 1) \
     SELECT pg_notify('liege_changes', 'membership') WHERE EXISTS (SELECT 1 FROM u)";
const NODES_SQL: &str = "WITH t AS MATERIALIZED (SELECT liege_now_ms() AS now) \
     SELECT t.now, n.name, n.incarnation, n.region, n.cluster_addr, n.http_addr, \
            n.lease_expires_at, n.has_left, n.compat \
     FROM t LEFT JOIN liege_nodes n ON true ORDER BY n.name COLLATE \"C\"";
const DIRECTORY_SQL: &str = "WITH t AS MATERIALIZED (SELECT liege_now_ms() AS now) \
     SELECT t.now, p.id, p.owner_name, p.owner_incarnation, p.epoch \
     FROM t LEFT JOIN liege_partitions p ON true ORDER BY p.id";
/// Rows stamped after `$1` (-1: every row), with the clock and the directory version in the
/// same snapshot (see migration 4 for why no change is skipped).
const DIRECTORY_CHANGES_SQL: &str = "WITH t AS MATERIALIZED (SELECT liege_now_ms() AS now, \
            (SELECT c.version FROM liege_directory_clock c) AS version) \
     SELECT t.now, p.id, p.owner_name, p.owner_incarnation, p.epoch, t.version \
     FROM t LEFT JOIN liege_partitions p ON p.version > $1 ORDER BY p.id";
const CLAIM_SQL: &str = "SELECT o_id, o_epoch FROM liege_claim($1, $2, $3)";
const RELEASE_SQL: &str = "SELECT o_id FROM liege_release($1, $2, $3, $4)";
const READ_SQL: &str = "SELECT rev, data FROM liege_checkpoints WHERE kind = $1 AND id = $2";
/// For the keys `$1` (kinds), `$2` (ids) with their record ranges `$3..=$4`: each one's
/// checkpoint (the row whose `record` is null) and at most `$6` of its records that expire
/// at or after `$5`, every row tagged with the key's 1-based position; one statement, one
/// snapshot.
const READ_WITH_RECORDS_SQL: &str = "\
    WITH k AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) \
        WITH ORDINALITY AS k (kind, id, low, high, n)) \
    SELECT k.n, NULL::bytea AS record, c.rev AS a, NULL::bigint AS b, c.data AS c \
    FROM k JOIN liege_checkpoints c ON c.kind = k.kind AND c.id = k.id \
    UNION ALL \
    SELECT k.n, d.record, d.fingerprint, d.expires_at, d.reply FROM k CROSS JOIN LATERAL \
        (SELECT record, fingerprint, expires_at, reply FROM liege_dedupe \
         WHERE record BETWEEN k.low AND k.high AND expires_at >= $5 LIMIT $6) d";
const SETTINGS_SQL: &str = "SELECT name FROM liege_operator_settings";
const SETTING_ON_SQL: &str = "WITH i AS (INSERT INTO liege_operator_settings (name) VALUES ($1) \
     ON CONFLICT DO NOTHING RETURNING 1) SELECT pg_notify('liege_changes', 'membership')";
const SETTING_OFF_SQL: &str = "WITH d AS (DELETE FROM liege_operator_settings WHERE name = $1 \
     RETURNING 1) SELECT pg_notify('liege_changes', 'membership')";
const DUE_ALARMS_SQL: &str = "SELECT kind, id, partition, due_ms FROM liege_alarms \
    WHERE partition = ANY ($1::bigint[]) AND due_ms <= $2 ORDER BY due_ms, kind, id LIMIT $3";

/// A fenced append on its own: `$1` kind, `$2` id, `$3` writer name, `$4` incarnation, `$5`
/// epoch, `$6` partition, `$7` expected head, `$8` entries. One row: fence ok, head, the
/// directory's owner name, incarnation and epoch. The share lock on the directory row holds
/// the fence to the commit; a concurrent append at the same head collides on the primary key
/// (SQLSTATE 23505), reported as a journal conflict.
const APPEND_SQL: &str = "WITH fence AS MATERIALIZED (
    SELECT p.owner_name, p.owner_incarnation, p.epoch,
           coalesce(p.owner_name = $3 AND p.owner_incarnation = $4 AND p.epoch = $5, false) AS ok
    FROM liege_partitions p WHERE p.id = $6 FOR SHARE
), head AS MATERIALIZED (
    SELECT coalesce(max(j.rev), 0) AS rev FROM liege_journal j WHERE j.kind = $1 AND j.id = $2
), go AS MATERIALIZED (
    SELECT coalesce((SELECT ok FROM fence), false) AND (SELECT rev FROM head) = $7 AS ok
), ins AS (
    INSERT INTO liege_journal (kind, id, rev, entry)
    SELECT $1, $2, $7 + e.n, e.entry FROM unnest($8::bytea[]) WITH ORDINALITY AS e (entry, n)
    WHERE (SELECT ok FROM go)
)
SELECT coalesce(f.ok, false), (SELECT rev FROM head), f.owner_name, f.owner_incarnation,
       coalesce(f.epoch, 0)
FROM (SELECT 1) AS one LEFT JOIN fence f ON true";
const READ_JOURNAL_SQL: &str = "SELECT rev, entry FROM liege_journal \
    WHERE kind = $1 AND id = $2 AND rev >= $3 ORDER BY rev LIMIT $4";
const JOURNAL_HEAD_SQL: &str =
    "SELECT coalesce(max(rev), 0) FROM liege_journal WHERE kind = $1 AND id = $2";
/// A record of either layout (`$1` current, `$2` legacy), the current one first.
const DEDUPE_SQL: &str = "SELECT fingerprint, reply, expires_at FROM liege_dedupe \
     WHERE record IN ($1, $2) ORDER BY length(record) DESC LIMIT 1";
/// Deletes a bounded number of expired records (found through the BRIN index) and counts them.
const PRUNE_SQL: &str = "WITH gone AS (DELETE FROM liege_dedupe WHERE ctid IN (\
     SELECT ctid FROM liege_dedupe WHERE expires_at < $1 LIMIT $2) \
     RETURNING 1) SELECT count(*) FROM gone";
const AUDIT_SQL: &str = "SELECT seq, kind, id, partition, epoch, writer_name, \
     writer_incarnation, rev FROM liege_audit ORDER BY seq";

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn write_concurrency(&self) -> usize {
        // Half the data pool: batches overlap their round trips while activation loads
        // (two in flight) and lookups still get connections. Leases, membership and claims
        // have a pool of their own.
        (self.options.pool_size / 2).max(1)
    }

    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        let partitions = i64::from(proposed.partitions);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &partitions,
            &proposed.secret_salt,
            &proposed.secret_verifier,
            &proposed.placement,
        ];
        let rows = self.query(INIT_SQL, &params).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Other("liege_init_cluster returned no row".into()))?;
        Ok(ClusterMeta {
            partitions: partition_from_db(get(row, 0)?)?,
            secret_salt: get(row, 1)?,
            secret_verifier: get(row, 2)?,
            placement: get(row, 3)?,
        })
    }

    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        let rows = self.query(CLUSTER_SQL, &[]).await?;
        rows.first()
            .map(|row| {
                Ok(ClusterMeta {
                    partitions: partition_from_db(get(row, 0)?)?,
                    secret_salt: get(row, 1)?,
                    secret_verifier: get(row, 2)?,
                    placement: get(row, 3)?,
                })
            })
            .transpose()
    }

    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        let rows = self.query(SET_PLACEMENT_SQL, &[&placement]).await?;
        let live = rows
            .iter()
            .map(|row| get::<String>(row, 0))
            .collect::<StoreResult<Vec<_>>>()?;
        crate::store::rules::placement_change_allowed(&live)
    }

    async fn now(&self) -> StoreResult<StoreTime> {
        let rows = self.control_query(NOW_SQL, &[]).await?;
        get(first(&rows)?, 0)
    }

    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        let inc = to_db_u64(node.id.incarnation);
        let ttl = ttl_to_db(ttl_ms);
        let name: &str = &node.id.name;
        let compat = i16::try_from(node.compat)
            .map_err(|_| StoreError::Other(format!("compat level {} too big", node.compat)))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &name,
            &inc,
            &node.region,
            &node.cluster_addr,
            &node.http_addr,
            &ttl,
            &compat,
        ];
        let rows = self.control_query(JOIN_SQL, &params).await?;
        let row = first(&rows)?;
        if get::<bool>(row, 0)? {
            Ok(Lease {
                now: get(row, 1)?,
                expires_at: get(row, 2)?,
            })
        } else {
            Err(StoreError::NameInUse {
                name: name.to_string(),
                remaining_ms: get::<Option<i64>>(row, 2)?.unwrap_or(0),
            })
        }
    }

    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        let name: &str = &node.name;
        let inc = to_db_u64(node.incarnation);
        let ttl = ttl_to_db(ttl_ms);
        let rows = self.control_query(RENEW_SQL, &[&name, &inc, &ttl]).await?;
        match rows.first() {
            Some(row) => Ok(Lease {
                now: get(row, 0)?,
                expires_at: get(row, 1)?,
            }),
            None => Err(StoreError::LeaseLost { node: node.clone() }),
        }
    }

    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        let name: &str = &node.name;
        let inc = to_db_u64(node.incarnation);
        self.control_query(LEAVE_SQL, &[&name, &inc])
            .await
            .map(drop)
    }

    async fn nodes(&self) -> StoreResult<Membership> {
        let rows = self.control_query(NODES_SQL, &[]).await?;
        let mut membership = Membership {
            now: get(first(&rows)?, 0)?,
            nodes: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            let Some(name) = get::<Option<String>>(row, 1)? else {
                continue; // no nodes at all: only the clock row
            };
            membership.nodes.push(NodeLease {
                record: NodeRecord {
                    id: NodeId::new(name, from_db_u64(get(row, 2)?)),
                    region: get(row, 3)?,
                    cluster_addr: get(row, 4)?,
                    http_addr: get(row, 5)?,
                    compat: u16::try_from(get::<i16>(row, 8)?).unwrap_or(COMPAT_LEGACY),
                },
                lease_expires_at: get(row, 6)?,
                left: get(row, 7)?,
            });
        }
        Ok(membership)
    }

    async fn settings(&self) -> StoreResult<Settings> {
        let rows = self.control_query(SETTINGS_SQL, &[]).await?;
        let keys = rows
            .iter()
            .map(|r| get::<String>(r, 0))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(OperatorSetting::settings_from_keys(keys))
    }

    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        let key = setting.key();
        let sql = if on { SETTING_ON_SQL } else { SETTING_OFF_SQL };
        self.control_query(sql, &[&key]).await.map(drop)
    }

    async fn directory(&self) -> StoreResult<Directory> {
        let rows = self.control_query(DIRECTORY_SQL, &[]).await?;
        Ok(Directory {
            now: get(first(&rows)?, 0)?,
            partitions: partition_rows(&rows)?,
        })
    }

    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges> {
        let after: i64 = since.map_or(-1, to_db_u64);
        let rows = self.control_query(DIRECTORY_CHANGES_SQL, &[&after]).await?;
        let head = first(&rows)?;
        Ok(DirectoryChanges {
            now: get(head, 0)?,
            full: since.is_none(),
            rows: partition_rows(&rows)?,
            version: Some(from_db_u64(get(head, 5)?)),
        })
    }

    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        let name: &str = &node.name;
        let inc = to_db_u64(node.incarnation);
        let ids: Vec<i64> = partitions.iter().map(|p| i64::from(p.0)).collect();
        let rows = match self.control_query(CLAIM_SQL, &[&name, &inc, &ids]).await {
            Err(StoreError::LeaseLost { .. }) => {
                return Err(StoreError::LeaseLost { node: node.clone() })
            }
            other => other?,
        };
        let mut claimed = rows
            .iter()
            .map(|row| {
                let id = PartitionId(partition_from_db(get(row, 0)?)?);
                Ok((id, Epoch(from_db_u64(get(row, 1)?))))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        claimed.sort();
        Ok(claimed)
    }

    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        let name: &str = &node.name;
        let inc = to_db_u64(node.incarnation);
        let ids: Vec<i64> = partitions.iter().map(|(p, _)| i64::from(p.0)).collect();
        let epochs: Vec<i64> = partitions.iter().map(|(_, e)| to_db_u64(e.0)).collect();
        let rows = self
            .control_query(RELEASE_SQL, &[&name, &inc, &ids, &epochs])
            .await?;
        let mut released = rows
            .iter()
            .map(|row| Ok(PartitionId(partition_from_db(get(row, 0)?)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        released.sort();
        Ok(released)
    }

    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        let (kind, id): (&str, &str) = (&key.kind, &key.id);
        let rows = self.query(READ_SQL, &[&kind, &id]).await?;
        rows.first()
            .map(|row| {
                Ok(Checkpoint {
                    rev: Rev(from_db_u64(get(row, 0)?)),
                    data: get(row, 1)?,
                })
            })
            .transpose()
    }

    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rounds = Columns::rounds(batch)?;
        let audit = self.options.store.audit;
        fn params<'c>(
            c: &'c Columns<'_>,
            audit: &'c bool,
        ) -> Vec<&'c (dyn tokio_postgres::types::ToSql + Sync)> {
            let mut p: Vec<&'c (dyn tokio_postgres::types::ToSql + Sync)> = vec![
                &c.idx,
                &c.partition,
                &c.epoch,
                &c.writer_name,
                &c.writer_incarnation,
                &c.kind,
                &c.id,
                &c.expected_rev,
                &c.data,
                audit,
            ];
            if c.has_dedupe() {
                p.extend([
                    &c.dedupe_idx as &(dyn tokio_postgres::types::ToSql + Sync),
                    &c.dedupe_record,
                    &c.dedupe_fingerprint,
                    &c.dedupe_reply,
                    &c.dedupe_expires,
                ]);
            }
            if c.has_alarms() {
                p.extend([
                    &c.alarm_idx as &(dyn tokio_postgres::types::ToSql + Sync),
                    &c.alarm_due,
                ]);
            }
            if c.has_journal() {
                p.extend([
                    &c.journal_idx as &(dyn tokio_postgres::types::ToSql + Sync),
                    &c.journal_expected,
                    &c.entry_idx,
                    &c.entry_rev,
                    &c.entry_data,
                ]);
            }
            p
        }
        let sql = |r: &Columns<'_>| {
            batch::write_sql(
                audit,
                r.has_deletes(),
                r.has_dedupe(),
                r.has_alarms(),
                r.has_journal(),
            )
        };
        let rows = match rounds.as_slice() {
            // The batches a node forms: one statement, one transaction, one round trip.
            [one] => self.query(sql(one), &params(one, &audit)).await?,
            // Repeated keys: one statement per round in one transaction; the first round's
            // share locks hold the fence until commit.
            many => {
                self.timed(async {
                    let mut conn = self.pool.get().await?;
                    conn.simple("BEGIN").await?;
                    let mut rows = Vec::new();
                    for round in many {
                        let params = params(round, &audit);
                        rows.extend(conn.query(sql(round), &params).await?);
                    }
                    conn.simple("COMMIT").await?;
                    Ok(rows)
                })
                .await?
            }
        };
        batch::decode(batch, &rows)
    }

    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Loaded>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: Vec<&str> = keys.iter().map(|k| &*k.kind).collect();
        let ids: Vec<&str> = keys.iter().map(|k| &*k.id).collect();
        let (lows, highs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = keys
            .iter()
            .map(|k| {
                let (low, high) = crate::store::dedupe_key_range(k);
                (low.to_vec(), high.to_vec())
            })
            .unzip();
        let fetch = i64::from(limit) + 1;
        let rows = self
            .query(
                READ_WITH_RECORDS_SQL,
                &[&kinds, &ids, &lows, &highs, &now_ms, &fetch],
            )
            .await?;
        let mut checkpoints: Vec<Option<Checkpoint>> = vec![None; keys.len()];
        let mut records: Vec<Vec<DedupeRecord>> = vec![Vec::new(); keys.len()];
        for row in &rows {
            let n = usize::try_from(get::<i64>(row, 0)? - 1)
                .ok()
                .filter(|n| *n < keys.len())
                .ok_or_else(|| StoreError::Other("a read row names no key of the batch".into()))?;
            match get::<Option<Vec<u8>>>(row, 1)? {
                None => {
                    checkpoints[n] = Some(Checkpoint {
                        rev: Rev(from_db_u64(get(row, 2)?)),
                        data: get(row, 4)?,
                    })
                }
                Some(record) => records[n].push(DedupeRecord {
                    signal: crate::store::dedupe_record_signal(&record)?,
                    fingerprint: from_db_u64(get(row, 2)?),
                    reply: get(row, 4)?,
                    expires_at_ms: get(row, 3)?,
                }),
            }
        }
        Ok(checkpoints
            .into_iter()
            .zip(records)
            .map(|(checkpoint, records)| Loaded::new(checkpoint, records, limit))
            .collect())
    }

    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        let record = crate::store::dedupe_record_key(key, signal);
        let legacy = crate::store::legacy_dedupe_record_key(key, signal);
        let rows = self
            .query(DEDUPE_SQL, &[&&record[..], &&legacy[..]])
            .await?;
        rows.first()
            .map(|row| {
                Ok(DedupeRecord {
                    signal,
                    fingerprint: from_db_u64(get(row, 0)?),
                    reply: get(row, 1)?,
                    expires_at_ms: get(row, 2)?,
                })
            })
            .transpose()
    }

    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        let limit = i64::from(limit);
        let rows = self.query(PRUNE_SQL, &[&before_ms, &limit]).await?;
        Ok(from_db_u64(get(first(&rows)?, 0)?))
    }

    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<DueAlarm>> {
        let parts: Vec<i64> = partitions.iter().map(|p| i64::from(p.0)).collect();
        let limit = i64::from(limit);
        let rows = self
            .query(DUE_ALARMS_SQL, &[&parts, &due_by_ms, &limit])
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = get(row, 0)?;
                let id: String = get(row, 1)?;
                Ok(DueAlarm {
                    key: AgentKey {
                        kind: kind.into(),
                        id: id.into(),
                    },
                    partition: PartitionId(batch::partition_from_db(get(row, 2)?)?),
                    due_ms: get(row, 3)?,
                })
            })
            .collect()
    }

    async fn append(&self, append: &JournalAppend) -> StoreResult<Result<Rev, WriteError>> {
        let (kind, id): (&str, &str) = (&append.key.kind, &append.key.id);
        let writer: &str = &append.writer.name;
        let incarnation = to_db_u64(append.writer.incarnation);
        let epoch = to_db_u64(append.epoch.0);
        let partition = i64::from(append.partition.0);
        let expected = to_db_u64(append.journal.expected_rev.0);
        let entries = &append.journal.entries;
        let rows = match self
            .query(
                APPEND_SQL,
                &[
                    &kind,
                    &id,
                    &writer,
                    &incarnation,
                    &epoch,
                    &partition,
                    &expected,
                    entries,
                ],
            )
            .await
        {
            Ok(rows) => rows,
            // Another append at the same head committed first.
            Err(e) if super::pool::is_unique_violation(&e) => {
                let actual = self.journal_head(&append.key).await?;
                return Ok(Err(WriteError::JournalConflict {
                    expected: append.journal.expected_rev,
                    actual,
                }));
            }
            Err(e) => return Err(e),
        };
        let row = first(&rows)?;
        let ok: bool = get(row, 0)?;
        let head = Rev(from_db_u64(get(row, 1)?));
        if !ok {
            let owner_name: Option<String> = get(row, 2)?;
            let owner_inc: Option<i64> = get(row, 3)?;
            return Ok(Err(WriteError::Fenced {
                partition: append.partition,
                owner: owner_name
                    .zip(owner_inc)
                    .map(|(n, i)| NodeId::new(n, from_db_u64(i))),
                epoch: Epoch(from_db_u64(get(row, 4)?)),
            }));
        }
        if let Err(e) = rules::check_journal(append.journal.expected_rev, head) {
            return Ok(Err(e));
        }
        Ok(Ok(rules::journal_after(head, entries.len())))
    }

    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<JournalEntry>> {
        let (kind, id): (&str, &str) = (&key.kind, &key.id);
        // Clamped, not reinterpreted: a `from` past i64::MAX is past every head.
        let (from, limit) = (i64::try_from(from.0).unwrap_or(i64::MAX), i64::from(limit));
        let rows = self
            .query(READ_JOURNAL_SQL, &[&kind, &id, &from, &limit])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(JournalEntry {
                    rev: Rev(from_db_u64(get(row, 0)?)),
                    data: get(row, 1)?,
                })
            })
            .collect()
    }

    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        let (kind, id): (&str, &str) = (&key.kind, &key.id);
        let rows = self.query(JOURNAL_HEAD_SQL, &[&kind, &id]).await?;
        Ok(Rev(from_db_u64(get(first(&rows)?, 0)?)))
    }

    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        if !self.options.store.audit {
            return Ok(Vec::new());
        }
        let rows = self.query(AUDIT_SQL, &[]).await?;
        rows.iter().map(batch::audit_record).collect()
    }

    fn watch(&self) -> Option<broadcast::Receiver<StoreChange>> {
        Some(self.changes.subscribe())
    }
}

fn first(rows: &[tokio_postgres::Row]) -> StoreResult<&tokio_postgres::Row> {
    rows.first()
        .ok_or_else(|| StoreError::Other("query returned no row".into()))
}

/// The directory rows of a result whose columns 1–4 are id, owner name, owner incarnation and
/// epoch (a row without an id is the clock row of an empty result).
fn partition_rows(rows: &[tokio_postgres::Row]) -> StoreResult<Vec<PartitionRow>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(id) = get::<Option<i64>>(row, 1)? else {
            continue;
        };
        let owner_name: Option<String> = get(row, 2)?;
        let owner_inc: Option<i64> = get(row, 3)?;
        out.push(PartitionRow {
            id: PartitionId(partition_from_db(id)?),
            owner: owner_name
                .zip(owner_inc)
                .map(|(n, i)| NodeId::new(n, from_db_u64(i))),
            epoch: Epoch(from_db_u64(get(row, 4)?)),
        });
    }
    Ok(out)
}
