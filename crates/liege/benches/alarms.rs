//! 100,000 pending alarms on one node: how late and in what order they fire.
//!
//! `cargo bench -p liege --bench alarms [-- --alarms N --spread-ms MS --store sqlite|memory]`
//! starts one node on a fresh SQLite file (default), sets N alarms (one per key, durable
//! writes) due uniformly over the next `--spread-ms` after all are set, and records when each
//! fires. Reports lateness (fired − due) percentiles, the order tolerance (the largest amount
//! by which an alarm was due before one that had already fired) and the setting throughput. Not a criterion bench: the
//! figure is a distribution of one run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use liege::cluster::{Node, NodeConfig};
use liege::store::StoreUrl;
use liege::{Agent, AgentError, Agents, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

struct Sleeper {
    fired: Arc<Mutex<Vec<(i64, i64)>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum SleeperMsg {
    Wake { at_ms: i64 },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Agent for Sleeper {
    const KIND: &'static str = "sleeper";
    type State = Option<i64>;
    type Msg = SleeperMsg;
    type Reply = ();

    async fn handle(
        &self,
        due: &mut Option<i64>,
        SleeperMsg::Wake { at_ms }: SleeperMsg,
        ctx: &mut Context<'_>,
    ) -> Result<(), AgentError> {
        *due = Some(at_ms);
        ctx.set_alarm(UNIX_EPOCH + Duration::from_millis(at_ms as u64));
        Ok(())
    }

    async fn on_alarm(&self, due: &mut Option<i64>, _: &mut Context<'_>) -> Result<(), AgentError> {
        if let Some(at) = due.take() {
            self.fired.lock().push((at, now_ms()));
        }
        Ok(())
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = arg("--alarms", "100000").parse()?;
    let spread: i64 = arg("--spread-ms", "20000").parse()?;
    let backend = arg("--store", "sqlite");
    let dir = std::env::temp_dir().join(format!("liege-alarms-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url: StoreUrl = match backend.as_str() {
        "memory" => "memory:".parse()?,
        _ => format!("sqlite:{}", dir.join("alarms.db").display()).parse()?,
    };
    let store = liege::store::open(&url, Default::default()).await?;
    let fired = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let agents = Agents::new().register(Sleeper {
        fired: fired.clone(),
    });
    let node = Node::start(NodeConfig::new("bench-1", "local"), store, agents).await?;
    node.wait_ready(Duration::from_secs(10)).await;

    // Set every alarm, due after all are set: estimate the setting time from a first run.
    let estimate_ms = (n as i64 / 5).max(2_000); // ≥ 5,000 durable writes/s on this VM
    let start_due = now_ms() + estimate_ms;
    let setting = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(64);
    for t in 0..64 {
        let node = node.clone();
        tasks.spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(n) {
                let at_ms = start_due + (i as i64 * spread) / n as i64;
                node.agent::<Sleeper>(&format!("s{i}"))
                    .call(SleeperMsg::Wake { at_ms })
                    .await
                    .expect("set alarm");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let set_s = setting.elapsed().as_secs_f64();
    let late_start = now_ms() - start_due;
    // Wait for every alarm (or give up well after the last is due).
    let deadline = Instant::now() + Duration::from_millis((estimate_ms + spread + 60_000) as u64);
    while fired.lock().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = fired.lock().clone();
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let fired_n = got.len();
    got.sort_by_key(|(_, at)| *at);
    // Order: the largest inversion, i.e. by how much an alarm's due time preceded that of
    // one which had already fired. Alarms fire in order within this tolerance.
    let mut max_due = i64::MIN;
    let mut inversion = 0;
    for (due, _) in &got {
        if max_due > *due {
            inversion = inversion.max(max_due - due);
        }
        max_due = max_due.max(*due);
    }
    let mut lateness: Vec<i64> = got.iter().map(|(due, at)| at - due).collect();
    lateness.sort_unstable();
    let pct = |p: f64| {
        lateness
            .get(((lateness.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "alarms: {n} on one node ({backend}), due over {spread} ms; set in {set_s:.1} s ({:.0}/s){}",
        n as f64 / set_s,
        if late_start > 0 {
            format!(" — setting overran the first due time by {late_start} ms")
        } else {
            String::new()
        }
    );
    println!(
        "fired {fired_n}/{n}; lateness p50 {} / p99 {} / max {} ms; in due order within {inversion} ms",
        pct(0.5),
        pct(0.99),
        lateness.last().copied().unwrap_or(0)
    );
    if fired_n < n {
        std::process::exit(1);
    }
    Ok(())
}
