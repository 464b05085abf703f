//! Embedded, versioned migrations of the two files, applied at open.
//!
//! Each file tracks its own `PRAGMA user_version` and is migrated inside one `BEGIN
//! IMMEDIATE` transaction on that file, so concurrent openers serialize and only the first
//! applies anything. The members file is migrated first; the main file's step to version 2
//! then copies the leases of the old single-file layout into it (see [`copy_leases`]).

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::schema::{self, SqlResultExt};
use crate::store::{StoreError, StoreResult};

/// Migrations of the main file; migration `i` brings `user_version` from `i` to `i + 1`.
/// Never edit a shipped one: append a new file.
const MAIN: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_members_file.sql"),
    include_str!("migrations/0003_placement.sql"),
    include_str!("migrations/0004_dedupe.sql"),
    include_str!("migrations/0005_alarms.sql"),
    include_str!("migrations/0006_journal.sql"),
];

/// Migrations of the members file, numbered the same way.
const MEMBERS: &[&str] = &[
    include_str!("migrations/members/0001_nodes.sql"),
    include_str!("migrations/members/0002_operator_settings.sql"),
    include_str!("migrations/members/0003_compat.sql"),
];

/// The schema version of the main file this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MAIN.len() as u32;

/// The schema version of the members file this build writes (`PRAGMA user_version`).
pub const MEMBERS_SCHEMA_VERSION: u32 = MEMBERS.len() as u32;

/// The main-file version whose `nodes` table moved to the members file.
const SINGLE_FILE_VERSION: u32 = 1;

/// Brings the members file to [`MEMBERS_SCHEMA_VERSION`].
pub(super) fn members_file(conn: &mut Connection) -> StoreResult<()> {
    migrate(conn, "members", MEMBERS, |_, _| Ok(()))
}

/// Brings the main file to [`SCHEMA_VERSION`]; `members_path` must already be migrated.
pub(super) fn main_file(conn: &mut Connection, members_path: &Path) -> StoreResult<()> {
    migrate(conn, "main", MAIN, |tx, from| {
        if from == SINGLE_FILE_VERSION {
            copy_leases(tx, members_path)?;
        }
        Ok(())
    })
}

/// Applies `migrations[user_version..]` in one write transaction. `before` runs first, with
/// the transaction and the version found, while the file's write lock is held.
fn migrate(
    conn: &mut Connection,
    file: &str,
    migrations: &[&str],
    before: impl FnOnce(&Transaction<'_>, u32) -> StoreResult<()>,
) -> StoreResult<()> {
    let target = migrations.len() as u32;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    let version: u32 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .sql()?;
    if version > target {
        return Err(StoreError::Other(format!(
            "{file} database schema version {version} is newer than this build's {target}"
        )));
    }
    if version == target {
        return Ok(());
    }
    before(&tx, version)?;
    for sql in &migrations[version as usize..] {
        tx.execute_batch(sql).sql()?;
    }
    tx.pragma_update(None, "user_version", target).sql()?;
    tx.commit().sql()?;
    tracing::info!(file, from = version, to = target, "migrated sqlite store");
    Ok(())
}

/// Copies every lease of a version-1 main file (whose write lock `main` holds) into the
/// members file, in one transaction there, before migration 2 drops the old table.
///
/// Holding the main lock keeps processes of the previous version from renewing meanwhile, so
/// the copy is exact: nodes that are live stay live for their peers until they expire, and
/// nobody claims their partitions early. Those processes fail every later renewal (their
/// table is gone), fence themselves before their copied lease ends, and cannot reopen the
/// file (its version is newer than theirs). If this process dies between the two commits,
/// the next opener copies again: a row of the same incarnation is overwritten (only that
/// process, through the main file, changed it); a row of another incarnation — a new node
/// that took the name meanwhile — is kept.
fn copy_leases(main: &Transaction<'_>, members_path: &Path) -> StoreResult<()> {
    type Row = (String, i64, String, String, String, i64, bool);
    let rows = main
        .prepare(
            "SELECT name, incarnation, region, cluster_addr, http_addr, lease_expires_at, \
             has_left FROM nodes",
        )
        .sql()?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .sql()?
        .collect::<rusqlite::Result<Vec<Row>>>()
        .sql()?;
    let mut members = schema::connect(members_path)?;
    let tx = members
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    {
        let mut upsert = tx
            .prepare(
                "INSERT INTO nodes (name, incarnation, region, cluster_addr, http_addr, \
                 lease_expires_at, has_left) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (name) DO UPDATE SET region = excluded.region, \
                 cluster_addr = excluded.cluster_addr, http_addr = excluded.http_addr, \
                 lease_expires_at = excluded.lease_expires_at, has_left = excluded.has_left \
                 WHERE nodes.incarnation = excluded.incarnation",
            )
            .sql()?;
        for (name, inc, region, cluster, http, expires, left) in &rows {
            upsert
                .execute(rusqlite::params![
                    name, inc, region, cluster, http, expires, left
                ])
                .sql()?;
        }
    }
    tx.commit().sql()?;
    tracing::info!(
        leases = rows.len(),
        "copied leases to the sqlite members file"
    );
    Ok(())
}
