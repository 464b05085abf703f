//! Where the drill's shared store comes from, and how a store-level fault is injected.
//!
//! The nodes only need a store URL. [`StoreSetup`] hides whether that URL names a fresh SQLite
//! file, a server the user gave, or a throwaway server the drill manages; the last one (and the
//! `store-outage` fault, which needs it) plugs in through [`StoreHarness`].

use std::path::Path;

use async_trait::async_trait;
use liege::store::{StoreOptions, StoreUrl};
use liege::testing::postgres::TempPostgres;

use super::SetupError;

/// A store the drill started and can disrupt (a throwaway Postgres server).
#[async_trait]
pub(crate) trait StoreHarness: Send + Sync {
    /// Connection URL for the nodes.
    fn url(&self) -> String;
    /// Makes the store unreachable (e.g. stops the server).
    async fn stop(&self) -> anyhow::Result<()>;
    /// Brings it back.
    async fn start(&self) -> anyhow::Result<()>;
    /// The server's process id, to read its CPU time.
    fn server_pid(&self) -> Option<u32>;
}

/// The store of one drill run.
pub(crate) enum StoreSetup {
    /// A SQLite file (the embedded default: a fresh file in the run directory).
    Sqlite(std::path::PathBuf),
    /// A Postgres server the user gave; the drill cannot stop it.
    Given(String),
    /// A server the drill started and controls.
    Managed(Box<dyn StoreHarness>),
}

/// A throwaway PostgreSQL from the local server binaries (`--postgres-temp`).
struct TempPostgresHarness {
    url: String,
    server: std::sync::Arc<std::sync::Mutex<TempPostgres>>,
}

impl TempPostgresHarness {
    fn start() -> Result<Self, SetupError> {
        let server = TempPostgres::start()
            .map_err(|e| SetupError(format!("--postgres-temp: {e}")))?
            .ok_or_else(|| {
                SetupError(
                    "--postgres-temp: no PostgreSQL server binaries found (install the postgresql package)"
                        .into(),
                )
            })?;
        Ok(Self {
            url: server.url(),
            server: std::sync::Arc::new(std::sync::Mutex::new(server)),
        })
    }

    async fn with_server(
        &self,
        f: fn(&mut TempPostgres) -> Result<(), liege::testing::postgres::TempPostgresError>,
    ) -> anyhow::Result<()> {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = server.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await?
        .map_err(anyhow::Error::from)
    }
}

#[async_trait]
impl StoreHarness for TempPostgresHarness {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.with_server(TempPostgres::stop).await
    }

    async fn start(&self) -> anyhow::Result<()> {
        self.with_server(TempPostgres::start_again).await
    }

    fn server_pid(&self) -> Option<u32> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .server_pid()
    }
}

impl StoreSetup {
    /// Picks the store from the flags; `--postgres-temp` starts a throwaway server (blocking).
    pub(crate) fn from_args(
        store: Option<&str>,
        postgres_temp: bool,
        run_dir: &Path,
    ) -> Result<Self, SetupError> {
        if postgres_temp {
            if store.is_some() {
                return Err(SetupError(
                    "give either --store or --postgres-temp, not both".into(),
                ));
            }
            return Ok(StoreSetup::Managed(Box::new(TempPostgresHarness::start()?)));
        }
        match store {
            None => Ok(StoreSetup::Sqlite(run_dir.join("liege.db"))),
            Some(raw) => match raw.parse::<StoreUrl>().map_err(|e| SetupError(e.to_string()))? {
                StoreUrl::Sqlite(path) => Ok(StoreSetup::Sqlite(path)),
                StoreUrl::Postgres(url) => Ok(StoreSetup::Given(url)),
                StoreUrl::Memory => Err(SetupError(
                    "--store memory: cannot be shared by separate node processes; use sqlite:PATH or postgres://..."
                        .into(),
                )),
            },
        }
    }

    /// The `--store` value handed to every node.
    pub(crate) fn node_url(&self) -> String {
        match self {
            StoreSetup::Sqlite(path) => format!("sqlite:{}", path.display()),
            StoreSetup::Given(url) => url.clone(),
            StoreSetup::Managed(h) => h.url(),
        }
    }

    /// A short label for reports, without credentials.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            StoreSetup::Sqlite(_) => "sqlite",
            StoreSetup::Given(_) => "postgres",
            StoreSetup::Managed(_) => "postgres (temporary)",
        }
    }

    /// The harness, when the drill controls the store (needed by `store-outage`).
    pub(crate) fn harness(&self) -> Option<&dyn StoreHarness> {
        match self {
            StoreSetup::Managed(h) => Some(h.as_ref()),
            _ => None,
        }
    }

    /// Reads every audit record the nodes committed (they run with `--audit`).
    pub(crate) async fn audit(&self) -> anyhow::Result<Vec<liege::store::AuditRecord>> {
        let url: StoreUrl = self.node_url().parse()?;
        let store = liege::store::open(
            &url,
            StoreOptions {
                audit: true,
                ..Default::default()
            },
        )
        .await?;
        Ok(store.audit().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_store_is_a_sqlite_file_in_the_run_directory() {
        let s = StoreSetup::from_args(None, false, Path::new("/tmp/run")).expect("sqlite");
        assert_eq!(s.node_url(), "sqlite:/tmp/run/liege.db");
    }

    #[test]
    fn postgres_urls_pass_through_and_memory_is_refused() {
        let s =
            StoreSetup::from_args(Some("postgres://u@h/db"), false, Path::new("/r")).expect("pg");
        assert_eq!(s.node_url(), "postgres://u@h/db");
        assert!(StoreSetup::from_args(Some("memory:"), false, Path::new("/r")).is_err());
        assert!(StoreSetup::from_args(Some("sqlite:/x"), true, Path::new("/r")).is_err());
    }
}
