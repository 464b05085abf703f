//! Runs every failover scenario on every store backend: memory, a SQLite file, PostgreSQL.

use std::sync::{Arc, Mutex, Weak};

use liege::store::StoreOptions;
use liege::testing::postgres::TempPostgres;
use liege::testing::TestStore;

/// One PostgreSQL server shared by the tests that overlap in time.
static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());

fn postgres_server() -> Option<Arc<TempPostgres>> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = shared.upgrade() {
        return Some(pg);
    }
    let pg = Arc::new(TempPostgres::start().expect("starting a throwaway PostgreSQL")?);
    *shared = Arc::downgrade(&pg);
    Some(pg)
}

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::init_tracing();
                    crate::failover::$name(liege::testing::TestStore::Memory).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::init_tracing();
                    let dir = tempfile::tempdir().expect("temp dir");
                    let path = dir.path().join("cluster.db");
                    crate::failover::$name(liege::testing::TestStore::Sqlite(path)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::common::init_tracing();
                    let Some((_pg, store)) = super::postgres_store().await else {
                        return;
                    };
                    crate::failover::$name(store).await;
                }
            )*
        }
    };
}

/// A fresh database on the shared server, or  (skipped) without PostgreSQL binaries.
async fn postgres_store() -> Option<(Arc<TempPostgres>, TestStore)> {
    let pg = postgres_server()?;
    let store = pg
        .fresh_store(StoreOptions {
            audit: true,
            ..Default::default()
        })
        .await
        .expect("fresh postgres store");
    Some((pg, TestStore::Given(store)))
}

on_every_store!(
    concurrent_first_calls_from_every_node_activate_the_key_once,
    calls_and_casts_reach_keys_owned_in_other_regions,
    killing_an_owner_keeps_every_acknowledged_update,
    killing_a_whole_region_moves_its_keys_to_survivors,
    a_paused_owner_that_resumes_commits_nothing_and_serves_nothing_stale,
    a_node_cut_off_from_the_store_stops_serving_and_others_take_over,
    a_node_cut_off_from_its_peers_still_serves_its_own_keys_and_others_route_around,
    draining_a_node_and_a_region_under_load_moves_every_partition_without_errors,
    bad_drains_are_refused_and_change_nothing,
    paused_rebalancing_makes_no_planned_move_until_resumed,
    declaring_a_killed_node_down_moves_its_partitions_without_waiting_out_its_lease,
    a_node_declared_down_while_paused_fences_on_resume_and_commits_nothing_stale,
    a_drain_emits_one_started_then_one_succeeded_per_partition,
    a_rebalance_after_a_join_emits_one_started_then_one_succeeded_per_move,
    an_alarm_fires_once_unless_cancelled_or_its_turn_failed,
    an_alarm_fires_on_the_new_owner_after_its_owner_is_killed,
    an_alarm_fires_after_the_only_node_restarts,
    journal_entries_commit_with_their_turn_and_survive_the_owners_death,
    an_agent_rebuilds_from_its_journal_on_activation,
    a_new_owner_knows_every_idempotency_key_without_asking_the_store,
    a_live_member_of_an_older_build_is_written_what_it_reads,
);
