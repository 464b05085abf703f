//! Checkpoint reads, fenced batch writes and the audit log, run on the data connection.

use std::collections::hash_map::{Entry, HashMap};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::schema::{from_sql_u64, to_sql_u64, SqlResultExt};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::rules;
use crate::store::{
    dedupe_key_range, dedupe_record_key, dedupe_record_signal, legacy_dedupe_record_key,
    written_record_key, AlarmUpdate, AuditRecord, Checkpoint, CheckpointWrite, DedupeRecord,
    DueAlarm, JournalAppend, JournalEntries, JournalEntry, Loaded, StoreResult, WriteError,
};

pub(super) fn read(conn: &Connection, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
    conn.prepare_cached("SELECT rev, data FROM checkpoints WHERE kind = ?1 AND id = ?2")
        .sql()?
        .query_row([&*key.kind, &*key.id], |r| {
            Ok(Checkpoint {
                rev: Rev(from_sql_u64(r.get(0)?)),
                data: r.get(1)?,
            })
        })
        .optional()
        .sql()
}

/// Every key's checkpoint and unexpired records, in one read transaction.
pub(super) fn read_with_records(
    conn: &mut Connection,
    keys: &[AgentKey],
    now_ms: i64,
    limit: u32,
) -> StoreResult<Vec<Loaded>> {
    let tx = conn.transaction().sql()?;
    let loaded = keys
        .iter()
        .map(|key| load(&tx, key, now_ms, limit))
        .collect::<StoreResult<Vec<_>>>()?;
    tx.commit().sql()?;
    Ok(loaded)
}

/// One key's checkpoint, then its unexpired records (at most `limit`, else `None`).
fn load(conn: &Connection, key: &AgentKey, now_ms: i64, limit: u32) -> StoreResult<Loaded> {
    let checkpoint = read(conn, key)?;
    let (low, high) = dedupe_key_range(key);
    let mut records = Vec::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT record, fingerprint, reply, expires_at FROM dedupe \
             WHERE record BETWEEN ?1 AND ?2 AND expires_at >= ?3 LIMIT ?4",
        )
        .sql()?;
    let mut rows = stmt
        .query(rusqlite::params![
            &low[..],
            &high[..],
            now_ms,
            limit.saturating_add(1)
        ])
        .sql()?;
    while let Some(r) = rows.next().sql()? {
        let record: Vec<u8> = r.get(0).sql()?;
        records.push(DedupeRecord {
            signal: dedupe_record_signal(&record)?,
            fingerprint: from_sql_u64(r.get(1).sql()?),
            reply: r.get(2).sql()?,
            expires_at_ms: r.get(3).sql()?,
        });
    }
    Ok(Loaded::new(checkpoint, records, limit))
}

/// A directory row as the fence check needs it.
type Fence = (Option<NodeId>, Epoch);

/// Reads the fence of `p`; a partition without a row is unowned at epoch 0 (every write to it
/// is fenced).
fn fence(tx: &Transaction<'_>, p: PartitionId) -> StoreResult<Fence> {
    let row = tx
        .prepare_cached("SELECT owner_name, owner_incarnation, epoch FROM partitions WHERE id = ?1")
        .sql()?
        .query_row([p.0], |r| {
            let name: Option<String> = r.get(0)?;
            let inc: Option<i64> = r.get(1)?;
            let owner = name
                .zip(inc)
                .map(|(name, inc)| NodeId::new(name, from_sql_u64(inc)));
            Ok((owner, Epoch(from_sql_u64(r.get(2)?))))
        })
        .optional()
        .sql()?;
    Ok(row.unwrap_or((None, Epoch(0))))
}

/// Applies a whole batch in one `BEGIN IMMEDIATE` transaction: one commit, one fsync.
///
/// The write lock is held from the first fence read to the commit, so no claim (which also
/// needs the write lock, from any process) can interleave; the directory rows are therefore
/// read once per partition and cached for the batch.
pub(super) fn write(
    conn: &mut Connection,
    batch: &[CheckpointWrite],
    audit: bool,
    skip_fencing: bool,
) -> StoreResult<Vec<Result<Rev, WriteError>>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    let mut fences: HashMap<PartitionId, Fence> = HashMap::new();
    let mut results = Vec::with_capacity(batch.len());
    for w in batch {
        let (owner, epoch) = match fences.entry(w.partition) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(slot) => slot.insert(fence(&tx, w.partition)?),
        };
        if !skip_fencing {
            if let Err(e) =
                rules::check_fence(w.partition, &w.writer, w.epoch, owner.as_ref(), *epoch)
            {
                results.push(Err(e));
                continue;
            }
        }
        results.push(apply(&tx, w, audit, skip_fencing)?);
    }
    tx.commit().sql()?;
    Ok(results)
}

/// The revision check and the row change of one write that passed its fence.
fn apply(
    tx: &Transaction<'_>,
    w: &CheckpointWrite,
    audit: bool,
    skip_fencing: bool,
) -> StoreResult<Result<Rev, WriteError>> {
    let (kind, id) = (&*w.key.kind, &*w.key.id);
    let actual = tx
        .prepare_cached("SELECT rev FROM checkpoints WHERE kind = ?1 AND id = ?2")
        .sql()?
        .query_row([kind, id], |r| r.get::<_, i64>(0))
        .optional()
        .sql()?
        .map_or(Rev(0), |rev| Rev(from_sql_u64(rev)));
    let rev = if skip_fencing {
        // Sabotage: the stale writer overwrites whatever is there.
        rules::rev_after(actual, w.data.is_none())
    } else {
        // Same order on every backend: fence, journal head, revision. A delete's journal
        // (it must carry none) is ignored.
        if let (Some(_), Some(j)) = (&w.data, &w.journal) {
            if let Err(e) = rules::check_journal(j.expected_rev, journal_head(tx, &w.key)?) {
                return Ok(Err(e));
            }
        }
        if let Err(e) = rules::check_rev(w.expected_rev, actual) {
            return Ok(Err(e));
        }
        rules::rev_after(w.expected_rev, w.data.is_none())
    };
    match (&w.data, &w.journal) {
        (None, _) => {
            tx.prepare_cached("DELETE FROM journal WHERE kind = ?1 AND id = ?2")
                .sql()?
                .execute([kind, id])
                .sql()?;
        }
        // Sabotage: the stale writer's entries overwrite whatever is at their revisions.
        (Some(_), Some(j)) => insert_entries(tx, &w.key, j, skip_fencing)?,
        (Some(_), None) => {}
    }
    match &w.data {
        Some(data) => {
            tx.prepare_cached(
                "INSERT INTO checkpoints (kind, id, rev, data) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind, id) DO UPDATE SET rev = excluded.rev, data = excluded.data",
            )
            .sql()?
            .execute(rusqlite::params![kind, id, to_sql_u64(rev.0), data])
            .sql()?;
        }
        None => {
            tx.prepare_cached("DELETE FROM checkpoints WHERE kind = ?1 AND id = ?2")
                .sql()?
                .execute([kind, id])
                .sql()?;
        }
    }
    match (w.data.is_none(), w.alarm) {
        (true, _) | (false, AlarmUpdate::Clear) => {
            tx.prepare_cached("DELETE FROM alarms WHERE kind = ?1 AND id = ?2")
                .sql()?
                .execute([kind, id])
                .sql()?;
        }
        (false, AlarmUpdate::Set(due)) => {
            tx.prepare_cached(
                "INSERT INTO alarms (kind, id, partition_id, due_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind, id) DO UPDATE SET partition_id = excluded.partition_id, \
                 due_ms = excluded.due_ms",
            )
            .sql()?
            .execute(rusqlite::params![kind, id, w.partition.0, due])
            .sql()?;
        }
        (false, AlarmUpdate::Keep) => {}
    }
    for r in &w.dedupe {
        tx.prepare_cached(
            "INSERT INTO dedupe (record, fingerprint, reply, expires_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (record) DO UPDATE SET \
             fingerprint = excluded.fingerprint, reply = excluded.reply, \
             expires_at = excluded.expires_at",
        )
        .sql()?
        .execute(rusqlite::params![
            written_record_key(&w.key, r.signal, w.legacy_records),
            to_sql_u64(r.fingerprint),
            &r.reply,
            r.expires_at_ms
        ])
        .sql()?;
    }
    if audit {
        tx.prepare_cached(
            "INSERT INTO audit \
             (kind, id, partition_id, epoch, writer_name, writer_incarnation, rev) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .sql()?
        .execute(rusqlite::params![
            kind,
            id,
            w.partition.0,
            to_sql_u64(w.epoch.0),
            &*w.writer.name,
            to_sql_u64(w.writer.incarnation),
            to_sql_u64(rev.0)
        ])
        .sql()?;
    }
    Ok(Ok(rev))
}

/// The revision of the last entry of `key`'s journal (0: none).
pub(super) fn journal_head(tx: &Connection, key: &AgentKey) -> StoreResult<Rev> {
    let head: i64 = tx
        .prepare_cached("SELECT coalesce(max(rev), 0) FROM journal WHERE kind = ?1 AND id = ?2")
        .sql()?
        .query_row([&*key.kind, &*key.id], |r| r.get(0))
        .sql()?;
    Ok(Rev(from_sql_u64(head)))
}

/// Inserts `j.entries` after `j.expected_rev` (checked by the caller, in its transaction);
/// `replace` (sabotage only) overwrites entries already at those revisions.
fn insert_entries(
    tx: &Transaction<'_>,
    key: &AgentKey,
    j: &JournalEntries,
    replace: bool,
) -> StoreResult<()> {
    let mut stmt = tx
        .prepare_cached(if replace {
            "INSERT OR REPLACE INTO journal (kind, id, rev, entry) VALUES (?1, ?2, ?3, ?4)"
        } else {
            "INSERT INTO journal (kind, id, rev, entry) VALUES (?1, ?2, ?3, ?4)"
        })
        .sql()?;
    for (i, entry) in j.entries.iter().enumerate() {
        let rev = rules::journal_after(j.expected_rev, i + 1);
        stmt.execute(rusqlite::params![
            &*key.kind,
            &*key.id,
            to_sql_u64(rev.0),
            entry
        ])
        .sql()?;
    }
    Ok(())
}

/// A fenced append on its own, in one `BEGIN IMMEDIATE` transaction.
pub(super) fn append(
    conn: &mut Connection,
    append: &JournalAppend,
) -> StoreResult<Result<Rev, WriteError>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    let (owner, epoch) = fence(&tx, append.partition)?;
    let j = &append.journal;
    if let Err(e) = rules::check_fence(
        append.partition,
        &append.writer,
        append.epoch,
        owner.as_ref(),
        epoch,
    ) {
        return Ok(Err(e));
    }
    if let Err(e) = rules::check_journal(j.expected_rev, journal_head(&tx, &append.key)?) {
        return Ok(Err(e));
    }
    insert_entries(&tx, &append.key, j, false)?;
    tx.commit().sql()?;
    Ok(Ok(rules::journal_after(j.expected_rev, j.entries.len())))
}

/// At most `limit` entries of `key`'s journal from revision `from` on.
pub(super) fn read_journal(
    conn: &mut Connection,
    key: &AgentKey,
    from: Rev,
    limit: u32,
) -> StoreResult<Vec<JournalEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT rev, entry FROM journal WHERE kind = ?1 AND id = ?2 AND rev >= ?3 \
             ORDER BY rev LIMIT ?4",
        )
        .sql()?;
    let rows = stmt
        .query_map(
            // Clamped, not reinterpreted: a `from` past i64::MAX is past every head.
            rusqlite::params![
                &*key.kind,
                &*key.id,
                i64::try_from(from.0).unwrap_or(i64::MAX),
                limit
            ],
            |r| {
                Ok(JournalEntry {
                    rev: Rev(from_sql_u64(r.get(0)?)),
                    data: r.get(1)?,
                })
            },
        )
        .sql()?;
    rows.collect::<rusqlite::Result<Vec<_>>>().sql()
}

pub(super) fn dedupe(
    conn: &mut Connection,
    key: &AgentKey,
    signal: u128,
) -> StoreResult<Option<DedupeRecord>> {
    // A record of either layout; the current one first (both are the same if both exist).
    conn.prepare_cached(
        "SELECT fingerprint, reply, expires_at FROM dedupe WHERE record IN (?1, ?2) \
         ORDER BY length(record) DESC LIMIT 1",
    )
    .sql()?
    .query_row(
        [
            &dedupe_record_key(key, signal)[..],
            &legacy_dedupe_record_key(key, signal)[..],
        ],
        |r| {
            Ok(DedupeRecord {
                signal,
                fingerprint: from_sql_u64(r.get(0)?),
                reply: r.get(1)?,
                expires_at_ms: r.get(2)?,
            })
        },
    )
    .optional()
    .sql()
}

/// Deletes at most `limit` records that expired before `before_ms`, oldest first.
pub(super) fn prune_dedupe(conn: &mut Connection, before_ms: i64, limit: u32) -> StoreResult<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM dedupe WHERE record IN \
             (SELECT record FROM dedupe WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2)",
        )
        .sql()?
        .execute(rusqlite::params![before_ms, limit])
        .sql()?;
    Ok(n as u64)
}

/// The due alarms of `partitions`, earliest first (one indexed range per partition, merged).
pub(super) fn due_alarms(
    conn: &mut Connection,
    partitions: &[PartitionId],
    due_by_ms: i64,
    limit: u32,
) -> StoreResult<Vec<DueAlarm>> {
    // Every node polls often: when nothing is due anywhere (the usual case), one index probe
    // answers instead of one per partition.
    let any: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM alarms WHERE due_ms <= ?1)")
        .sql()?
        .query_row([due_by_ms], |r| r.get(0))
        .sql()?;
    if !any {
        return Ok(Vec::new());
    }
    let mut due = Vec::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, id, due_ms FROM alarms WHERE partition_id = ?1 AND due_ms <= ?2 \
             ORDER BY due_ms LIMIT ?3",
        )
        .sql()?;
    for p in partitions {
        let rows = stmt
            .query_map(rusqlite::params![p.0, due_by_ms, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .sql()?;
        for row in rows {
            let (kind, id, due_ms) = row.sql()?;
            due.push(DueAlarm {
                key: AgentKey {
                    kind: kind.into(),
                    id: id.into(),
                },
                partition: *p,
                due_ms,
            });
        }
    }
    due.sort_by(|a, b| (a.due_ms, &a.key).cmp(&(b.due_ms, &b.key)));
    due.truncate(limit as usize);
    Ok(due)
}

pub(super) fn audit(conn: &mut Connection) -> StoreResult<Vec<AuditRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, id, partition_id, epoch, writer_name, writer_incarnation, rev \
             FROM audit ORDER BY seq",
        )
        .sql()?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AuditRecord {
                seq: from_sql_u64(r.get(0)?),
                key: AgentKey {
                    kind: r.get::<_, String>(1)?.into(),
                    id: r.get::<_, String>(2)?.into(),
                },
                partition: PartitionId(r.get(3)?),
                epoch: Epoch(from_sql_u64(r.get(4)?)),
                writer: NodeId::new(r.get::<_, String>(5)?, from_sql_u64(r.get(6)?)),
                rev: Rev(from_sql_u64(r.get(7)?)),
            })
        })
        .sql()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .sql()?;
    Ok(rows)
}
