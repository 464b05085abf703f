//! A throwaway PostgreSQL server for tests: [`TempPostgres`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use liege::testing::postgres::TempPostgres;
//! let Some(pg) = TempPostgres::start()? else {
//!     return Ok(()); // "skipped: ..." was printed; LIEGE_REQUIRE_POSTGRES=1 makes it an error
//! };
//! let url = pg.create_database().await?; // a fresh, empty database
//! # let _ = url; Ok(()) }
//! ```
//!
//! The server runs from the local PostgreSQL installation (`initdb`, `pg_ctl`, `postgres`),
//! found in `$LIEGE_PG_BINDIR`, `/usr/lib/postgresql/*/bin` (newest first), `pg_config
//! --bindir` or `PATH`. It listens on a free loopback port with trust authentication and the
//! default durability settings (`fsync` on). When the process runs as root, the server runs as
//! the `postgres` user through `runuser`, because `initdb` refuses root.
//!
//! Dropping a [`TempPostgres`] stops the server (immediate mode) and removes its directory.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::{SharedStore, StoreOptions};

/// Environment variable that turns "no PostgreSQL binaries" from a skip into an error.
pub const REQUIRE_ENV: &str = "LIEGE_REQUIRE_POSTGRES";

/// Environment variable naming the directory of the PostgreSQL server binaries.
pub const BINDIR_ENV: &str = "LIEGE_PG_BINDIR";

/// A PostgreSQL server owned by the test: its own data directory, port and lifetime.
///
/// Callers MUST keep it alive while stores use it. [`TempPostgres::stop`] and
/// [`TempPostgres::start_again`] simulate a store outage on the same data and port.
/// Methods block on `pg_ctl` (seconds at most); that is fine in tests.
#[derive(Debug)]
pub struct TempPostgres {
    bindir: PathBuf,
    /// Holds the data directory, the socket and the log; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// `Some(["runuser", "-u", "postgres", "--"])` when running as root.
    run_as: Option<Vec<String>>,
    next_db: AtomicU64,
    running: bool,
}

impl TempPostgres {
    /// Creates and starts a server. `Ok(None)` (after printing `skipped: ...`) when no
    /// PostgreSQL binaries are installed, unless `LIEGE_REQUIRE_POSTGRES=1`, which makes that
    /// an error.
    pub fn start() -> Result<Option<TempPostgres>, TempPostgresError> {
        let Some(bindir) = find_bindir() else {
            let reason = "no PostgreSQL server binaries (initdb, pg_ctl) found; \
                          set LIEGE_PG_BINDIR or install postgresql";
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                return Err(format!("{REQUIRE_ENV}=1 but {reason}").into());
            }
            println!("skipped: {reason}");
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("liege-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let run_as = if is_root {
            let out = run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
            check(&out, "chown the temp dir to postgres")?;
            Some(
                ["runuser", "-u", "postgres", "--"]
                    .map(String::from)
                    .to_vec(),
            )
        } else {
            None
        };
        let port = free_port()?;
        let mut pg = TempPostgres {
            bindir,
            dir,
            port,
            run_as,
            next_db: AtomicU64::new(0),
            running: false,
        };
        let data = pg.data_dir();
        let out = run(pg.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        check(&out, "initdb")?;
        pg.start_again()?;
        Ok(Some(pg))
    }

    /// Starts the server again on the same data directory and port (after [`Self::stop`]).
    /// Returns once it accepts connections.
    pub fn start_again(&mut self) -> Result<(), TempPostgresError> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=200 -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "60", "start"]))?;
        if let Err(e) = check(&out, "pg_ctl start") {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{e}\nserver log:\n{tail}").into());
        }
        self.running = true;
        Ok(())
    }

    /// Turns TLS on with this certificate chain and key (PEM), and restarts the server. With
    /// `tls_only`, TCP connections without TLS are refused (`hostssl` only in `pg_hba.conf`);
    /// the test's own administrative connections use the Unix socket either way.
    pub fn enable_tls(
        &mut self,
        cert_pem: &str,
        key_pem: &str,
        tls_only: bool,
    ) -> Result<(), TempPostgresError> {
        let data = self.data_dir();
        let write = |name: &str, text: &str| -> Result<(), String> {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(|e| format!("write {name}: {e}"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {name}: {e}"))?;
            if self.run_as.is_some() {
                check(
                    &run(Command::new("chown").arg("postgres:").arg(&path))?,
                    "chown",
                )?;
            }
            Ok(())
        };
        write("server.crt", cert_pem)?;
        write("server.key", key_pem)?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| format!("read conf: {e}"))?;
        text.push_str(
            "
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
",
        );
        std::fs::write(&conf, text).map_err(|e| format!("write conf: {e}"))?;
        if tls_only {
            let hba = "local all all trust
                       hostssl all all 127.0.0.1/32 trust
                       hostnossl all all 127.0.0.1/32 reject
";
            std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("hba: {e}"))?;
        }
        if self.running {
            self.stop()?;
        }
        self.start_again()
    }

    /// Stops the server (fast shutdown: open connections are closed). Data is kept.
    pub fn stop(&mut self) -> Result<(), TempPostgresError> {
        let out = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]))?;
        check(&out, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// The process id of the running server (the postmaster; its backends are its children),
    /// from `postmaster.pid`. For measuring the server's CPU.
    pub fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The loopback port the server listens on (the same across stop and start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` with the server's `psql` on database `db` and returns what it printed
    /// (unaligned, rows only, trimmed). Blocks.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TempPostgresError> {
        let out = run(Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-c", sql])
            .arg(self.url_for(db)))?;
        check(&out, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn create_database(&self) -> Result<String, TempPostgresError> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("liege_test_{n}");
        // Over the Unix socket, which works whatever TCP requires (see `enable_tls`).
        let admin = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect to {admin}: {e}"))?;
        let driver = tokio::spawn(conn);
        let created = client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("create database {name}: {e}"));
        drop(client);
        let _ = driver.await;
        created?;
        Ok(self.url_for(&name))
    }

    /// A [`PostgresStore`] on a fresh, empty database: what a conformance suite's `make`
    /// needs. Uses generous timeouts, since test machines are often loaded.
    pub async fn fresh_store(
        &self,
        options: StoreOptions,
    ) -> Result<SharedStore, TempPostgresError> {
        let url = self.create_database().await?;
        let options = PostgresOptions {
            store: options,
            ..PostgresOptions::for_tests()
        };
        let store = PostgresStore::connect(&url, options)
            .await
            .map_err(|e| format!("open store on {url}: {e}"))?;
        Ok(std::sync::Arc::new(store))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for binary `name`, run as the `postgres` user when we are root.
    fn command(&self, name: &str) -> Command {
        let bin = self.bindir.join(name);
        match &self.run_as {
            Some(prefix) => {
                let mut cmd = Command::new(&prefix[0]);
                cmd.args(&prefix[1..]).arg(bin);
                cmd
            }
            None => Command::new(bin),
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ]));
        }
        // The TempDir field removes the directory after this.
    }
}

/// Finds the directory holding `initdb` and `pg_ctl`.
fn find_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BINDIR_ENV).map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.into_iter().rev().find(|(_, d)| has_tools(d)) {
        return Some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_tools(d)) {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_tools(d))
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.output().map_err(|e| format!("run {cmd:?}: {e}"))
}

fn check(out: &Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why a throwaway PostgreSQL server could not be started, stopped or given a database: the
/// step that failed and what it said (with the server log's tail where there is one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("temporary PostgreSQL: {0}")]
pub struct TempPostgresError(pub String);

impl From<String> for TempPostgresError {
    fn from(why: String) -> Self {
        Self(why)
    }
}
