//! In-process store: every table in one mutex, for tests and single-process clusters.
//!
//! Each operation takes the lock once, so every method is trivially one atomic transaction,
//! and claims and fenced writes serialize exactly as they would in a database. The lock is
//! never held across an `.await`.
//!
//! The clock is milliseconds since the store was created, measured with
//! [`tokio::time::Instant`]: tests on a paused tokio clock control lease expiry exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::rules::{self, ClaimDecision, LeaseState};
use super::{
    AlarmUpdate, AuditRecord, Checkpoint, CheckpointWrite, ClusterMeta, DedupeRecord, Directory,
    DirectoryChanges, DueAlarm, JournalAppend, JournalEntry, Lease, Loaded, Membership, NodeLease,
    NodeRecord, OperatorSetting, PartitionRow, Settings, SharedStore, Store, StoreChange,
    StoreError, StoreOptions, StoreResult, StoreTime, WriteError,
};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};

/// How many change notifications a slow watcher may fall behind before it sees `Lagged`
/// (which only means "poll now").
const WATCH_CAPACITY: usize = 256;

/// Sabotage `stale-claim-snapshot`: how long a claim waits between reading leases and
/// deciding (a claim statement stuck for most of a 1 s lease).
const STALE_CLAIM_PAUSE: std::time::Duration = std::time::Duration::from_millis(800);

/// Opens a fresh in-process store.
pub async fn open(options: StoreOptions) -> StoreResult<SharedStore> {
    Ok(Arc::new(MemoryStore::new(options)))
}

/// A store living in this process's memory. Share it between in-process nodes through a
/// [`SharedStore`]; it is lost when the last reference drops.
pub struct MemoryStore {
    /// Origin of the store's clock.
    created: Instant,
    /// Whether committed writes are recorded in the audit log.
    audit: bool,
    /// Guards switched off on purpose.
    sabotage: crate::sabotage::Sabotage,
    /// Every table.
    tables: Mutex<Tables>,
    /// Pushes membership and directory changes to watchers.
    changes: broadcast::Sender<StoreChange>,
}

/// The rows of the store.
#[derive(Default)]
struct Tables {
    meta: Option<ClusterMeta>,
    /// Membership, keyed (and so sorted) by node name.
    nodes: BTreeMap<Arc<str>, NodeLease>,
    /// Directory, index = partition id.
    partitions: Vec<PartitionRow>,
    checkpoints: HashMap<AgentKey, Checkpoint>,
    /// Dedupe records by key, then by (signal hash, keyed the legacy way): as in the SQL
    /// stores, a record written with each row key is a row of its own.
    dedupe: HashMap<AgentKey, HashMap<(u128, bool), DedupeRecord>>,
    /// Alarms by key: (partition, due ms).
    alarms: HashMap<AgentKey, (PartitionId, i64)>,
    /// Journals by key: entry `i` has revision `i + 1`.
    journals: HashMap<AgentKey, Vec<Vec<u8>>>,
    settings: std::collections::BTreeSet<String>,
    audit: Vec<AuditRecord>,
}

impl Tables {
    fn lease_state(&self, name: &str) -> Option<LeaseState> {
        self.nodes.get(name).map(|n| LeaseState {
            incarnation: n.record.id.incarnation,
            lease_expires_at: n.lease_expires_at,
            left: n.left,
        })
    }
}

/// The directory's owner and epoch of `p` (unowned at epoch 0 if there is no row).
fn fence(t: &Tables, p: PartitionId) -> (Option<&NodeId>, Epoch) {
    match t.partitions.get(p.0 as usize) {
        Some(row) => (row.owner.as_ref(), row.epoch),
        None => (None, Epoch(0)),
    }
}

/// The revision of the last entry of `key`'s journal.
fn journal_head(t: &Tables, key: &AgentKey) -> Rev {
    Rev(t.journals.get(key).map_or(0, |j| j.len() as u64))
}

impl MemoryStore {
    /// An empty store whose clock starts at 0 now.
    pub fn new(options: StoreOptions) -> Self {
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        Self {
            created: Instant::now(),
            audit: options.audit,
            sabotage: options.sabotage,
            tables: Mutex::new(Tables::default()),
            changes,
        }
    }

    /// The store's clock: whole milliseconds since creation.
    fn clock(&self) -> StoreTime {
        i64::try_from(self.created.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn notify(&self, change: StoreChange) {
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Applies one write of a batch to the tables, or says why it cannot commit.
    fn apply(&self, t: &mut Tables, w: &CheckpointWrite) -> Result<Rev, WriteError> {
        let (owner, epoch) = fence(t, w.partition);
        let actual = t.checkpoints.get(&w.key).map_or(Rev(0), |c| c.rev);
        let rev = if self.sabotage.skip_fencing() {
            // The stale writer overwrites whatever is there.
            rules::rev_after(actual, w.data.is_none())
        } else {
            rules::check_fence(w.partition, &w.writer, w.epoch, owner, epoch)?;
            // Same order on every backend: fence, journal head, revision. A delete's journal
            // (it must carry none) is ignored.
            if let (Some(_), Some(j)) = (&w.data, &w.journal) {
                rules::check_journal(j.expected_rev, journal_head(t, &w.key))?;
            }
            rules::check_rev(w.expected_rev, actual)?;
            rules::rev_after(w.expected_rev, w.data.is_none())
        };
        if w.data.is_none() {
            t.journals.remove(&w.key);
        } else if let Some(j) = &w.journal {
            let journal = t.journals.entry(w.key.clone()).or_default();
            // Sabotage only: a stale writer's entries land after whatever is there.
            journal.extend(j.entries.iter().cloned());
        }
        match &w.data {
            Some(data) => {
                let checkpoint = Checkpoint {
                    rev,
                    data: data.clone(),
                };
                t.checkpoints.insert(w.key.clone(), checkpoint);
            }
            None => {
                t.checkpoints.remove(&w.key);
            }
        }
        match (w.data.is_none(), w.alarm) {
            (true, _) | (false, AlarmUpdate::Clear) => {
                t.alarms.remove(&w.key);
            }
            (false, AlarmUpdate::Set(due)) => {
                t.alarms.insert(w.key.clone(), (w.partition, due));
            }
            (false, AlarmUpdate::Keep) => {}
        }
        for r in &w.dedupe {
            t.dedupe
                .entry(w.key.clone())
                .or_default()
                .insert((r.signal, w.legacy_records), r.clone());
        }
        if self.audit {
            let seq = t.audit.last().map_or(1, |r| r.seq + 1);
            t.audit.push(AuditRecord {
                seq,
                key: w.key.clone(),
                partition: w.partition,
                epoch: w.epoch,
                writer: w.writer.clone(),
                rev,
            });
        }
        Ok(rev)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn init_cluster(&self, proposed: &ClusterMeta) -> StoreResult<ClusterMeta> {
        let mut t = self.tables.lock();
        if let Some(meta) = &mut t.meta {
            if meta.placement.is_none() {
                meta.placement = proposed.placement.clone();
            }
            return Ok(meta.clone());
        }
        t.meta = Some(proposed.clone());
        t.partitions = (0..proposed.partitions)
            .map(|id| PartitionRow {
                id: PartitionId(id),
                owner: None,
                epoch: Epoch(0),
            })
            .collect();
        Ok(proposed.clone())
    }

    async fn cluster(&self) -> StoreResult<Option<ClusterMeta>> {
        Ok(self.tables.lock().meta.clone())
    }

    async fn set_placement(&self, placement: &str) -> StoreResult<()> {
        let mut t = self.tables.lock();
        let now = self.clock();
        let live: Vec<String> = t
            .nodes
            .values()
            .filter(|n| n.lease_expires_at > now)
            .map(|n| n.record.id.name.to_string())
            .collect();
        rules::placement_change_allowed(&live)?;
        let meta = t
            .meta
            .as_mut()
            .ok_or_else(|| StoreError::Mismatch("there is no cluster in this store".into()))?;
        meta.placement = Some(placement.to_string());
        Ok(())
    }

    async fn now(&self) -> StoreResult<StoreTime> {
        Ok(self.clock())
    }

    async fn join(&self, node: &NodeRecord, ttl_ms: u64) -> StoreResult<Lease> {
        let lease = {
            let mut t = self.tables.lock();
            let now = self.clock();
            let existing = t.lease_state(&node.id.name);
            rules::may_join(existing, node.id.incarnation, now).map_err(|remaining_ms| {
                StoreError::NameInUse {
                    name: node.id.name.to_string(),
                    remaining_ms,
                }
            })?;
            let expires_at = rules::lease_end(now, ttl_ms);
            let row = NodeLease {
                record: node.clone(),
                lease_expires_at: expires_at,
                left: false,
            };
            t.nodes.insert(node.id.name.clone(), row);
            Lease { now, expires_at }
        };
        self.notify(StoreChange::Membership);
        Ok(lease)
    }

    async fn renew(&self, node: &NodeId, ttl_ms: u64) -> StoreResult<Lease> {
        let mut t = self.tables.lock();
        let now = self.clock();
        if !rules::may_renew(t.lease_state(&node.name), node, now) {
            return Err(StoreError::LeaseLost { node: node.clone() });
        }
        let expires_at = rules::lease_end(now, ttl_ms);
        let row = t
            .nodes
            .get_mut(&*node.name)
            .expect("may_renew found the row under this lock");
        row.lease_expires_at = expires_at;
        Ok(Lease { now, expires_at })
    }

    async fn leave(&self, node: &NodeId) -> StoreResult<()> {
        let changed = {
            let mut t = self.tables.lock();
            let now = self.clock();
            match t.nodes.get_mut(&*node.name) {
                Some(row) if row.record.id.incarnation == node.incarnation => {
                    row.lease_expires_at = row.lease_expires_at.min(now);
                    row.left = true;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.notify(StoreChange::Membership);
        }
        Ok(())
    }

    async fn nodes(&self) -> StoreResult<Membership> {
        let t = self.tables.lock();
        Ok(Membership {
            now: self.clock(),
            nodes: t.nodes.values().cloned().collect(),
        })
    }

    async fn directory(&self) -> StoreResult<Directory> {
        let t = self.tables.lock();
        Ok(Directory {
            now: self.clock(),
            partitions: t.partitions.clone(),
        })
    }

    async fn directory_changes(&self, _since: Option<u64>) -> StoreResult<DirectoryChanges> {
        Ok(DirectoryChanges::whole(self.directory().await?))
    }

    async fn settings(&self) -> StoreResult<Settings> {
        let keys = self
            .tables
            .lock()
            .settings
            .iter()
            .cloned()
            .collect::<Vec<_>>();
        Ok(OperatorSetting::settings_from_keys(keys))
    }

    async fn set_setting(&self, setting: &OperatorSetting, on: bool) -> StoreResult<()> {
        {
            let mut t = self.tables.lock();
            if on {
                t.settings.insert(setting.key());
            } else {
                t.settings.remove(&setting.key());
            }
        }
        self.notify(StoreChange::Membership);
        Ok(())
    }

    async fn claim(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
    ) -> StoreResult<Vec<(PartitionId, Epoch)>> {
        // Sabotage: decide on leases read before a pause longer than the lease margin, against
        // the clock after it — the defect of the old PostgreSQL claim.
        let stale: Option<HashMap<Arc<str>, LeaseState>> = if self.sabotage.stale_claim_snapshot() {
            let snapshot = {
                let t = self.tables.lock();
                t.nodes
                    .keys()
                    .filter_map(|n| t.lease_state(n).map(|l| (n.clone(), l)))
                    .collect()
            };
            tokio::time::sleep(STALE_CLAIM_PAUSE).await;
            Some(snapshot)
        } else {
            None
        };
        let claimed = {
            let mut t = self.tables.lock();
            let now = self.clock();
            if !rules::may_renew(t.lease_state(&node.name), node, now) {
                return Err(StoreError::LeaseLost { node: node.clone() });
            }
            let mut claimed = Vec::new();
            for &p in partitions {
                let Some(row) = t.partitions.get(p.0 as usize) else {
                    continue;
                };
                let owner_lease = row.owner.as_ref().and_then(|o| match &stale {
                    Some(snapshot) => snapshot.get(&o.name).copied(),
                    None => t.lease_state(&o.name),
                });
                let decision =
                    if self.sabotage.claim_unexpired() && row.owner.as_ref() != Some(node) {
                        ClaimDecision::Take
                    } else {
                        rules::claim_decision(node, row.owner.as_ref(), owner_lease, now)
                    };
                if decision == ClaimDecision::Take {
                    let row = &mut t.partitions[p.0 as usize];
                    row.owner = Some(node.clone());
                    row.epoch = Epoch(row.epoch.0 + 1);
                    claimed.push((p, row.epoch));
                }
            }
            claimed
        };
        if !claimed.is_empty() {
            self.notify(StoreChange::Directory);
        }
        Ok(claimed)
    }

    async fn release(
        &self,
        node: &NodeId,
        partitions: &[(PartitionId, Epoch)],
    ) -> StoreResult<Vec<PartitionId>> {
        let released = {
            let mut t = self.tables.lock();
            let mut released = Vec::new();
            for &(p, epoch) in partitions {
                if let Some(row) = t.partitions.get_mut(p.0 as usize) {
                    if row.owner.as_ref() == Some(node) && row.epoch == epoch {
                        row.owner = None;
                        released.push(p);
                    }
                }
            }
            released
        };
        if !released.is_empty() {
            self.notify(StoreChange::Directory);
        }
        Ok(released)
    }

    async fn read(&self, key: &AgentKey) -> StoreResult<Option<Checkpoint>> {
        Ok(self.tables.lock().checkpoints.get(key).cloned())
    }

    async fn write(&self, batch: &[CheckpointWrite]) -> StoreResult<Vec<Result<Rev, WriteError>>> {
        let mut t = self.tables.lock();
        Ok(batch.iter().map(|w| self.apply(&mut t, w)).collect())
    }

    async fn read_with_records(
        &self,
        keys: &[AgentKey],
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Loaded>> {
        let t = self.tables.lock();
        let load = |key: &AgentKey| {
            let records: Vec<DedupeRecord> = t
                .dedupe
                .get(key)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|((_, legacy), r)| !legacy && r.expires_at_ms >= now_ms)
                .map(|(_, r)| r)
                .take(limit as usize + 1)
                .cloned()
                .collect();
            Loaded::new(t.checkpoints.get(key).cloned(), records, limit)
        };
        Ok(keys.iter().map(load).collect())
    }

    async fn dedupe(&self, key: &AgentKey, signal: u128) -> StoreResult<Option<DedupeRecord>> {
        let t = self.tables.lock();
        // The per-key row first, as the SQL stores order them.
        Ok(t.dedupe.get(key).and_then(|m| {
            m.get(&(signal, false))
                .or_else(|| m.get(&(signal, true)))
                .cloned()
        }))
    }

    async fn prune_dedupe(&self, before_ms: i64, limit: u32) -> StoreResult<u64> {
        let mut t = self.tables.lock();
        let mut pruned = 0;
        t.dedupe.retain(|_, records| {
            records.retain(|_, r| {
                let prune = pruned < limit && r.expires_at_ms < before_ms;
                pruned += u32::from(prune);
                !prune
            });
            !records.is_empty()
        });
        Ok(u64::from(pruned))
    }

    async fn due_alarms(
        &self,
        partitions: &[PartitionId],
        due_by_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<DueAlarm>> {
        let wanted: std::collections::HashSet<PartitionId> = partitions.iter().copied().collect();
        let t = self.tables.lock();
        let mut due: Vec<DueAlarm> = t
            .alarms
            .iter()
            .filter(|(_, (p, at))| *at <= due_by_ms && wanted.contains(p))
            .map(|(key, (p, at))| DueAlarm {
                key: key.clone(),
                partition: *p,
                due_ms: *at,
            })
            .collect();
        due.sort_by(|a, b| (a.due_ms, &a.key).cmp(&(b.due_ms, &b.key)));
        due.truncate(limit as usize);
        Ok(due)
    }

    async fn append(&self, append: &JournalAppend) -> StoreResult<Result<Rev, WriteError>> {
        let mut t = self.tables.lock();
        let (owner, epoch) = fence(&t, append.partition);
        let j = &append.journal;
        let checked =
            rules::check_fence(append.partition, &append.writer, append.epoch, owner, epoch)
                .and_then(|()| rules::check_journal(j.expected_rev, journal_head(&t, &append.key)));
        if let Err(e) = checked {
            return Ok(Err(e));
        }
        t.journals
            .entry(append.key.clone())
            .or_default()
            .extend(j.entries.iter().cloned());
        Ok(Ok(rules::journal_after(j.expected_rev, j.entries.len())))
    }

    async fn read_journal(
        &self,
        key: &AgentKey,
        from: Rev,
        limit: u32,
    ) -> StoreResult<Vec<JournalEntry>> {
        let t = self.tables.lock();
        let Some(journal) = t.journals.get(key) else {
            return Ok(Vec::new());
        };
        let start = from.0.max(1);
        Ok(journal
            .iter()
            .enumerate()
            .skip(usize::try_from(start - 1).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(|(i, data)| JournalEntry {
                rev: Rev(i as u64 + 1),
                data: data.clone(),
            })
            .collect())
    }

    async fn journal_head(&self, key: &AgentKey) -> StoreResult<Rev> {
        Ok(journal_head(&self.tables.lock(), key))
    }

    async fn audit(&self) -> StoreResult<Vec<AuditRecord>> {
        Ok(self.tables.lock().audit.clone())
    }

    fn watch(&self) -> Option<broadcast::Receiver<StoreChange>> {
        Some(self.changes.subscribe())
    }
}
