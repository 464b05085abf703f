//! The store conformance suite: every [`Store`] backend must pass every case.
//!
//! Run it all with [`run_all`], or one test per case with [`conformance_tests!`](crate::conformance_tests)
//! (recommended: failures then name the broken rule):
//!
//! ```ignore
//! mod memory {
//!     liege::conformance_tests!(|options| async move {
//!         liege::store::memory::open(options).await.expect("memory store opens")
//!     });
//! }
//! ```
//!
//! Each case takes a FRESH, empty store built with [`options_for`] its name. Cases that need
//! a lease to expire use short TTLs and wait on the store's clock; they never assert that
//! anything was fast. The race cases also come in a two-handle form (`*_between`) so a backend
//! can point two independent handles (e.g. two processes' worth of connections) at one store.

mod alarms;
mod claims;
mod dedupe;
mod journal;
mod membership;
mod races;
mod writes;

use std::future::Future;
use std::time::Duration;

pub use alarms::*;
pub use claims::*;
pub use dedupe::*;
pub use journal::*;
pub use membership::*;
pub use races::*;
pub use writes::*;

use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::{
    CheckpointWrite, ClusterMeta, NodeRecord, SharedStore, Store, StoreOptions, StoreTime,
};

/// A lease that outlives any case.
pub const LONG_TTL_MS: u64 = 60_000;

/// A lease short enough to wait out when expiry is the event under test.
pub const SHORT_TTL_MS: u64 = 100;

/// Partitions in the cluster every case creates.
pub const PARTITIONS: u32 = 32;

/// Declares the case list once: the [`CASES`] table and the [`run_case`] dispatch.
macro_rules! define_cases {
    ($($case:ident),* $(,)?) => {
        /// The name of every case, in the order [`run_all`] runs them.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];

        /// Runs the case called `name` against `store` (built with [`options_for`]`(name)`).
        ///
        /// # Panics
        /// If no case has that name, or the case fails.
        pub async fn run_case(name: &str, store: SharedStore) {
            tracing::info!("--- conformance case {name} on {}", store.backend());
            match name {
                $(stringify!($case) => $case(store).await,)*
                other => panic!("no conformance case named {other}"),
            }
        }
    };
}

define_cases!(
    init_cluster_is_idempotent_and_returns_the_stored_facts,
    the_placement_is_recorded_once_and_changes_only_with_no_live_node,
    join_refuses_a_name_held_by_a_live_incarnation,
    a_members_compatibility_level_reads_back_as_it_joined,
    join_takes_over_a_name_after_expiry_or_leave,
    renew_extends_the_lease_of_the_same_incarnation,
    renew_after_expiry_is_lease_lost,
    leave_ends_the_lease_and_is_idempotent,
    claim_takes_unowned_partitions_at_the_next_epoch,
    claim_skips_partitions_of_a_live_owner,
    claim_after_owner_expiry_or_replacement_bumps_the_epoch,
    claim_requires_the_claimers_own_valid_lease,
    release_keeps_the_epoch_and_lets_another_node_claim,
    fenced_write_commits_and_bumps_the_revision,
    write_with_a_stale_epoch_is_fenced_and_changes_nothing,
    write_with_a_wrong_revision_is_a_conflict,
    delete_removes_the_checkpoint_and_resets_the_revision,
    mixed_batch_reports_an_outcome_per_write,
    same_key_twice_in_one_batch_sees_the_first_write,
    audit_records_exactly_the_committed_writes,
    audit_is_empty_when_auditing_is_off,
    dedupe_records_commit_exactly_with_their_write,
    prune_deletes_only_expired_dedupe_records,
    a_keys_live_records_are_read_with_its_checkpoint,
    records_keyed_the_legacy_way_are_found_by_lookup_and_not_listed,
    alarms_change_only_with_committed_writes_and_are_found_by_due_time,
    journal_appends_only_at_the_expected_head_and_reads_in_order,
    a_journal_append_with_a_stale_epoch_is_fenced_and_changes_nothing,
    journal_entries_commit_exactly_with_their_checkpoint_write,
    concurrent_claims_give_each_partition_exactly_one_owner,
    writers_cannot_commit_with_the_old_epoch_after_a_takeover,
);

/// The options the store for case `name` must be built with: auditing on, except for the
/// case checking that it can be off.
pub fn options_for(name: &str) -> StoreOptions {
    StoreOptions {
        audit: name != "audit_is_empty_when_auditing_is_off",
        ..Default::default()
    }
}

/// Runs every conformance case, each on a FRESH empty store from `make(options_for(case))`.
///
/// # Panics
/// On the first failing case.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    for name in CASES {
        let store = make(options_for(name)).await;
        run_case(name, store).await;
    }
}

/// Declares one `#[tokio::test]` per conformance case, named after the case, each on a fresh
/// store from `$make`, an `Fn(StoreOptions) -> impl Future<Output = SharedStore>`.
/// Also declares a test checking the list below is [`CASES`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            init_cluster_is_idempotent_and_returns_the_stored_facts,
            the_placement_is_recorded_once_and_changes_only_with_no_live_node,
            join_refuses_a_name_held_by_a_live_incarnation,
            a_members_compatibility_level_reads_back_as_it_joined,
            join_takes_over_a_name_after_expiry_or_leave,
            renew_extends_the_lease_of_the_same_incarnation,
            renew_after_expiry_is_lease_lost,
            leave_ends_the_lease_and_is_idempotent,
            claim_takes_unowned_partitions_at_the_next_epoch,
            claim_skips_partitions_of_a_live_owner,
            claim_after_owner_expiry_or_replacement_bumps_the_epoch,
            claim_requires_the_claimers_own_valid_lease,
            release_keeps_the_epoch_and_lets_another_node_claim,
            fenced_write_commits_and_bumps_the_revision,
            write_with_a_stale_epoch_is_fenced_and_changes_nothing,
            write_with_a_wrong_revision_is_a_conflict,
            delete_removes_the_checkpoint_and_resets_the_revision,
            mixed_batch_reports_an_outcome_per_write,
            same_key_twice_in_one_batch_sees_the_first_write,
            audit_records_exactly_the_committed_writes,
            audit_is_empty_when_auditing_is_off,
            dedupe_records_commit_exactly_with_their_write,
            prune_deletes_only_expired_dedupe_records,
            a_keys_live_records_are_read_with_its_checkpoint,
            records_keyed_the_legacy_way_are_found_by_lookup_and_not_listed,
            alarms_change_only_with_committed_writes_and_are_found_by_due_time,
            journal_appends_only_at_the_expected_head_and_reads_in_order,
            a_journal_append_with_a_stale_epoch_is_fenced_and_changes_nothing,
            journal_entries_commit_exactly_with_their_checkpoint_write,
            concurrent_claims_give_each_partition_exactly_one_owner,
            writers_cannot_commit_with_the_old_epoch_after_a_takeover,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let name = stringify!($case);
                let store = ($make)($crate::testing::conformance::options_for(name)).await;
                $crate::testing::conformance::$case(store).await;
            }
        )*

        #[test]
        fn the_macro_lists_every_conformance_case() {
            assert_eq!(
                [$(stringify!($case)),*].as_slice(),
                $crate::testing::conformance::CASES
            );
        }
    };
}

/// Cluster facts for a test cluster of `partitions` partitions.
pub fn test_meta(partitions: u32, salt: &[u8]) -> ClusterMeta {
    ClusterMeta {
        partitions,
        secret_salt: salt.to_vec(),
        secret_verifier: [salt, b"-verifier"].concat(),
        placement: Some("none".into()),
    }
}

/// Creates the cluster with [`PARTITIONS`] partitions.
pub async fn init(store: &dyn Store) {
    let meta = test_meta(PARTITIONS, b"salt");
    let stored = store.init_cluster(&meta).await.expect("init_cluster");
    assert_eq!(stored, meta, "a fresh store keeps the proposed facts");
}

/// What node `name#incarnation` publishes.
pub fn record(name: &str, incarnation: u64) -> NodeRecord {
    NodeRecord {
        id: NodeId::new(name, incarnation),
        region: "test".into(),
        cluster_addr: format!("{name}.cluster:7000"),
        http_addr: format!("{name}.http:8080"),
        compat: crate::store::COMPAT_LEVEL,
    }
}

/// Joins `name#incarnation` with a lease of `ttl_ms`; returns its id and lease end.
pub async fn join(
    store: &dyn Store,
    name: &str,
    incarnation: u64,
    ttl_ms: u64,
) -> (NodeId, StoreTime) {
    let lease = store
        .join(&record(name, incarnation), ttl_ms)
        .await
        .expect("join of a free name");
    (NodeId::new(name, incarnation), lease.expires_at)
}

/// Waits, on the store's clock, until a lease ending at `expires_at` has expired.
pub async fn wait_until_expired(store: &dyn Store, expires_at: StoreTime) {
    loop {
        let now = store.now().await.expect("store clock");
        if now >= expires_at {
            return;
        }
        let left = u64::try_from(expires_at - now).unwrap_or(1);
        tokio::time::sleep(Duration::from_millis(left.max(1))).await;
    }
}

/// Shortens `node`'s lease to end 1 ms from now and waits until it has expired: a node that
/// had to act first (claim, write) loses its lease without racing a short TTL.
pub async fn expire_soon(store: &dyn Store, node: &NodeId) {
    let lease = store.renew(node, 1).await.expect("renew of a live lease");
    wait_until_expired(store, lease.expires_at).await;
}

/// A key of the test kind.
pub fn key(id: &str) -> AgentKey {
    AgentKey::new("conformance", id).expect("test keys are valid")
}

/// An upsert (`data: Some`) or delete (`None`) of `key` in `p` by `writer` at `epoch`.
pub fn put(
    key: &AgentKey,
    p: u32,
    epoch: Epoch,
    writer: &NodeId,
    expected: u64,
    data: Option<&[u8]>,
) -> CheckpointWrite {
    CheckpointWrite {
        key: key.clone(),
        partition: PartitionId(p),
        epoch,
        writer: writer.clone(),
        expected_rev: Rev(expected),
        data: data.map(<[u8]>::to_vec),
        dedupe: Vec::new(),
        alarm: crate::store::AlarmUpdate::Keep,
        journal: None,
        legacy_records: false,
    }
}

/// The partitions `0..n`.
pub fn partitions(n: u32) -> Vec<PartitionId> {
    (0..n).map(PartitionId).collect()
}
