//! Encoding a batch of fenced writes as column arrays for `liege_write`, and decoding the
//! per-write outcomes it returns.
//!
//! The whole batch is one call of one prepared statement: one round trip and one
//! transaction, however many writes it holds.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Row;

use super::{from_db_u64, to_db_u64};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::{CheckpointWrite, StoreError, StoreResult, WriteError};

/// The statement applying a batch.
pub(super) const WRITE_SQL: &str = "SELECT o_idx, o_status, o_rev, o_owner, o_inc, o_epoch \
     FROM liege_write($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// A batch as parallel column arrays, sorted into rounds (see `liege_write`).
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
    /// Inclusive 1-based end of each round in the arrays. Round n holds the n-th write of
    /// every key, so writes of one key apply in batch order.
    pub(super) round_ends: Vec<i32>,
}

impl<'a> Columns<'a> {
    /// Splits `batch` into columns.
    pub(super) fn new(batch: &'a [CheckpointWrite]) -> StoreResult<Self> {
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        let mut order: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let round = seen.entry((&w.key.kind, &w.key.id)).or_insert(0);
                *round += 1;
                (*round, i)
            })
            .collect();
        order.sort_unstable();
        let too_big = |_| StoreError::Other("write batch too large".into());
        let mut c = Columns::default();
        for (n, &(round, i)) in order.iter().enumerate() {
            if order.get(n + 1).is_none_or(|next| next.0 != round) {
                c.round_ends.push(i32::try_from(n + 1).map_err(too_big)?);
            }
            let w = &batch[i];
            c.idx.push(i64::try_from(i + 1).map_err(too_big)?);
            c.partition.push(i64::from(w.partition.0));
            c.epoch.push(to_db_u64(w.epoch.0));
            c.writer_name.push(&w.writer.name);
            c.writer_incarnation.push(to_db_u64(w.writer.incarnation));
            c.kind.push(&w.key.kind);
            c.id.push(&w.key.id);
            c.expected_rev.push(to_db_u64(w.expected_rev.0));
            c.data.push(w.data.as_deref());
        }
        Ok(c)
    }
}

/// Turns the rows of `liege_write` into one result per write, in batch order.
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
            .ok_or_else(|| StoreError::Other(format!("liege_write returned row {idx}")))?;
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
        }
    }

    #[test]
    fn repeated_keys_go_to_later_rounds_in_batch_order() {
        let batch = [w("x"), w("y"), w("x"), w("x"), w("z"), w("y")];
        let c = Columns::new(&batch).expect("small batch");
        assert_eq!(c.idx, vec![1, 2, 5, 3, 6, 4]);
        assert_eq!(c.id, vec!["x", "y", "z", "x", "y", "x"]);
        assert_eq!(c.round_ends, vec![3, 5, 6]);
    }

    #[test]
    fn a_batch_without_repeats_is_one_round() {
        let batch = [w("a"), w("b"), w("c")];
        let c = Columns::new(&batch).expect("small batch");
        assert_eq!(c.idx, vec![1, 2, 3]);
        assert_eq!(c.round_ends, vec![3]);
    }
}
