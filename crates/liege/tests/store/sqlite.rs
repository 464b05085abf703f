//! The SQLite store: conformance suite, several stores on one file (two processes' worth of
//! connections), durability across reopen, migrations (including the upgrade of a
//! single-file database), and lease renewals that do not wait for the main file's lock.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use liege::store::sqlite::{
    self, members_path, SqliteStore, MEMBERS_SCHEMA_VERSION, SCHEMA_VERSION,
};
use liege::store::{
    AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, Lease, Membership, NodeRecord, OperatorSetting, Settings, SharedStore, Store,
    StoreError, StoreOptions, StoreResult, StoreTime, StoreUrl, WriteError,
};
use liege::testing::conformance::{self, join, key, partitions, put, LONG_TTL_MS};
use liege::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use tempfile::TempDir;

/// A SQLite store that deletes its directory when dropped.
struct TempStore {
    inner: SqliteStore,
    _dir: TempDir,
}

async fn fresh(options: StoreOptions) -> SharedStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = SqliteStore::open(&dir.path().join("liege.db"), options)
        .await
        .expect("sqlite store opens");
    Arc::new(TempStore { inner, _dir: dir })
}

mod conformance_suite {
    liege::conformance_tests!(super::fresh);
}

async fn open(path: &Path) -> SharedStore {
    let options = StoreOptions {
        audit: true,
        ..Default::default()
    };
    sqlite::open(path, options)
        .await
        .expect("sqlite store opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_give_each_partition_exactly_one_owner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let (first, second) = tokio::join!(open(&path), open(&path));
    conformance::concurrent_claims_between(&[first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_through_another_store_fences_the_old_owners_writers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let old_side = open(&path).await;
    let new_side = open(&path).await;
    conformance::takeover_race_between(old_side, new_side).await;
}

#[tokio::test]
async fn data_survives_dropping_and_reopening_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/dirs/liege.db");
    let k = key("kept");
    let a = {
        let store = open(&path).await;
        conformance::init(&*store).await;
        let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
        store.claim(&a, &partitions(2)).await.expect("claim");
        let r = store
            .write(&[put(&k, 1, Epoch(1), &a, 0, Some(b"state"))])
            .await;
        assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
        a
    };

    let store = open(&path).await;
    let meta = conformance::test_meta(conformance::PARTITIONS, b"salt");
    let other = conformance::test_meta(7, b"other");
    assert_eq!(store.init_cluster(&other).await.expect("init"), meta);
    let checkpoint = store.read(&k).await.expect("read").expect("kept");
    assert_eq!(
        (checkpoint.rev, checkpoint.data),
        (Rev(1), b"state".to_vec())
    );
    let dir_rows = store.directory().await.expect("directory").partitions;
    assert_eq!(dir_rows[1].owner.as_ref(), Some(&a));
    assert!(store.nodes().await.expect("nodes").is_live(&a));
    assert_eq!(store.audit().await.expect("audit").len(), 1);
}

#[tokio::test]
async fn migrations_run_once_even_for_concurrent_openers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let (first, second) = tokio::join!(open(&path), open(&path));
    conformance::init(&*first).await;
    drop((first, second));
    let third = open(&path).await;
    conformance::init(&*third).await;

    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");

    let members = rusqlite::Connection::open(members_path(&path)).expect("members connection");
    let (version, mode): (u32, String) = (
        members
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version"),
        members
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode"),
    );
    assert_eq!((version, mode.as_str()), (MEMBERS_SCHEMA_VERSION, "wal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_succeed_while_another_connection_holds_the_main_files_write_lock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let store = open(&path).await;
    conformance::init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;

    // Another process's long transaction on the main file (a checkpoint batch, say).
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
        let mut conn = rusqlite::Connection::open(&path)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let _ = locked_tx.send(());
        let _ = release_rx.recv();
        tx.commit()
    });
    locked_rx.await.expect("the main file is locked");

    // Renewals for longer than the busy timeout (1 s), a join and a membership read.
    for _ in 0..6 {
        store
            .renew(&a, LONG_TTL_MS)
            .await
            .expect("renewal while the main file is locked");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let (b, _) = join(&*store, "b", 2, LONG_TTL_MS).await;
    let members = store.nodes().await.expect("nodes");
    assert!(members.is_live(&a) && members.is_live(&b));
    // A claim writes the directory in the main file: it has to wait, and gives up.
    match store.claim(&a, &partitions(2)).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while the main file is locked, got {other:?}"),
    }

    release_tx.send(()).expect("release the lock");
    holder
        .await
        .expect("lock holder")
        .expect("lock holder commits");
    let claimed = store.claim(&a, &partitions(2)).await.expect("claim");
    assert_eq!(claimed.len(), 2);
}

#[tokio::test]
async fn a_single_file_database_keeps_its_leases_when_upgraded_to_a_members_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let meta = conformance::test_meta(conformance::PARTITIONS, b"salt");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let far = i64::try_from(now.as_millis()).expect("clock in range") + 3_600_000;
    {
        // The layout of schema version 1: `nodes` in the main file; `old` owns partition 0.
        let conn = rusqlite::Connection::open(&path).expect("raw connection");
        conn.execute_batch(include_str!(
            "../../src/store/sqlite/migrations/0001_init.sql"
        ))
        .expect("schema v1");
        conn.execute(
            "INSERT INTO cluster_meta VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![meta.partitions, meta.secret_salt, meta.secret_verifier],
        )
        .expect("meta");
        for id in 0..meta.partitions {
            let (owner, inc, epoch) = if id == 0 {
                (Some("old"), Some(7), 3)
            } else {
                (None, None, 0)
            };
            conn.execute(
                "INSERT INTO partitions VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, owner, inc, epoch],
            )
            .expect("partition");
        }
        conn.execute(
            "INSERT INTO nodes VALUES ('old', 7, 'r', 'c:1', 'h:1', ?1, 0)",
            [far],
        )
        .expect("lease");
        conn.pragma_update(None, "user_version", 1).expect("v1");
    }

    let store = open(&path).await;
    conformance::init(&*store).await;
    let old = NodeId::new("old", 7);
    assert!(store.nodes().await.expect("nodes").is_live(&old));
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    let claimed = store.claim(&b, &partitions(2)).await.expect("claim");
    assert_eq!(
        claimed,
        vec![(PartitionId(1), Epoch(1))],
        "old's lease holds"
    );
    store.renew(&old, LONG_TTL_MS).await.expect("old renews");

    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    let (version, tables): (u32, u32) = (
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version"),
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'nodes'",
            [],
            |r| r.get(0),
        )
        .expect("tables"),
    );
    assert_eq!((version, tables), (SCHEMA_VERSION, 0));
}

#[tokio::test]
async fn a_file_with_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("set user_version");
    drop(conn);
    match SqliteStore::open(&path, StoreOptions::default()).await {
        Err(StoreError::Other(message)) => assert!(message.contains("newer"), "{message}"),
        Err(other) => panic!("expected Other, got {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn a_batch_of_256_writes_commits_as_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url: StoreUrl = format!("sqlite:{}", dir.path().join("liege.db").display())
        .parse()
        .expect("store url");
    let store = liege::store::open(
        &url,
        StoreOptions {
            audit: true,
            ..Default::default()
        },
    )
    .await
    .expect("open by url");
    assert_eq!(store.backend(), "sqlite");
    assert!(store.watch().is_none(), "sqlite has no push; callers poll");
    conformance::init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &partitions(4)).await.expect("claim");
    let batch: Vec<_> = (0..256u32)
        .map(|i| put(&key(&format!("k{i}")), i % 4, Epoch(1), &a, 0, Some(b"x")))
        .collect();
    let results = store.write(&batch).await.expect("batch");
    assert!(results.iter().all(|r| *r == Ok(Rev(1))));
    let audit = store.audit().await.expect("audit");
    assert_eq!(audit.len(), 256);
    assert!(audit.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[tokio::test]
async fn a_store_node_id_with_a_large_incarnation_round_trips() {
    let store = fresh(StoreOptions {
        audit: true,
        ..Default::default()
    })
    .await;
    conformance::init(&*store).await;
    let (a, _) = join(&*store, "a", u64::MAX, LONG_TTL_MS).await;
    let claimed = store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    assert_eq!(claimed, vec![(PartitionId(0), Epoch(1))]);
    let dir_rows = store.directory().await.expect("directory").partitions;
    assert_eq!(dir_rows[0].owner, Some(NodeId::new("a", u64::MAX)));
    let r = store
        .write(&[put(&key("k"), 0, Epoch(1), &a, 0, Some(b"x"))])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
    assert_eq!(store.audit().await.expect("audit")[0].writer, a);
}

#[async_trait]
impl Store for TempStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        self.inner.init_cluster(proposed).await
    }
    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        self.inner.cluster().await
    }
    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        self.inner.set_placement(placement).await
    }
    async fn now(&self) -> StoreResult<StoreTime> {
        self.inner.now().await
    }
    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        self.inner.join(node, ttl_ms).await
    }
    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        self.inner.renew(node, ttl_ms).await
    }
    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        self.inner.leave(node).await
    }
    async fn nodes(&self) -> StoreResult<Membership> {
        self.inner.nodes().await
    }
    async fn directory(&self) -> StoreResult<Directory> {
        self.inner.directory().await
    }
    async fn directory_changes(&self, since: Option<u64>) -> StoreResult<DirectoryChanges> {
        self.inner.directory_changes(since).await
    }
    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        self.inner.claim(node, partitions).await
    }
    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        self.inner.release(node, partitions).await
    }
    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        self.inner.read(key).await
    }
    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        self.inner.write(batch).await
    }
    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::Loaded>> {
        self.inner.read_with_records(keys, now_ms, limit).await
    }
    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        self.inner.dedupe(key, signal).await
    }
    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        self.inner.prune_dedupe(before_ms, limit).await
    }
    async fn due_alarms(
        &self,
        partitions: &[liege::PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::DueAlarm>> {
        self.inner.due_alarms(partitions, due_by_ms, limit).await
    }
    async fn append(
        &self,
        append: &liege::store::JournalAppend,
    ) -> StoreResult<Result<Rev, WriteError>> {
        self.inner.append(append).await
    }
    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<liege::store::JournalEntry>> {
        self.inner.read_journal(key, from, limit).await
    }
    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        self.inner.journal_head(key).await
    }
    async fn settings(&self) -> StoreResult<Settings> {
        self.inner.settings().await
    }
    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        self.inner.set_setting(setting, on).await
    }
    fn health(&self) -> StoreResult<()> {
        self.inner.health()
    }
    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<liege::store::StoreChange>> {
        self.inner.watch()
    }
    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        self.inner.audit().await
    }
}

/// A value SQLite might hold in any column of a corrupted file.
fn garbage() -> impl proptest::strategy::Strategy<Value = rusqlite::types::Value> {
    use proptest::prelude::*;
    use rusqlite::types::Value;
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        ".{0,8}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Blob),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Rows a crash, a bug or a hand edit left behind are decoded into values or typed
    /// errors: the store never panics on what it reads.
    #[test]
    fn corrupt_rows_are_typed_errors_never_panics(
        owner in garbage(), incarnation in garbage(), epoch in garbage(),
        rev in garbage(), data in garbage(), lease in garbage(), name in garbage(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("liege.db");
            let store = sqlite::open(&path, StoreOptions::default()).await.expect("opens");
            conformance::init(&*store).await;
            {
                let main = rusqlite::Connection::open(&path).expect("raw main");
                main.execute(
                    "UPDATE partitions SET owner_name = ?1, owner_incarnation = ?2, epoch = ?3 WHERE id = 0",
                    rusqlite::params![owner, incarnation, epoch],
                ).ok();
                main.execute(
                    "INSERT INTO checkpoints (kind, id, rev, data) VALUES ('conformance', 'k', ?1, ?2)",
                    rusqlite::params![rev, data],
                ).ok();
                let members = rusqlite::Connection::open(members_path(&path)).expect("raw members");
                members.execute(
                    "INSERT INTO nodes (name, incarnation, region, cluster_addr, http_addr, lease_expires_at) \
                     VALUES (?1, ?2, 'r', 'a', 'h', ?3)",
                    rusqlite::params![name, incarnation, lease],
                ).ok();
            }
            let _ = store.directory().await;
            let _ = store.nodes().await;
            let _ = store.read(&key("k")).await;
            let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
            let _ = store.claim(&a, &partitions(4)).await;
            let _ = store.write(&[put(&key("k"), 0, Epoch(1), &a, 0, Some(b"x"))]).await;
            let _ = store.audit().await;
        });
    }
}

/// A dedupe record written before checkpoint format 4 (a 16-byte key) is still found by a
/// lookup, and never listed as one of the key's records.
#[tokio::test]
async fn records_keyed_the_legacy_way_are_still_found_by_a_lookup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let store = open(&path).await;
    let k = key("k");
    let (signal, fingerprint, reply) = super::LEGACY;
    let legacy = liege::store::legacy_dedupe_record_key(&k, signal);
    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    conn.execute(
        "INSERT INTO dedupe (record, fingerprint, reply, expires_at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![&legacy[..], fingerprint as i64, reply, i64::MAX],
    )
    .expect("legacy record");
    super::a_legacy_record_is_found_and_not_listed(&*store, &k).await;
}

/// A node of an older build replaces its members row without naming the level, which then
/// reads as the legacy level, even under a name a newer build held at the current level.
#[tokio::test]
async fn an_older_builds_join_records_it_at_the_legacy_level() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("liege.db");
    let store = open(&path).await;
    conformance::init(&*store).await;
    let a = conformance::record("a", 1);
    store.join(&a, 60_000).await.expect("join");
    let level = |m: liege::store::Membership| m.nodes[0].record.compat;
    assert_eq!(
        level(store.nodes().await.unwrap()),
        liege::store::COMPAT_LEVEL
    );

    let conn = rusqlite::Connection::open(members_path(&path)).expect("raw connection");
    // The statement builds before compatibility levels run.
    conn.execute(
        "INSERT OR REPLACE INTO nodes \
         (name, incarnation, region, cluster_addr, http_addr, lease_expires_at, has_left) \
         VALUES ('a', 2, 'test', 'a:7000', 'a:8080', ?1, 0)",
        [i64::MAX],
    )
    .expect("older join");
    let members = store.nodes().await.unwrap();
    assert_eq!(members.nodes[0].record.id, liege::NodeId::new("a", 2));
    assert_eq!(
        liege::store::cluster_compat(members.live()),
        liege::store::COMPAT_LEGACY
    );
}
