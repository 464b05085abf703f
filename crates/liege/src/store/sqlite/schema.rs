//! Connection settings, file names, the clock and error mapping for SQLite.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode};

use crate::store::{StoreError, StoreResult, StoreTime};

/// How long a statement waits for another connection's lock before failing with
/// [`StoreError::Unavailable`]. Shorter than any sensible lease TTL, so a stuck writer elsewhere
/// shows up as a failed renewal (and a self-fence) rather than a silent stall.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);

/// How often a connection waiting for another's lock retries. SQLite's own busy timeout backs
/// off to 100 ms sleeps and keeps missing the short gaps between a busy writer's commits;
/// polling every millisecond gives a lease renewal a fair chance against another process.
const BUSY_POLL: Duration = Duration::from_millis(1);

thread_local! {
    /// When the current lock wait began. Each connection lives on its own thread, so this is
    /// per connection.
    static BUSY_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// SQLite busy handler: sleep [`BUSY_POLL`] and retry until [`BUSY_TIMEOUT`] has passed since
/// the first attempt (`attempt == 0`) of this wait.
fn busy_handler(attempt: i32) -> bool {
    let now = Instant::now();
    let since = BUSY_SINCE.with(|since| {
        if attempt == 0 || since.get().is_none() {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// Prepared statements kept per connection; more than the store uses.
const STATEMENT_CACHE: usize = 64;

/// The members file of the store at `path`: the same path with `-members` appended (for
/// `liege.db`, `liege.db-members`, next to SQLite's own `liege.db-wal` and `liege.db-shm`).
pub fn members_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-members");
    PathBuf::from(name)
}

/// Opens `path` (creating it and its parent directories) with the store's settings:
///
/// - `journal_mode=WAL`: readers never block the writer, and several processes can share the
///   file;
/// - `synchronous=FULL`: every commit is fsynced to the WAL before it returns, so an
///   acknowledged write survives power loss, not just a process crash;
/// - a busy handler polling every [`BUSY_POLL`] for up to [`BUSY_TIMEOUT`].
pub(super) fn connect(path: &Path) -> StoreResult<Connection> {
    // Switching a fresh file to WAL needs an exclusive lock and SQLite does not call the busy
    // handler for it: nodes opening one new file at the same moment retry for a while.
    let started = std::time::Instant::now();
    loop {
        match connect_once(path) {
            Err(StoreError::Unavailable(msg))
                if (msg.contains("locked") || msg.contains("busy"))
                    && started.elapsed() < OPEN_RETRY_FOR =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// How long opening a file keeps retrying while another opener holds it.
const OPEN_RETRY_FOR: Duration = Duration::from_secs(10);

fn connect_once(path: &Path) -> StoreResult<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    owner_only(path)?;
    let conn = Connection::open(path).map_err(map_err)?;
    conn.busy_handler(Some(busy_handler)).map_err(map_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Other(format!(
            "{} refuses WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Creates `path` readable and writable by its owner only (mode 0600) if it does not exist, and
/// takes group and other permissions away from it and from its `-wal` and `-shm` files if it
/// does: the files hold agent state and the secret's verifier, which allows offline guessing.
/// SQLite creates the WAL and shared-memory files with the database file's mode.
fn owner_only(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |p: &Path, e: std::io::Error| {
        StoreError::Unavailable(format!("cannot restrict {} to its owner: {e}", p.display()))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(path, e)),
    }
    let name = path.as_os_str();
    let companions = ["-wal", "-shm"].map(|suffix| {
        let mut p = name.to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    });
    for p in std::iter::once(path.to_path_buf()).chain(companions) {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| failed(&p, e))?;
        }
    }
    Ok(())
}

/// The store's clock: this machine's wall clock in Unix milliseconds. Every process on the
/// machine reads the same clock, which is what makes a file shared by processes coherent.
pub(super) fn wall_clock() -> StoreResult<StoreTime> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| StoreError::Other(format!("system clock is before 1970: {e}")))?;
    i64::try_from(since.as_millis())
        .map_err(|_| StoreError::Other("system clock is out of range".into()))
}

/// Maps a SQLite error: contention and IO are retryable, everything else is not.
pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// A `u64` stored as its i64 bit pattern (SQLite integers are signed).
pub(super) fn to_sql_u64(v: u64) -> i64 {
    v as i64
}

/// Inverse of [`to_sql_u64`].
pub(super) fn from_sql_u64(v: i64) -> u64 {
    v as u64
}

/// `.sql()?` converts a rusqlite result with [`map_err`].
pub(super) trait SqlResultExt<T> {
    /// The result with its error mapped to a [`StoreError`].
    fn sql(self) -> StoreResult<T>;
}

impl<T> SqlResultExt<T> for rusqlite::Result<T> {
    fn sql(self) -> StoreResult<T> {
        self.map_err(map_err)
    }
}
