//! Embedded, versioned schema migrations.
//!
//! Every store applies the missing migrations when it connects, inside one transaction that
//! first takes a transaction-scoped advisory lock: nodes starting at the same moment queue on
//! the lock, and each one after the first finds the schema current and does nothing.

use std::time::Duration;

use tokio_postgres::Client;

use super::pool::map_error;
use crate::store::{StoreError, StoreResult};

/// The migrations, in order: `(version, sql)`. Never edit a released one; add a new version.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_placement.sql")),
    (3, include_str!("migrations/0003_claim_clock.sql")),
    (4, include_str!("migrations/0004_directory_version.sql")),
    (5, include_str!("migrations/0005_dedupe.sql")),
    (6, include_str!("migrations/0006_operator_settings.sql")),
    (7, include_str!("migrations/0007_alarms.sql")),
    (8, include_str!("migrations/0008_journal.sql")),
    (9, include_str!("migrations/0009_compat.sql")),
];

/// Key of the advisory lock serializing migrations (an arbitrary constant: "liege" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c_69_65_67_65;

/// Schema version this build expects.
pub(super) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Brings the database to [`latest_version`]. Refuses a database migrated by a newer build.
pub(super) async fn migrate(client: &mut Client, timeout: Duration) -> StoreResult<i32> {
    let tx = client.transaction().await.map_err(|e| map_error(&e))?;
    // Waiting for another node's migration must not hit the short per-statement timeout.
    let setup = format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = 0;
         SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
         CREATE TABLE IF NOT EXISTS liege_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        timeout.as_millis()
    );
    tx.batch_execute(&setup).await.map_err(|e| map_error(&e))?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM liege_schema_version",
            &[],
        )
        .await
        .map_err(|e| map_error(&e))?;
    let current: i32 = row
        .try_get(0)
        .map_err(|e| StoreError::Other(format!("schema version: {e}")))?;
    if current > latest_version() {
        return Err(StoreError::Mismatch(format!(
            "database schema is version {current}, newer than this build's {}",
            latest_version()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying postgres migration");
        tx.batch_execute(sql).await.map_err(|e| map_error(&e))?;
        tx.execute(
            "INSERT INTO liege_schema_version (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(|e| map_error(&e))?;
    }
    tx.commit().await.map_err(|e| map_error(&e))?;
    Ok(latest_version())
}
