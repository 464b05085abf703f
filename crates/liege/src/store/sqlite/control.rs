//! Cluster meta and directory operations, run on the control connection (main file).
//!
//! Every mutation is one `BEGIN IMMEDIATE` transaction, so claims, releases and fenced
//! checkpoint batches (from any process) serialize on the main file's write lock.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::members::LeaseSnapshot;
use super::schema::{from_sql_u64, to_sql_u64, wall_clock, SqlResultExt};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::rules::{self, ClaimDecision};
use crate::store::{ClusterMeta, Directory, PartitionRow, StoreError, StoreResult};

fn immediate(conn: &mut Connection) -> StoreResult<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()
}

/// Reads an owner from its two nullable columns.
fn owner(name: Option<String>, incarnation: Option<i64>) -> Option<NodeId> {
    match (name, incarnation) {
        (Some(name), Some(inc)) => Some(NodeId::new(name, from_sql_u64(inc))),
        _ => None,
    }
}

/// The stored cluster facts, if the cluster exists.
pub(super) fn cluster(conn: &mut Connection) -> StoreResult<Option<ClusterMeta>> {
    read_meta(&conn.transaction().sql()?)
}

fn read_meta(tx: &Transaction<'_>) -> StoreResult<Option<ClusterMeta>> {
    tx.query_row(
        "SELECT partitions, secret_salt, secret_verifier, placement FROM cluster_meta \
         WHERE id = 1",
        [],
        |r| {
            Ok(ClusterMeta {
                partitions: r.get(0)?,
                secret_salt: r.get(1)?,
                secret_verifier: r.get(2)?,
                placement: r.get(3)?,
            })
        },
    )
    .optional()
    .sql()
}

pub(super) fn init_cluster(
    conn: &mut Connection,
    proposed: &ClusterMeta,
) -> StoreResult<ClusterMeta> {
    let tx = immediate(conn)?;
    if let Some(mut meta) = read_meta(&tx)? {
        if meta.placement.is_none() && proposed.placement.is_some() {
            tx.execute(
                "UPDATE cluster_meta SET placement = ?1 WHERE id = 1",
                [&proposed.placement],
            )
            .sql()?;
            tx.commit().sql()?;
            meta.placement = proposed.placement.clone();
        }
        return Ok(meta);
    }
    tx.execute(
        "INSERT INTO cluster_meta (id, partitions, secret_salt, secret_verifier, placement) \
         VALUES (1, ?1, ?2, ?3, ?4)",
        rusqlite::params![
            proposed.partitions,
            proposed.secret_salt,
            proposed.secret_verifier,
            proposed.placement
        ],
    )
    .sql()?;
    {
        let mut insert = tx
            .prepare_cached("INSERT INTO partitions (id, owner_name, owner_incarnation, epoch) VALUES (?1, NULL, NULL, 0)")
            .sql()?;
        for id in 0..proposed.partitions {
            insert.execute([id]).sql()?;
        }
    }
    tx.commit().sql()?;
    Ok(proposed.clone())
}

/// Sets the placement in the main file (the caller holds the members file's write lock and
/// checked that no node is live).
pub(super) fn set_placement(conn: &mut Connection, placement: &str) -> StoreResult<()> {
    let tx = immediate(conn)?;
    let changed = tx
        .execute(
            "UPDATE cluster_meta SET placement = ?1 WHERE id = 1",
            [placement],
        )
        .sql()?;
    if changed == 0 {
        return Err(StoreError::Mismatch(
            "there is no cluster in this store".into(),
        ));
    }
    tx.commit().sql()
}

pub(super) fn directory(conn: &mut Connection) -> StoreResult<Directory> {
    let tx = conn.transaction().sql()?;
    let now = wall_clock()?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, owner_name, owner_incarnation, epoch FROM partitions ORDER BY id",
        )
        .sql()?;
    let partitions = stmt
        .query_map([], |r| {
            Ok(PartitionRow {
                id: PartitionId(r.get(0)?),
                owner: owner(r.get(1)?, r.get(2)?),
                epoch: Epoch(from_sql_u64(r.get(3)?)),
            })
        })
        .sql()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .sql()?;
    Ok(Directory { now, partitions })
}

/// A directory row as a claim compares it: owner and epoch (raw).
type Seen = (Option<NodeId>, u64);

/// Reads the rows of `partitions` (a WAL snapshot, no write lock): the first step of a claim,
/// taken before the lease snapshot. See [`claim`].
pub(super) fn seen(
    conn: &mut Connection,
    partitions: &[PartitionId],
) -> StoreResult<HashMap<PartitionId, Seen>> {
    let tx = conn.transaction().sql()?;
    let mut seen = HashMap::with_capacity(partitions.len());
    for &p in partitions {
        if let Some(row) = partition_row(&tx, p)? {
            seen.insert(p, row);
        }
    }
    Ok(seen)
}

fn partition_row(tx: &Transaction<'_>, p: PartitionId) -> StoreResult<Option<Seen>> {
    tx.prepare_cached("SELECT owner_name, owner_incarnation, epoch FROM partitions WHERE id = ?1")
        .sql()?
        .query_row([p.0], |r| {
            Ok((owner(r.get(0)?, r.get(1)?), from_sql_u64(r.get(2)?)))
        })
        .optional()
        .sql()
}

/// The last step of a claim, in one `BEGIN IMMEDIATE` transaction on the main file.
///
/// `seen` holds the rows read before `leases` was taken, `leases` every lease as of
/// `leases.now`. A partition is taken when it is unowned now, or when it still has the owner
/// and epoch it had in `seen` and [`rules::claim_decision`] says so for that owner's lease
/// *as of the snapshot*; any other change since `seen` skips it (the caller retries later).
/// The module documentation of [`super`] argues why deciding on that earlier read is safe.
pub(super) fn claim(
    conn: &mut Connection,
    node: &NodeId,
    partitions: &[PartitionId],
    seen: &HashMap<PartitionId, Seen>,
    leases: &LeaseSnapshot,
) -> StoreResult<Vec<(PartitionId, Epoch)>> {
    if !rules::may_renew(leases.lease(&node.name), node, leases.now) {
        return Err(StoreError::LeaseLost { node: node.clone() });
    }
    let tx = immediate(conn)?;
    let mut claimed = Vec::new();
    for &p in partitions {
        let Some((current, epoch)) = partition_row(&tx, p)? else {
            continue;
        };
        let decision = match &current {
            None => ClaimDecision::Take,
            Some(o) if seen.get(&p) == Some(&(current.clone(), epoch)) => {
                rules::claim_decision(node, Some(o), leases.lease(&o.name), leases.now)
            }
            Some(_) => ClaimDecision::Skip,
        };
        if decision == ClaimDecision::Take {
            let epoch = Epoch(epoch + 1);
            tx.prepare_cached(
                "UPDATE partitions SET owner_name = ?1, owner_incarnation = ?2, epoch = ?3 \
                 WHERE id = ?4",
            )
            .sql()?
            .execute(rusqlite::params![
                &*node.name,
                to_sql_u64(node.incarnation),
                to_sql_u64(epoch.0),
                p.0
            ])
            .sql()?;
            claimed.push((p, epoch));
        }
    }
    tx.commit().sql()?;
    Ok(claimed)
}

pub(super) fn release(
    conn: &mut Connection,
    node: &NodeId,
    partitions: &[(PartitionId, Epoch)],
) -> StoreResult<Vec<PartitionId>> {
    let tx = immediate(conn)?;
    let mut released = Vec::new();
    for &(p, epoch) in partitions {
        let changed = tx
            .prepare_cached(
                "UPDATE partitions SET owner_name = NULL, owner_incarnation = NULL \
                 WHERE id = ?1 AND owner_name = ?2 AND owner_incarnation = ?3 AND epoch = ?4",
            )
            .sql()?
            .execute(rusqlite::params![
                p.0,
                &*node.name,
                to_sql_u64(node.incarnation),
                to_sql_u64(epoch.0)
            ])
            .sql()?;
        if changed > 0 {
            released.push(p);
        }
    }
    tx.commit().sql()?;
    Ok(released)
}
