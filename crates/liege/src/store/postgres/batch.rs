//! Encoding a batch of fenced writes as column arrays for one statement per round
//! ([`write_sql`]), and decoding the per-write outcomes it returns.
//!
//! A batch with one write per key is one call of one prepared statement: one round trip and
//! one transaction, however many writes it holds.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Row;

use super::{from_db_u64, to_db_u64};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::{AlarmUpdate, CheckpointWrite, StoreError, StoreResult, WriteError};

/// The statement applying one round of a batch, in the variant the round needs: with or
/// without deletes, with or without audit records. Every variant is one statement, so
/// outside an explicit transaction one transaction and one round trip, prepared once per
/// connection and planned generically (`plan_cache_mode = force_generic_plan`), so its cost
/// is in the rows; a node's batches (no deletes, no audit) get the leanest.
///
/// The fence: `fence` share-locks the directory rows of the round's partitions (in id order)
/// and — a locking read — returns their *latest committed* versions: a claim that committed
/// while we waited for its lock is seen, and one that comes later waits for our commit. The
/// revision check is part of each change: a write expecting revision 0 inserts only if the
/// key is absent (`ON CONFLICT DO NOTHING`), any other updates only the row at the expected
/// revision (the `WHERE` of an `UPDATE` is re-checked on the latest version of a row another
/// transaction changed meanwhile).
///
/// Parameters: `$1` idx (1-based position in the caller's batch), `$2` partition, `$3` epoch,
/// `$4` writer name, `$5` writer incarnation, `$6` kind, `$7` id, `$8` expected revision, `$9`
/// data (NULL: delete), `$10` audit. One row per write: idx, status (0 committed with the new
/// revision, 1 fenced with the directory's owner and epoch, 2 revision conflict with the
/// stored revision), revision, owner name, owner incarnation, epoch.
///
/// The variant with dedupe records takes five more: `$11` idx of the record's write, `$12`
/// record key ([`crate::store::written_record_key`]), `$13` fingerprint, `$14` reply, `$15`
/// expiry; a record is inserted (or replaces an older one of the same signal) only if its
/// write is among the committed ones.
///
/// The variant with alarm changes takes two more after those: the idx of the changing write
/// and its new due time (NULL: remove the alarm; a deleted checkpoint always brings one);
/// applied only for committed writes.
///
/// The variant with journal appends takes five more after those: per appending write its idx
/// and the journal head it expects (a write whose head moved commits nothing: status 3, with
/// the head), then per entry the idx of its write, its revision and its bytes, inserted only
/// for committed writes. A deleted checkpoint takes its journal with it (every variant with
/// deletes).
pub(super) fn write_sql(
    audit: bool,
    deletes: bool,
    dedupe: bool,
    alarms: bool,
    journal: bool,
) -> &'static str {
    static VARIANTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let variants = VARIANTS.get_or_init(|| {
        (0..32)
            .map(|i| build_write_sql(i & 16 != 0, i & 8 != 0, i & 4 != 0, i & 2 != 0, i & 1 != 0))
            .collect()
    });
    &variants[usize::from(audit) * 16
        + usize::from(deletes) * 8
        + usize::from(dedupe) * 4
        + usize::from(alarms) * 2
        + usize::from(journal)]
}

fn build_write_sql(
    audit: bool,
    deletes: bool,
    dedupe: bool,
    alarms: bool,
    journal: bool,
) -> String {
    // Parameter numbers of the optional groups, in order after the ten of every variant.
    let mut next = 11;
    let mut take = |n: usize| {
        let first = next;
        next += n;
        first
    };
    let dedupe_at = if dedupe { take(5) } else { 0 };
    let alarm_at = if alarms { take(2) } else { 0 };
    let journal_at = if journal { take(5) } else { 0 };
    // The journal check: a write that appends expects its key's head.
    let (journal_join, jok) = if journal {
        (
            format!(
                "
    LEFT JOIN unnest(${}::bigint[], ${}::bigint[]) AS jx (widx, jexp) ON jx.widx = i.idx",
                journal_at,
                journal_at + 1
            ),
            "jx.widx IS NULL OR jx.jexp = (SELECT coalesce(max(j.rev), 0) FROM liege_journal j
                                          WHERE j.kind = i.kind AND j.id = i.kid)",
        )
    } else {
        (String::new(), "true")
    };
    let mut sql = format!(
        "WITH fence AS MATERIALIZED (
    SELECT p.id, p.owner_name, p.owner_incarnation, p.epoch FROM liege_partitions p
    WHERE p.id = ANY ($2::bigint[]) ORDER BY p.id FOR SHARE
), chk AS MATERIALIZED (
    SELECT i.*, f.owner_name AS owner, f.owner_incarnation AS oinc,
           coalesce(f.epoch, 0) AS pepoch,
           coalesce(f.owner_name = i.wname AND f.owner_incarnation = i.winc
                    AND f.epoch = i.wepoch, false) AS fence_ok,
           ({jok}) AS jok
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                $6::text[], $7::text[], $8::bigint[], $9::bytea[])
        AS i (idx, part, wepoch, wname, winc, kind, kid, exp, data)
    LEFT JOIN fence f ON f.id = i.part{journal_join}
), ins AS (
    INSERT INTO liege_checkpoints (kind, id, rev, data)
    SELECT chk.kind, chk.kid, 1, chk.data FROM chk
    WHERE chk.fence_ok AND chk.jok AND chk.data IS NOT NULL AND chk.exp = 0
    ORDER BY chk.kind, chk.kid
    ON CONFLICT (kind, id) DO NOTHING
    RETURNING kind, id
), upd AS (
    UPDATE liege_checkpoints c SET rev = chk.exp + 1, data = chk.data FROM chk
    WHERE chk.fence_ok AND chk.jok AND chk.data IS NOT NULL AND chk.exp > 0
      AND c.kind = chk.kind AND c.id = chk.kid AND c.rev = chk.exp
    RETURNING c.kind, c.id
)",
    );
    let mut done = String::from("SELECT kind, id FROM ins UNION ALL SELECT kind, id FROM upd");
    if deletes {
        sql.push_str(
            ", dels AS (
    DELETE FROM liege_checkpoints c USING chk
    WHERE chk.fence_ok AND chk.jok AND chk.data IS NULL AND c.kind = chk.kind AND c.id = chk.kid
      AND c.rev = chk.exp
    RETURNING c.kind, c.id
), nothing AS (
    SELECT chk.kind, chk.kid AS id FROM chk
    WHERE chk.fence_ok AND chk.jok AND chk.data IS NULL AND chk.exp = 0 AND NOT EXISTS (
        SELECT 1 FROM liege_checkpoints c WHERE c.kind = chk.kind AND c.id = chk.kid)
)",
        );
        // A delete of an absent key expecting revision 0 commits: nothing to remove.
        done.push_str(
            " UNION ALL SELECT kind, id FROM dels UNION ALL SELECT kind, id FROM nothing",
        );
    }
    sql.push_str(&format!(
        ", done AS MATERIALIZED (
    SELECT chk.idx, CASE WHEN chk.data IS NULL THEN 0 ELSE chk.exp + 1 END AS newrev,
           chk.kind, chk.kid, chk.part, chk.wepoch, chk.wname, chk.winc
    FROM chk JOIN ({done}) w ON w.kind = chk.kind AND w.id = chk.kid
)"
    ));
    if dedupe {
        let [a, b, c, d, e] = std::array::from_fn(|i| dedupe_at + i);
        sql.push_str(&format!(
            ", ded AS (
    INSERT INTO liege_dedupe (record, fingerprint, reply, expires_at)
    SELECT x.rec, x.fp, x.reply, x.exp
    FROM unnest(${a}::bigint[], ${b}::bytea[], ${c}::bigint[], ${d}::bytea[], ${e}::bigint[])
        AS x (widx, rec, fp, reply, exp)
    WHERE x.widx IN (SELECT d.idx FROM done d)
    ORDER BY x.rec
    ON CONFLICT (record) DO UPDATE SET fingerprint = excluded.fingerprint,
        reply = excluded.reply, expires_at = excluded.expires_at
)"
        ));
    }
    if deletes {
        // A deleted checkpoint takes its journal with it.
        sql.push_str(
            ", jdel AS (
    DELETE FROM liege_journal j USING done d
    WHERE d.newrev = 0 AND j.kind = d.kind AND j.id = d.kid
)",
        );
    }
    if journal {
        let (w, r, e) = (journal_at + 2, journal_at + 3, journal_at + 4);
        sql.push_str(&format!(
            ", jins AS (
    INSERT INTO liege_journal (kind, id, rev, entry)
    SELECT d.kind, d.kid, x.rev, x.entry
    FROM unnest(${w}::bigint[], ${r}::bigint[], ${e}::bytea[]) AS x (widx, rev, entry)
    JOIN done d ON d.idx = x.widx AND d.newrev > 0
    ORDER BY d.kind, d.kid, x.rev
)"
        ));
    }
    if alarms {
        let (a, b) = (alarm_at, alarm_at + 1);
        sql.push_str(&format!(
            ", alm AS MATERIALIZED (
    SELECT d.kind, d.kid, d.part, x.due FROM unnest(${a}::bigint[], ${b}::bigint[]) AS x (widx, due)
    JOIN done d ON d.idx = x.widx
), alm_set AS (
    INSERT INTO liege_alarms (kind, id, partition, due_ms)
    SELECT alm.kind, alm.kid, alm.part, alm.due FROM alm WHERE alm.due IS NOT NULL
    ORDER BY alm.kind, alm.kid
    ON CONFLICT (kind, id) DO UPDATE SET partition = excluded.partition, due_ms = excluded.due_ms
), alm_del AS (
    DELETE FROM liege_alarms l USING alm
    WHERE alm.due IS NULL AND l.kind = alm.kind AND l.id = alm.kid
)"
        ));
    }
    if audit {
        sql.push_str(
            ", aud AS (
    INSERT INTO liege_audit (kind, id, partition, epoch, writer_name, writer_incarnation, rev)
    SELECT d.kind, d.kid, d.part, d.wepoch, d.wname, d.winc, d.newrev FROM done d
    WHERE $10::boolean ORDER BY d.idx
    RETURNING seq
)",
        );
    }
    // Status 3 (journal head moved) reports the head instead of the revision.
    let head_on_conflict = if journal {
        "WHEN NOT chk.jok THEN (SELECT coalesce(max(j.rev), 0) FROM liege_journal j
                               WHERE j.kind = chk.kind AND j.id = chk.kid) "
    } else {
        ""
    };
    sql.push_str(&format!(
        "
SELECT chk.idx,
       CASE WHEN NOT chk.fence_ok THEN 1 WHEN NOT chk.jok THEN 3 WHEN d.idx IS NULL THEN 2
            ELSE 0 END,
       CASE {head_on_conflict}WHEN d.idx IS NOT NULL THEN d.newrev
            ELSE coalesce((SELECT c.rev FROM liege_checkpoints c
                           WHERE c.kind = chk.kind AND c.id = chk.kid), 0) END,
       chk.owner, chk.oinc, chk.pepoch
FROM chk LEFT JOIN done d ON d.idx = chk.idx",
    ));
    if !audit {
        // Every variant takes the same ten parameters.
        sql.push_str(" WHERE $10::boolean IS NOT NULL");
    }
    sql
}

/// One round of a batch as parallel column arrays: the n-th write of every key, so writes of
/// one key apply in batch order, one per round.
#[derive(Default)]
pub(super) struct Columns<'a> {
    /// 1-based position of each write in the caller's batch.
    pub(super) idx: Vec<i64>,
    pub(super) partition: Vec<i64>,
    pub(super) epoch: Vec<i64>,
    pub(super) writer_name: Vec<&'a str>,
    pub(super) writer_incarnation: Vec<i64>,
    pub(super) kind: Vec<&'a str>,
    pub(super) id: Vec<&'a str>,
    pub(super) expected_rev: Vec<i64>,
    pub(super) data: Vec<Option<&'a [u8]>>,
    /// The round's dedupe records: idx of their write, then their fields.
    pub(super) dedupe_idx: Vec<i64>,
    pub(super) dedupe_record: Vec<Vec<u8>>,
    pub(super) dedupe_fingerprint: Vec<i64>,
    pub(super) dedupe_reply: Vec<&'a [u8]>,
    pub(super) dedupe_expires: Vec<i64>,
    /// The round's alarm changes: idx of their write and the new due time (`None`: remove).
    pub(super) alarm_idx: Vec<i64>,
    pub(super) alarm_due: Vec<Option<i64>>,
    /// The round's journal appends: idx of each appending write and the head it expects,
    /// then idx, revision and bytes of each entry.
    pub(super) journal_idx: Vec<i64>,
    pub(super) journal_expected: Vec<i64>,
    pub(super) entry_idx: Vec<i64>,
    pub(super) entry_rev: Vec<i64>,
    pub(super) entry_data: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    /// True if a write of the round deletes its key.
    pub(super) fn has_deletes(&self) -> bool {
        self.data.iter().any(Option::is_none)
    }

    /// True if the round carries dedupe records.
    pub(super) fn has_dedupe(&self) -> bool {
        !self.dedupe_idx.is_empty()
    }

    /// True if the round changes alarms.
    pub(super) fn has_alarms(&self) -> bool {
        !self.alarm_idx.is_empty()
    }

    /// True if the round appends to journals.
    pub(super) fn has_journal(&self) -> bool {
        !self.journal_idx.is_empty()
    }

    /// Splits `batch` into rounds: round n holds the n-th write of every key. A batch without
    /// repeated keys (every batch the node's writer forms) is one round.
    pub(super) fn rounds(batch: &'a [CheckpointWrite]) -> StoreResult<Vec<Self>> {
        let too_big = |_| StoreError::Other("write batch too large".into());
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        let mut rounds: Vec<Columns<'a>> = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            let round = seen.entry((&w.key.kind, &w.key.id)).or_insert(0);
            if rounds.len() <= *round {
                rounds.push(Columns::default());
            }
            let c = &mut rounds[*round];
            *round += 1;
            c.idx.push(i64::try_from(i + 1).map_err(too_big)?);
            c.partition.push(i64::from(w.partition.0));
            c.epoch.push(to_db_u64(w.epoch.0));
            c.writer_name.push(&w.writer.name);
            c.writer_incarnation.push(to_db_u64(w.writer.incarnation));
            c.kind.push(&w.key.kind);
            c.id.push(&w.key.id);
            c.expected_rev.push(to_db_u64(w.expected_rev.0));
            c.data.push(w.data.as_deref());
            let alarm = match (w.data.is_none(), w.alarm) {
                (true, _) | (false, AlarmUpdate::Clear) => Some(None),
                (false, AlarmUpdate::Set(due)) => Some(Some(due)),
                (false, AlarmUpdate::Keep) => None,
            };
            if let Some(due) = alarm {
                c.alarm_idx.push(i64::try_from(i + 1).map_err(too_big)?);
                c.alarm_due.push(due);
            }
            if let (Some(_), Some(j)) = (&w.data, &w.journal) {
                let idx = i64::try_from(i + 1).map_err(too_big)?;
                c.journal_idx.push(idx);
                c.journal_expected.push(to_db_u64(j.expected_rev.0));
                for (n, entry) in j.entries.iter().enumerate() {
                    c.entry_idx.push(idx);
                    let rev = crate::store::rules::journal_after(j.expected_rev, n + 1);
                    c.entry_rev.push(to_db_u64(rev.0));
                    c.entry_data.push(entry);
                }
            }
            // One statement may not upsert a row twice: the last record of a signal wins.
            let mut signals = std::collections::HashSet::new();
            for r in w.dedupe.iter().rev() {
                if signals.insert(r.signal) {
                    c.dedupe_idx.push(i64::try_from(i + 1).map_err(too_big)?);
                    c.dedupe_record.push(crate::store::written_record_key(
                        &w.key,
                        r.signal,
                        w.legacy_records,
                    ));
                    c.dedupe_fingerprint.push(to_db_u64(r.fingerprint));
                    c.dedupe_reply.push(&r.reply);
                    c.dedupe_expires.push(r.expires_at_ms);
                }
            }
        }
        Ok(rounds)
    }
}

/// Turns the rows of [`write_sql`] (of every round) into one result per write, in batch order.
pub(super) fn decode(
    batch: &[CheckpointWrite],
    rows: &[Row],
) -> StoreResult<Vec<Result<Rev, WriteError>>> {
    let mut out: Vec<Option<Result<Rev, WriteError>>> = vec![None; batch.len()];
    for row in rows {
        let idx: i64 = get(row, 0)?;
        let status: i32 = get(row, 1)?;
        let rev: i64 = get(row, 2)?;
        let slot = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| out.get_mut(i).zip(batch.get(i)))
            .ok_or_else(|| StoreError::Other(format!("the write statement returned row {idx}")))?;
        let (slot, write) = slot;
        *slot = Some(match status {
            0 => Ok(Rev(from_db_u64(rev))),
            1 => {
                let owner_name: Option<String> = get(row, 3)?;
                let owner_inc: Option<i64> = get(row, 4)?;
                let epoch: i64 = get(row, 5)?;
                Err(WriteError::Fenced {
                    partition: write.partition,
                    owner: owner_name
                        .zip(owner_inc)
                        .map(|(n, i)| NodeId::new(n, from_db_u64(i))),
                    epoch: Epoch(from_db_u64(epoch)),
                })
            }
            3 => Err(WriteError::JournalConflict {
                expected: write.journal.as_ref().map_or(Rev(0), |j| j.expected_rev),
                actual: Rev(from_db_u64(rev)),
            }),
            _ => Err(WriteError::Conflict {
                expected: write.expected_rev,
                actual: Rev(from_db_u64(rev)),
            }),
        });
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| StoreError::Other(format!("no outcome for write {i}"))))
        .collect()
}

/// Reads column `i` of a row, reporting a type mismatch as a store failure.
pub(super) fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r Row,
    i: usize,
) -> StoreResult<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Other(format!("decoding column {i}: {e}")))
}

/// Decodes one audit row: `seq, kind, id, partition, epoch, writer_name, writer_inc, rev`.
pub(super) fn audit_record(row: &Row) -> StoreResult<crate::store::AuditRecord> {
    let kind: String = get(row, 1)?;
    let id: String = get(row, 2)?;
    let partition: i64 = get(row, 3)?;
    let writer_name: String = get(row, 5)?;
    Ok(crate::store::AuditRecord {
        seq: from_db_u64(get(row, 0)?),
        key: AgentKey {
            kind: Arc::from(kind),
            id: Arc::from(id),
        },
        partition: PartitionId(partition_from_db(partition)?),
        epoch: Epoch(from_db_u64(get(row, 4)?)),
        writer: NodeId::new(writer_name, from_db_u64(get(row, 6)?)),
        rev: Rev(from_db_u64(get(row, 7)?)),
    })
}

/// A partition id read from the database.
pub(super) fn partition_from_db(id: i64) -> StoreResult<u32> {
    u32::try_from(id).map_err(|_| StoreError::Other(format!("partition id {id} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> CheckpointWrite {
        CheckpointWrite {
            key: AgentKey::new("counter", id).expect("valid key"),
            partition: PartitionId(0),
            epoch: Epoch(1),
            writer: NodeId::new("a", 1),
            expected_rev: Rev(0),
            data: None,
            dedupe: Vec::new(),
            alarm: AlarmUpdate::Keep,
            journal: None,
            legacy_records: false,
        }
    }

    #[test]
    fn repeated_keys_go_to_later_rounds_in_batch_order() {
        let batch = [w("x"), w("y"), w("x"), w("x"), w("z"), w("y")];
        let rounds = Columns::rounds(&batch).expect("small batch");
        let idx: Vec<Vec<i64>> = rounds.iter().map(|r| r.idx.clone()).collect();
        assert_eq!(idx, vec![vec![1, 2, 5], vec![3, 6], vec![4]]);
        let ids: Vec<Vec<&str>> = rounds.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, vec![vec!["x", "y", "z"], vec!["x", "y"], vec!["x"]]);
    }

    #[test]
    fn a_batch_without_repeats_is_one_round() {
        let batch = [w("a"), w("b"), w("c")];
        let rounds = Columns::rounds(&batch).expect("small batch");
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].idx, vec![1, 2, 3]);
    }
}
