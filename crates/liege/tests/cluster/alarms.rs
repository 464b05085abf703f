//! Durable alarms: they fire once on the key's owner, not at all once cancelled or when the
//! turn that set them failed, on the new owner after the owner is killed, and after a
//! restart of the only node.

use std::time::{Duration, SystemTime};

use liege::cluster::CallOptions;
use liege::testing::{TestCluster, TestStore};
use liege::{Agent, AgentError, Agents, Context};
use serde::{Deserialize, Serialize};

/// Counts the alarms it received.
pub(crate) struct Reminder;

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub(crate) enum ReminderMsg {
    /// Wake me in `after_ms`; fail the turn afterwards if `fail`.
    Schedule {
        after_ms: u64,
        fail: bool,
    },
    Cancel,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reminded {
    fired: u32,
}

impl Agent for Reminder {
    const KIND: &'static str = "reminder";
    type State = Reminded;
    type Msg = ReminderMsg;
    type Reply = u32;

    async fn handle(
        &self,
        state: &mut Reminded,
        msg: ReminderMsg,
        ctx: &mut Context<'_>,
    ) -> Result<u32, AgentError> {
        match msg {
            ReminderMsg::Schedule { after_ms, fail } => {
                ctx.set_alarm(SystemTime::now() + Duration::from_millis(after_ms));
                if fail {
                    return Err(AgentError::new("refused", "failing after set_alarm"));
                }
            }
            ReminderMsg::Cancel => ctx.cancel_alarm(),
        }
        Ok(state.fired)
    }

    async fn on_alarm(&self, state: &mut Reminded, _: &mut Context<'_>) -> Result<(), AgentError> {
        state.fired += 1;
        Ok(())
    }
}

fn agents() -> Agents {
    Agents::with_builtins().register(Reminder)
}

/// Waits (up to 15 s) until `id`'s fired count, read through `via`, is at least `n`; returns
/// the count then, after a further second in which it must not grow.
async fn fired_settles(cluster: &TestCluster, via: &str, id: &str, n: u32) -> u32 {
    let r = cluster.node(via).agent::<Reminder>(id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let fired = r.get_state().await.map(|s| s.fired).unwrap_or(0);
        if fired >= n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: {fired} alarms fired, waiting for {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.get_state().await.expect("state").fired
}

pub(crate) async fn an_alarm_fires_once_unless_cancelled_or_its_turn_failed(store: TestStore) {
    let cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .agents(agents())
        .start()
        .await;
    let node = cluster.node("a");
    let schedule = |after_ms, fail| ReminderMsg::Schedule { after_ms, fail };
    node.agent::<Reminder>("once")
        .call(schedule(200, false))
        .await
        .expect("schedule");
    node.agent::<Reminder>("cancelled")
        .call(schedule(300, false))
        .await
        .expect("schedule");
    node.agent::<Reminder>("cancelled")
        .call(ReminderMsg::Cancel)
        .await
        .expect("cancel");
    let failed = node
        .agent::<Reminder>("failed")
        .call(schedule(200, true))
        .await;
    assert!(failed.is_err());
    assert_eq!(
        fired_settles(&cluster, "a", "once", 1).await,
        1,
        "exactly once"
    );
    // The alarm turn's write cleared it from the store (it is not merely deduplicated).
    let all: Vec<liege::PartitionId> = (0..node.config().partitions)
        .map(liege::PartitionId)
        .collect();
    let pending = cluster
        .store()
        .due_alarms(&all, i64::MAX, 100)
        .await
        .expect("due alarms");
    assert!(pending.is_empty(), "{pending:?}");
    for id in ["cancelled", "failed"] {
        let r = node.agent::<Reminder>(id).get_state().await.expect("state");
        assert_eq!(r.fired, 0, "{id}");
    }
}

pub(crate) async fn an_alarm_fires_on_the_new_owner_after_its_owner_is_killed(store: TestStore) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .node("b", "ord")
        .agents(agents())
        .start()
        .await;
    assert!(cluster.wait_converged(Duration::from_secs(20)).await);
    let id = crate::common::owned_by(&cluster, "reminder", "b", "k");
    cluster
        .node("a")
        .agent::<Reminder>(&id)
        .call(ReminderMsg::Schedule {
            after_ms: 300,
            fail: false,
        })
        .await
        .expect("schedule");
    cluster.kill("b");
    assert_eq!(fired_settles(&cluster, "a", &id, 1).await, 1, "once, on a");
    let metrics = cluster.node("a").telemetry().encode();
    assert!(
        crate::common::metric_sum(&metrics, "liege_alarms_fired_total", &[]) >= 1.0,
        "a fired it"
    );
}

pub(crate) async fn an_alarm_fires_after_the_only_node_restarts(store: TestStore) {
    let mut cluster = TestCluster::builder()
        .store(store)
        .node("a", "iad")
        .agents(agents())
        .start()
        .await;
    cluster
        .node("a")
        .agent::<Reminder>("later")
        .call(ReminderMsg::Schedule {
            after_ms: 1_500,
            fail: false,
        })
        .await
        .expect("schedule");
    cluster.kill("a");
    cluster.add_node("a2", "iad").await;
    assert_eq!(fired_settles(&cluster, "a2", "later", 1).await, 1);
    let state = cluster
        .node("a2")
        .get(
            &liege::AgentKey::new("reminder", "later").unwrap(),
            CallOptions::default(),
        )
        .await
        .expect("state");
    assert_eq!(state.value, serde_json::json!({"fired": 1}));
}

/// An alarm handler that always fails, counting its attempts.
struct Flaky(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Agent for Flaky {
    const KIND: &'static str = "flaky";
    type State = u32;
    type Msg = ReminderMsg;
    type Reply = ();

    async fn handle(
        &self,
        _: &mut u32,
        _: ReminderMsg,
        ctx: &mut Context<'_>,
    ) -> Result<(), AgentError> {
        ctx.set_alarm(SystemTime::now());
        Ok(())
    }

    async fn on_alarm(&self, _: &mut u32, _: &mut Context<'_>) -> Result<(), AgentError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(AgentError::new("down", "the downstream is down"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_whose_turn_keeps_failing_is_retried_with_backoff() {
    crate::common::init_tracing();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let cluster = TestCluster::builder()
        .node("a", "iad")
        .agents(Agents::with_builtins().register(Flaky(attempts.clone())))
        .start()
        .await;
    cluster
        .node("a")
        .agent::<Flaky>("f")
        .call(ReminderMsg::Cancel)
        .await
        .expect("arm");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    // Every poll (100 ms) would be ~30 attempts; 200, 400, 800, 1600 ms waits give ~5.
    assert!((2..=8).contains(&n), "{n} attempts in 3 s");
}
