//! PostgreSQL store: the backend for real clusters.
//!
//! - **Clock**: every lease time is the server's `clock_timestamp()` in Unix milliseconds
//!   (`liege_now_ms()`), read inside the statement that uses it.
//! - **One round trip per operation**: each operation is one prepared statement, most of them
//!   calling a PL/pgSQL function from the embedded migrations, so each is one transaction.
//!   A batch of checkpoint writes is one statement per round with column arrays
//!   (`batch::write_sql`).
//! - **Fencing**: a write batch holds `FOR SHARE` locks on its partitions' directory rows until
//!   commit; a claim takes `FOR UPDATE` on them before deciding. See [`PostgresStore`].
//! - **Push**: `LISTEN liege_changes` on a dedicated connection feeds [`Store::watch`](super::Store::watch).
//! - **Outages**: a bounded pool, a server-side `statement_timeout` and a client-side
//!   deadline per operation; an unreachable server gives [`StoreError::Unavailable`] within
//!   about [`PostgresOptions::op_timeout`], and broken connections are replaced on next use.

mod batch;
mod control;
mod listen;
mod pool;
mod schema;
pub mod tls;

use crate::error::ConfigError;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{SharedStore, StoreChange, StoreError, StoreOptions, StoreResult};
use pool::Pool;

/// How many change notifications a slow watcher may fall behind before it sees `Lagged`.
const WATCH_CAPACITY: usize = 256;

/// Connects to PostgreSQL with default [`PostgresOptions`], migrates, and returns the store.
pub async fn open(url: &str, options: StoreOptions) -> StoreResult<SharedStore> {
    let options = PostgresOptions {
        store: options,
        ..PostgresOptions::default()
    };
    Ok(Arc::new(PostgresStore::connect(url, options).await?))
}

/// Tuning of the PostgreSQL backend.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Options common to every backend (auditing).
    pub store: StoreOptions,
    /// Most connections open at once for reads and writes (the control pool has up to 3
    /// more for leases and the directory, and the listener one). Bounded so a node under load
    /// queues instead of exhausting the server's `max_connections`, and small so a restarted
    /// server is not asked to start many backends at once (see `docs/BENCHMARKS.md`, "Fewer
    /// connections per node"). The writer keeps up to half of them busy, the loader two.
    pub pool_size: usize,
    /// Server-side `statement_timeout`: the server abandons (and rolls back) a statement that
    /// runs longer, so a stuck operation never holds locks for long.
    pub statement_timeout: Duration,
    /// Client-side deadline of one whole operation (pool wait, connect, round trip). MUST be
    /// well under the lease TTL so a node learns of an outage while its lease still runs; an
    /// operation past it returns [`StoreError::Unavailable`] (a write's outcome is unknown).
    pub op_timeout: Duration,
    /// Deadline of opening one connection.
    pub connect_timeout: Duration,
    /// Deadline of the schema migration at connect, which may wait for another node's.
    pub migrate_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            store: StoreOptions::default(),
            pool_size: 4,
            statement_timeout: Duration::from_millis(500),
            op_timeout: Duration::from_millis(750),
            connect_timeout: Duration::from_millis(500),
            migrate_timeout: Duration::from_secs(30),
        }
    }
}

impl PostgresOptions {
    /// Generous timeouts for loaded test machines (seconds instead of hundreds of ms).
    pub fn for_tests() -> Self {
        Self {
            statement_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(3),
            ..Self::default()
        }
    }

    /// Checks the options make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_size == 0 {
            return Err(ConfigError::new("pool_size", "must be at least 1"));
        }
        if self.statement_timeout.is_zero() || self.op_timeout.is_zero() {
            return Err(ConfigError::new(
                "statement_timeout, op_timeout",
                "must be positive",
            ));
        }
        if self.connect_timeout.is_zero() || self.migrate_timeout.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout, migrate_timeout",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// A [`Store`](super::Store) in a PostgreSQL database.
///
/// # Why a stale write cannot commit after a claim
/// A write batch's first step is a locking read, `SELECT .. FOR SHARE`, of the directory rows
/// of every partition in the round; it keeps those locks until the batch commits and, under
/// READ COMMITTED, returns the latest committed version of each row, against which owner and
/// epoch are compared. `liege_claim` takes
/// `SELECT .. FOR UPDATE` on the rows it may claim and only then decides and bumps the
/// epoch. The two lock modes conflict, so for one partition either the whole write batch
/// commits before the claim reads the row, or the claim commits first and the batch, once it
/// gets its lock, reads the new owner and epoch and is fenced. Locks are taken in partition id
/// order by both, so they cannot deadlock against each other.
pub struct PostgresStore {
    /// Checkpoint reads and writes, the audit, cluster creation.
    pool: Pool,
    /// Leases, membership, the directory, claims and releases: never queued behind client
    /// traffic, so a flood of reads or writes cannot starve a renewal.
    control: Pool,
    options: PostgresOptions,
    changes: broadcast::Sender<StoreChange>,
    /// True while the listener's `LISTEN` is in effect.
    listening: watch::Receiver<bool>,
    /// Stops the listener when the store is dropped.
    _listener: DropGuard,
}

/// Connections of the control pool: a renewal, a refresh and a claim can run at once.
const CONTROL_POOL_SIZE: usize = 3;

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db?...`), applies missing
    /// migrations and starts the change listener. Fails with [`StoreError::Unavailable`] if
    /// the server cannot be reached. Must be called inside a Tokio runtime.
    pub async fn connect(url: &str, options: PostgresOptions) -> StoreResult<Self> {
        options
            .validate()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let (url, tls) = tls::split(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Other(format!("bad postgres url: {e}")))?;
        config.ssl_mode(tls.pg_mode());
        let connector = tls.connector()?;
        // Generic plans: every statement is prepared once per connection and planned once,
        // instead of a custom plan per call (which cost more than the rows of a batch). And
        // random reads priced as on SSDs: liege's statements touch a few rows by primary key,
        // and with the default cost the generic plan of a batch's fence scanned all 1,024
        // directory rows per batch.
        let server_options = format!(
            "{} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c plan_cache_mode=force_generic_plan -c random_page_cost=1.1",
            config.get_options().unwrap_or_default(),
            options.statement_timeout.as_millis(),
            options.statement_timeout.as_millis().saturating_mul(4),
        );
        config
            .options(server_options.trim_start())
            .application_name("liege")
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5));
        let pool = Pool::new(
            config.clone(),
            connector.clone(),
            options.pool_size,
            options.connect_timeout,
        );
        {
            let migrating = async {
                let mut conn = pool.get().await?;
                schema::migrate(conn.client_mut()?, options.migrate_timeout).await?;
                conn.mark_healthy();
                Ok(())
            };
            tokio::time::timeout(options.migrate_timeout, migrating)
                .await
                .map_err(|_| StoreError::Unavailable("migration timed out".into()))??;
        }
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        let (listening_tx, listening) = watch::channel(false);
        let cancel = CancellationToken::new();
        tokio::spawn(listen::run(
            config.clone(),
            connector.clone(),
            options.connect_timeout,
            changes.clone(),
            listening_tx,
            cancel.clone(),
        ));
        let control = Pool::new(
            config.clone(),
            connector.clone(),
            CONTROL_POOL_SIZE,
            options.connect_timeout,
        );
        Ok(Self {
            pool,
            control,
            options,
            changes,
            listening,
            _listener: cancel.drop_guard(),
        })
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &PostgresOptions {
        &self.options
    }

    /// Waits until the change listener is connected and listening. Receivers subscribed
    /// after this returns see every change committed afterwards (while the connection lasts;
    /// after a reconnect the listener announces both kinds of change once).
    pub async fn wait_listening(&self) {
        let mut listening = self.listening.clone();
        // Err only if the listener task is gone, which happens only when the store is dropped.
        let _ = listening.wait_for(|up| *up).await;
    }

    /// Runs one operation under the client-side deadline.
    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.options.op_timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from postgres within {:?}",
                self.options.op_timeout
            ))),
        }
    }

    /// [`Self::query`] on the control pool (leases, membership, directory, claims).
    async fn control_query(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.timed(async {
            let mut conn = self.control.get().await?;
            conn.query(sql, params).await
        })
        .await
    }

    /// Runs one prepared statement under the deadline and returns its rows.
    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.timed(async {
            let mut conn = self.pool.get().await?;
            conn.query(sql, params).await
        })
        .await
    }
}

/// A `u64` (incarnation, epoch, revision, sequence) stored bit for bit in a `bigint`.
pub(super) fn to_db_u64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The inverse of [`to_db_u64`].
pub(super) fn from_db_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A TTL in milliseconds as a `bigint` (the SQL side saturates `now + ttl`).
pub(super) fn ttl_to_db(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms).unwrap_or(i64::MAX)
}
