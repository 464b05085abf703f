//! Membership (node leases), run on the members connection against the members file.
//!
//! Nothing else writes that file, so a renewal waits at most for another process's join,
//! renewal, leave or claim snapshot — each a few microseconds of lock — and never for a
//! checkpoint batch. Every mutation is one `BEGIN IMMEDIATE` transaction that reads the clock
//! after taking the lock, so lease decisions and commit order agree across processes.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::schema::{from_sql_u64, to_sql_u64, wall_clock, SqlResultExt};
use crate::core::ids::NodeId;
use crate::store::rules::{self, LeaseState};
use crate::store::{
    Lease, Membership, NodeLease, NodeRecord, OperatorSetting, Settings, StoreError, StoreResult,
    StoreTime,
};

/// Every lease as of one instant, for a claim: taken under the members file's write lock, so
/// no renewal or join is half-way between its clock reading and its commit.
#[derive(Clone, Debug)]
pub(super) struct LeaseSnapshot {
    /// The store clock, read after the lock was taken.
    pub(super) now: StoreTime,
    /// Lease columns per node name.
    pub(super) leases: HashMap<String, LeaseState>,
}

impl LeaseSnapshot {
    /// The lease of the row for `name`, if there is one.
    pub(super) fn lease(&self, name: &str) -> Option<LeaseState> {
        self.leases.get(name).copied()
    }
}

fn immediate(conn: &mut Connection) -> StoreResult<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()
}

fn lease_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseState> {
    Ok(LeaseState {
        incarnation: from_sql_u64(r.get(0)?),
        lease_expires_at: r.get(1)?,
        left: r.get(2)?,
    })
}

/// The lease columns of the row for `name`.
fn lease_state(tx: &Transaction<'_>, name: &str) -> StoreResult<Option<LeaseState>> {
    tx.prepare_cached("SELECT incarnation, lease_expires_at, has_left FROM nodes WHERE name = ?1")
        .sql()?
        .query_row([name], lease_columns)
        .optional()
        .sql()
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
         (name, incarnation, region, cluster_addr, http_addr, lease_expires_at, has_left, \
          compat) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
    )
    .sql()?
    .execute(rusqlite::params![
        &*node.id.name,
        to_sql_u64(node.id.incarnation),
        node.region,
        node.cluster_addr,
        node.http_addr,
        expires_at,
        node.compat
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

pub(super) fn settings(conn: &mut Connection) -> StoreResult<Settings> {
    let mut stmt = conn
        .prepare_cached("SELECT name FROM operator_settings")
        .sql()?;
    let keys = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .sql()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .sql()?;
    Ok(OperatorSetting::settings_from_keys(keys))
}

pub(super) fn set_setting(conn: &mut Connection, key: &str, on: bool) -> StoreResult<()> {
    let tx = immediate(conn)?;
    let sql = if on {
        "INSERT INTO operator_settings (name) VALUES (?1) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM operator_settings WHERE name = ?1"
    };
    tx.prepare_cached(sql).sql()?.execute([key]).sql()?;
    tx.commit().sql()
}

pub(super) fn nodes(conn: &mut Connection) -> StoreResult<Membership> {
    let tx = conn.transaction().sql()?;
    let now = wall_clock()?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT name, incarnation, region, cluster_addr, http_addr, lease_expires_at, \
             has_left, compat FROM nodes ORDER BY name",
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
                    compat: r.get(7)?,
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

/// Runs `change` while holding the members file's write lock, if no node holds a live lease:
/// no join can commit meanwhile.
pub(super) fn while_no_node_is_live(
    conn: &mut Connection,
    change: impl FnOnce() -> StoreResult<()>,
) -> StoreResult<()> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    let live: Vec<String> = tx
        .prepare_cached("SELECT name FROM nodes WHERE lease_expires_at > ?1 ORDER BY name")
        .sql()?
        .query_map([now], |r| r.get(0))
        .sql()?
        .collect::<rusqlite::Result<_>>()
        .sql()?;
    rules::placement_change_allowed(&live)?;
    change()?;
    tx.commit().sql()
}

/// Reads every lease and the clock under the members file's write lock, then lets go (the
/// transaction writes nothing, so ending it costs no fsync). See [`LeaseSnapshot`].
pub(super) fn lease_snapshot(conn: &mut Connection) -> StoreResult<LeaseSnapshot> {
    let tx = immediate(conn)?;
    let now = wall_clock()?;
    let leases = tx
        .prepare_cached("SELECT name, incarnation, lease_expires_at, has_left FROM nodes")
        .sql()?
        .query_map([], |r| {
            let name: String = r.get(0)?;
            let lease = LeaseState {
                incarnation: from_sql_u64(r.get(1)?),
                lease_expires_at: r.get(2)?,
                left: r.get(3)?,
            };
            Ok((name, lease))
        })
        .sql()?
        .collect::<rusqlite::Result<HashMap<_, _>>>()
        .sql()?;
    tx.commit().sql()?;
    Ok(LeaseSnapshot { now, leases })
}
