//! Cluster meta, membership and directory operations, run on the control connection.
//!
//! Every mutation is one `BEGIN IMMEDIATE` transaction that reads the clock after taking the
//! write lock, so lease decisions and commit order agree across processes.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::schema::{from_sql_u64, to_sql_u64, wall_clock, SqlResultExt};
use crate::core::ids::{Epoch, NodeId, PartitionId};
use crate::store::rules::{self, ClaimDecision, LeaseState};
use crate::store::{
    ClusterMeta, Directory, Lease, Membership, NodeLease, NodeRecord, PartitionRow, StoreError,
    StoreResult,
};

fn immediate(conn: &mut Connection) -> StoreResult<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()
}

/// The lease columns of the row for `name`.
fn lease_state(tx: &Transaction<'_>, name: &str) -> StoreResult<Option<LeaseState>> {
    tx.prepare_cached("SELECT incarnation, lease_expires_at, has_left FROM nodes WHERE name = ?1")
        .sql()?
        .query_row([name], |r| {
            Ok(LeaseState {
                incarnation: from_sql_u64(r.get(0)?),
                lease_expires_at: r.get(1)?,
                left: r.get(2)?,
            })
        })
        .optional()
        .sql()
}

/// Reads an owner from its two nullable columns.
fn owner(name: Option<String>, incarnation: Option<i64>) -> Option<NodeId> {
    match (name, incarnation) {
        (Some(name), Some(inc)) => Some(NodeId::new(name, from_sql_u64(inc))),
        _ => None,
    }
}

pub(super) fn init_cluster(
    conn: &mut Connection,
    proposed: &ClusterMeta,
) -> StoreResult<ClusterMeta> {
    let tx = immediate(conn)?;
    let stored = tx
        .query_row(
            "SELECT partitions, secret_salt, secret_verifier FROM cluster_meta WHERE id = 1",
            [],
            |r| {
                Ok(ClusterMeta {
                    partitions: r.get(0)?,
                    secret_salt: r.get(1)?,
                    secret_verifier: r.get(2)?,
                })
            },
        )
        .optional()
        .sql()?;
    if let Some(meta) = stored {
        return Ok(meta);
    }
    tx.execute(
        "INSERT INTO cluster_meta (id, partitions, secret_salt, secret_verifier) \
         VALUES (1, ?1, ?2, ?3)",
        rusqlite::params![
            proposed.partitions,
            proposed.secret_salt,
            proposed.secret_verifier
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

pub(super) fn join(conn: &mut Connection, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    rules::may_join(lease_state(&tx, &node.id.name)?, node.id.incarnation, now).map_err(
        |remaining_ms| StoreError::NameInUse {
            name: node.id.name.to_string(),
            remaining_ms,
        },
    )?;
    let expires_at = rules::lease_end(now, ttl_ms);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO nodes \
         (name, incarnation, region, cluster_addr, http_addr, lease_expires_at, has_left) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
    )
    .sql()?
    .execute(rusqlite::params![
        &*node.id.name,
        to_sql_u64(node.id.incarnation),
        node.region,
        node.cluster_addr,
        node.http_addr,
        expires_at
    ])
    .sql()?;
    tx.commit().sql()?;
    Ok(Lease { now, expires_at })
}

pub(super) fn renew(conn: &mut Connection, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    if !rules::may_renew(lease_state(&tx, &node.name)?, node, now) {
        return Err(StoreError::LeaseLost { node: node.clone() });
    }
    let expires_at = rules::lease_end(now, ttl_ms);
    tx.prepare_cached("UPDATE nodes SET lease_expires_at = ?1 WHERE name = ?2")
        .sql()?
        .execute(rusqlite::params![expires_at, &*node.name])
        .sql()?;
    tx.commit().sql()?;
    Ok(Lease { now, expires_at })
}

pub(super) fn leave(conn: &mut Connection, node: &NodeId) -> StoreResult<()> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    tx.prepare_cached(
        "UPDATE nodes SET lease_expires_at = MIN(lease_expires_at, ?1), has_left = 1 \
         WHERE name = ?2 AND incarnation = ?3",
    )
    .sql()?
    .execute(rusqlite::params![
        now,
        &*node.name,
        to_sql_u64(node.incarnation)
    ])
    .sql()?;
    tx.commit().sql()
}

pub(super) fn nodes(conn: &mut Connection) -> StoreResult<Membership> {
    let tx = conn.transaction().sql()?;
    let now = wall_clock()?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT name, incarnation, region, cluster_addr, http_addr, lease_expires_at, \
             has_left FROM nodes ORDER BY name",
        )
        .sql()?;
    let nodes = stmt
        .query_map([], |r| {
            Ok(NodeLease {
                record: NodeRecord {
                    id: NodeId::new(r.get::<_, String>(0)?, from_sql_u64(r.get(1)?)),
                    region: r.get(2)?,
                    cluster_addr: r.get(3)?,
                    http_addr: r.get(4)?,
                },
                lease_expires_at: r.get(5)?,
                left: r.get(6)?,
            })
        })
        .sql()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .sql()?;
    Ok(Membership { now, nodes })
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

pub(super) fn claim(
    conn: &mut Connection,
    node: &NodeId,
    partitions: &[PartitionId],
) -> StoreResult<Vec<(PartitionId, Epoch)>> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    if !rules::may_renew(lease_state(&tx, &node.name)?, node, now) {
        return Err(StoreError::LeaseLost { node: node.clone() });
    }
    let mut claimed = Vec::new();
    for &p in partitions {
        let row = tx
            .prepare_cached(
                "SELECT owner_name, owner_incarnation, epoch FROM partitions WHERE id = ?1",
            )
            .sql()?
            .query_row([p.0], |r| {
                Ok((owner(r.get(0)?, r.get(1)?), from_sql_u64(r.get(2)?)))
            })
            .optional()
            .sql()?;
        let Some((current, epoch)) = row else {
            continue;
        };
        let owner_lease = match &current {
            Some(o) => lease_state(&tx, &o.name)?,
            None => None,
        };
        if rules::claim_decision(node, current.as_ref(), owner_lease, now) == ClaimDecision::Take {
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
