//! A small bounded connection pool with per-connection prepared statements.
//!
//! Connections are made lazily, at most `size` at once; a connection that saw a transport
//! error, a timeout or a server shutdown is thrown away instead of being returned, so a
//! restarted server is picked up by the next checkout without restarting anything.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::core::ids::NodeId;
use crate::store::StoreError;

/// SQLSTATE raised by `liege_claim` when the claimer's lease is not valid.
pub(super) const LEASE_LOST: &str = "LG001";

/// Bounded pool of connections to one database.
pub(super) struct Pool {
    config: Config,
    tls: MakeRustlsConnect,
    connect_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
}

/// One connection and the statements prepared on it.
pub(super) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// A connection checked out of the pool; goes back on drop unless it was marked broken.
pub(super) struct PooledConn<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    /// True while a request is in flight or after a connection-level error.
    broken: bool,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    /// A pool of at most `size` connections made from `config`.
    pub(super) fn new(
        config: Config,
        tls: MakeRustlsConnect,
        size: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            config,
            tls,
            connect_timeout,
            permits: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Checks out a live connection, connecting if no idle one is left. The caller bounds the
    /// wait with its operation timeout.
    pub(super) async fn get(&self) -> Result<PooledConn<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Other("connection pool closed".into()))?;
        let idle = loop {
            let Some(conn) = self.idle.lock().pop() else {
                break None;
            };
            if !conn.client.is_closed() {
                break Some(conn);
            }
        };
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: self,
            broken: false,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let client = connect(&self.config, self.tls.clone(), self.connect_timeout).await?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }
}

/// Opens one connection and spawns the task that drives it.
pub(super) async fn connect(
    config: &Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
) -> Result<Client, StoreError> {
    let connecting = tokio::time::timeout(timeout, config.connect(tls));
    let (client, connection) = connecting
        .await
        .map_err(|_| StoreError::Unavailable(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| map_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl PooledConn<'_> {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Other("pooled connection already released".into()))
    }

    /// Runs `sql` (prepared once per connection) and returns its rows.
    pub(super) async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        // Stays true if this future is dropped mid-request (the caller timed out).
        self.broken = true;
        let conn = self.conn()?;
        let result = match conn.statements.get(sql) {
            Some(s) => conn.client.query(s, params).await,
            None => match conn.client.prepare(sql).await {
                Ok(s) => {
                    conn.statements.insert(sql, s.clone());
                    conn.client.query(&s, params).await
                }
                Err(e) => Err(e),
            },
        };
        self.broken = matches!(&result, Err(e) if breaks_connection(e));
        result.map_err(|e| map_error(&e))
    }

    /// Runs a statement without parameters over the simple query protocol (`BEGIN`,
    /// `COMMIT`). The connection is dropped, not reused, if it fails.
    pub(super) async fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        self.broken = true;
        let result = self.conn()?.client.batch_execute(sql).await;
        self.broken = matches!(&result, Err(e) if breaks_connection(e)) || result.is_err();
        result.map_err(|e| map_error(&e))
    }

    /// The raw client, for multi-statement work such as migrations. Marks the connection
    /// broken until [`Self::mark_healthy`] is called.
    pub(super) fn client_mut(&mut self) -> Result<&mut Client, StoreError> {
        self.broken = true;
        Ok(&mut self.conn()?.client)
    }

    /// Declares the connection reusable after raw use through [`Self::client_mut`].
    pub(super) fn mark_healthy(&mut self) {
        self.broken = false;
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.broken && !conn.client.is_closed() {
                self.pool.idle.lock().push(conn);
            }
        }
    }
}

/// True when the connection cannot be trusted after `e`.
fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// True if `e` is [`map_error`]'s rendering of a unique-key violation (SQLSTATE 23505): the
/// code ends the text of every database error it maps.
pub(super) fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Other(text) if text.ends_with("(23505)"))
}

/// Maps a driver error to a store error: transport problems, timeouts, shutdowns, lock and
/// serialization failures are retryable [`StoreError::Unavailable`]; the rest are
/// [`StoreError::Other`]. `LG001` becomes [`StoreError::LeaseLost`] naming a placeholder
/// node: the one caller that can raise it (claim) fills in the real node.
pub(super) fn map_error(e: &tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: a connection-level failure. Its cause (a TLS verification failure, a
        // refused connection) is in the source chain, which `Display` leaves out.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        return StoreError::Unavailable(text);
    };
    let code = code.code();
    if code == LEASE_LOST {
        return StoreError::LeaseLost {
            node: NodeId::new("", 0),
        };
    }
    let retryable = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (e.g. too many connections)
        || code.starts_with("57") // canceled (statement_timeout), shutdown, cannot connect now
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03"; // lock not available
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({code})", db.message()),
        None => e.to_string(),
    };
    if retryable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Other(text)
    }
}
