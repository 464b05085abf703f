//! `liege bench`: a closed-loop HTTP benchmark of a cluster it starts itself, like the drill
//! (real `liege node` processes over one store), reporting throughput, latency percentiles,
//! errors, and the CPU of the nodes, the store and the load generator.
//!
//! Layout: [`load`] (the closed loop) · [`cpu`] (`/proc` times) · [`noop`] (the baseline
//! server of `--noop`) · this file (flags, setup, report).

mod cpu;
mod load;
pub(crate) mod noop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use crate::drill::client::Client;
use crate::drill::store::StoreSetup;
use crate::drill::topology::{ensure_dir, fresh_run_dir, Cluster, NodeTemplate};
use crate::drill::{observe, SetupError};

/// Where the load generator sends each request.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Each connection to one entry node; nodes forward to owners.
    Entry,
    /// Each request to its key's owner.
    Owner,
}

/// Options of `liege bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Comma-separated region labels; each gets `--nodes-per-region` nodes.
    #[arg(long, value_delimiter = ',', default_value = "local")]
    regions: Vec<String>,
    /// Nodes started in every region.
    #[arg(long, default_value_t = 1)]
    nodes_per_region: usize,
    /// Store shared by the nodes: `sqlite:PATH` or `postgres://...` (default: a fresh SQLite
    /// file in the run directory).
    #[arg(long, conflicts_with = "postgres_temp")]
    store: Option<String>,
    /// Start a throwaway PostgreSQL server from the local binaries; its CPU is measured.
    #[arg(long)]
    postgres_temp: bool,
    /// Benchmark a no-op in-memory HTTP counter (hyper) instead of a cluster: the baseline.
    #[arg(long, conflicts_with_all = ["store", "postgres_temp"])]
    noop: bool,
    /// Concurrent connections, one request in flight on each, spread over the nodes.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Distinct counters, chosen uniformly at random per request.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Measured time, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = crate::drill::parse_duration)]
    duration: Duration,
    /// Load before measuring (activations, connections, caches); `0s` for none.
    #[arg(long, default_value = "2s", value_parser = crate::drill::parse_duration_or_zero)]
    warmup: Duration,
    /// Send a unique `Idempotency-Key` with every increment.
    #[arg(long)]
    idempotency: bool,
    /// Where each request goes: `entry` (each connection to one node, round-robin; the node
    /// forwards to the key's owner) or `owner` (to the node that owns the key, looked up once
    /// before the load with `GET /demo/keys/{id}/owner`, as a routing-aware client would).
    #[arg(long, value_enum, default_value = "entry")]
    route: Route,
    /// Persistence of the nodes: durable, interval:MS or on_passivate.
    #[arg(long, default_value = "durable")]
    persistence: String,
    /// Lease TTL of every node, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    lease_ttl_ms: u64,
    /// `--max-activations` of every node (default: the node's own default).
    #[arg(long)]
    max_activations: Option<usize>,
    /// `--write-linger-ms` of every node (default: the node's own, 0).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1000))]
    write_linger_ms: Option<u64>,
    /// Partition count passed to the nodes.
    #[arg(long, default_value_t = 1024)]
    partitions: u32,
    /// Directory for the store and node logs (default: a fresh temp dir, kept).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchArgs {
    fn validate(&self) -> Result<(), String> {
        if self.regions.is_empty() || self.regions.iter().any(|r| r.trim().is_empty()) {
            return Err("--regions needs at least one non-empty label".into());
        }
        if self.nodes_per_region == 0 || self.connections == 0 || self.keys == 0 {
            return Err("--nodes-per-region, --connections and --keys must be positive".into());
        }
        if self.lease_ttl_ms < 100 {
            return Err("--lease-ttl-ms must be at least 100".into());
        }
        self.persistence
            .parse::<liege::cluster::Persistence>()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A no-op server child process, killed on drop.
struct NoopServer(Child);

impl Drop for NoopServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What is under test: a cluster (and its store), or the no-op baseline.
enum Target {
    Cluster { cluster: Cluster, store: StoreSetup },
    Noop(NoopServer, SocketAddr),
}

impl Target {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Target::Cluster { cluster, .. } => cluster.nodes.iter().map(|n| n.http).collect(),
            Target::Noop(_, addr) => vec![*addr],
        }
    }

    fn server_pids(&self) -> Vec<u32> {
        match self {
            Target::Cluster { cluster, .. } => cluster
                .nodes
                .iter()
                .filter_map(|n| n.pid())
                .map(|p| p as u32)
                .collect(),
            Target::Noop(child, _) => vec![child.0.id()],
        }
    }

    fn store_pid(&self) -> Option<u32> {
        match self {
            Target::Cluster { store, .. } => store.harness().and_then(|h| h.server_pid()),
            Target::Noop(..) => None,
        }
    }

    fn describe(&self, args: &BenchArgs) -> String {
        match self {
            Target::Noop(..) => "the no-op in-memory HTTP counter (hyper)".into(),
            Target::Cluster { cluster, store } => format!(
                "{} node(s) in {} region(s) ({}), {} store, {} persistence{}",
                cluster.nodes.len(),
                args.regions.len(),
                args.regions.join(","),
                store.label(),
                args.persistence,
                match args.write_linger_ms {
                    Some(ms) => format!(", write linger {ms} ms"),
                    None => String::new(),
                }
            ),
        }
    }
}

/// CPU seconds of (nodes, store, this process) at one moment.
fn cpu_now(target: &Target) -> (f64, f64, f64) {
    let nodes = target
        .server_pids()
        .into_iter()
        .map(cpu::process_seconds)
        .sum();
    let store = target.store_pid().map_or(0.0, cpu::tree_seconds);
    (nodes, store, cpu::process_seconds(std::process::id()))
}

async fn start_noop(run_dir: &std::path::Path, client: &Client) -> anyhow::Result<Target> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(run_dir.join("noop.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench-noop", "--http", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the no-op server")?;
    let server = NoopServer(child);
    for _ in 0..300 {
        if client.ready(addr).await {
            return Ok(Target::Noop(server, addr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(SetupError("the no-op server did not answer".into()).into())
}

async fn start_cluster(
    args: &BenchArgs,
    run_dir: &std::path::Path,
    client: &Client,
) -> anyhow::Result<Target> {
    let store = tokio::task::block_in_place(|| {
        StoreSetup::from_args(args.store.as_deref(), args.postgres_temp, run_dir)
    })?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let template = NodeTemplate {
        exe: std::env::current_exe().context("finding the liege executable")?,
        store: store.node_url(),
        secret,
        lease_ttl_ms: args.lease_ttl_ms,
        partitions: args.partitions,
        run_dir: run_dir.to_path_buf(),
        audit: false,
        extra: {
            let mut extra = vec!["--persistence".into(), args.persistence.clone()];
            if let Some(n) = args.max_activations {
                extra.extend(["--max-activations".into(), n.to_string()]);
            }
            if let Some(ms) = args.write_linger_ms {
                extra.extend(["--write-linger-ms".into(), ms.to_string()]);
            }
            extra
        },
    };
    let cluster = Cluster::start(&template, &args.regions, args.nodes_per_region, client).await?;
    let members: Vec<(String, SocketAddr)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.http))
        .collect();
    observe::balance(client, &members, Duration::from_secs(30))
        .await
        .map_err(|why| SetupError(format!("the cluster did not settle: {why}")))?;
    Ok(Target::Cluster { cluster, store })
}

/// Runs the benchmark: exit 0 when it ran (errors are reported, not judged), 1 when the
/// counters read back afterwards disagree with what was acknowledged, 2 on a usage or setup
/// error.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let run_dir = match &args.run_dir {
        Some(d) => {
            ensure_dir(d)?;
            d.clone()
        }
        None => fresh_run_dir()?,
    };
    let client = Client::new();
    let target = if args.noop {
        start_noop(&run_dir, &client).await?
    } else {
        start_cluster(&args, &run_dir, &client).await?
    };
    let what = target.describe(&args);
    eprintln!(
        "liege bench — {what}; {} connections, {} keys, {:?} (+{:?} warm-up)",
        args.connections, args.keys, args.duration, args.warmup
    );
    let tag: String = (0..4)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let keys: Arc<Vec<String>> =
        Arc::new((0..args.keys).map(|i| format!("bench-{tag}-{i}")).collect());
    let spec_keys = keys.clone();
    let owners = match (&target, args.route) {
        (Target::Cluster { cluster, .. }, Route::Owner) => {
            let names = observe::owners(&client, &target.addrs(), &keys).await;
            let index: Vec<usize> = names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    cluster
                        .nodes
                        .iter()
                        .position(|n| n.name == *name)
                        .unwrap_or(k % cluster.nodes.len())
                })
                .collect();
            Some(Arc::new(index))
        }
        _ => None,
    };
    let spec = load::LoadSpec {
        targets: target.addrs(),
        connections: args.connections,
        keys,
        warmup: args.warmup,
        duration: args.duration,
        idempotency: args.idempotency,
        token: std::env::var("LIEGE_API_TOKEN").ok(),
        owners,
    };
    let (measured, window) = tokio::join!(
        load::run(spec),
        observe_window(&target, &client, args.warmup, args.duration)
    );
    let verified = verify(&target, &client, &spec_keys, &measured).await;
    report(&args, &target, &run_dir, &measured, &window, &verified)?;
    if matches!(verified, Some(Err(_))) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the measured window cost, besides the load's own figures.
struct Window {
    /// CPU seconds of the nodes (or the no-op server) in the window.
    node_cpu: f64,
    /// CPU seconds of the store server (0 without a server of ours).
    store_cpu: f64,
    /// CPU seconds of this process: the load generator.
    client_cpu: f64,
    /// The nodes' group commits; `None` for the no-op or when a node's metrics were unreadable.
    commits: Option<Commits>,
}

/// Samples CPU times and group commits at the edges of the measured window, which starts
/// after `warmup` and lasts `duration`.
async fn observe_window(
    target: &Target,
    client: &Client,
    warmup: Duration,
    duration: Duration,
) -> Window {
    tokio::time::sleep(warmup).await;
    let (cpu_before, commits_before) = (cpu_now(target), commits_now(target, client).await);
    tokio::time::sleep(duration).await;
    let (cpu_after, commits_after) = (cpu_now(target), commits_now(target, client).await);
    Window {
        node_cpu: cpu_after.0 - cpu_before.0,
        store_cpu: cpu_after.1 - cpu_before.1,
        client_cpu: cpu_after.2 - cpu_before.2,
        commits: commits_before
            .zip(commits_after)
            .map(|(before, after)| after.since(before)),
    }
}

/// Prints the report and writes it to `--json` if asked.
fn report(
    args: &BenchArgs,
    target: &Target,
    run_dir: &std::path::Path,
    measured: &load::Measured,
    window: &Window,
    verified: &Option<Result<i64, String>>,
) -> anyhow::Result<()> {
    let what = target.describe(args);
    let secs = args.duration.as_secs_f64();
    let rate = measured.acked as f64 / secs;
    let q = |p: f64| measured.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let nodes = target.server_pids().len();
    let Window {
        node_cpu,
        store_cpu,
        client_cpu,
        commits,
    } = window;
    let store_us_per_ack = (measured.acked > 0 && target.store_pid().is_some())
        .then(|| store_cpu * 1e6 / measured.acked as f64);
    println!("liege bench — {what}");
    println!(
        "  {} connections ({} routing), {} keys, {:.1} s measured after {:.1} s of warm-up",
        args.connections,
        match args.route {
            Route::Entry => "entry-node",
            Route::Owner => "owner",
        },
        args.keys,
        secs,
        args.warmup.as_secs_f64()
    );
    println!(
        "  acknowledged  {rate:.0}/s ({} in {secs:.1} s), errors {}",
        measured.acked, measured.errors
    );
    println!(
        "  latency       p50 {:.2} ms · p90 {:.2} · p99 {:.2} · max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        measured.latency_us.max() as f64 / 1000.0
    );
    let store_part = if target.store_pid().is_some() {
        format!(" · store {:.2} cores", store_cpu / secs)
    } else {
        String::new()
    };
    println!(
        "  cpu           {} {:.2} cores ({:.2} each){store_part} · load generator {:.2} cores",
        if args.noop { "server" } else { "nodes" },
        node_cpu / secs,
        node_cpu / secs / nodes.max(1) as f64,
        client_cpu / secs
    );
    if let Some(us) = store_us_per_ack {
        println!("  store cpu per acknowledged write  {us:.1} µs");
    }
    match commits {
        Some(c) if c.commits > 0.0 => println!(
            "  group commits {:.0}/s, {:.1} writes per commit, {:.2} ms per commit",
            c.commits / secs,
            c.writes_per_commit(),
            c.ms_per_commit()
        ),
        Some(_) => println!("  group commits none in the window"),
        None => {}
    }
    for s in &measured.samples {
        println!("  error sample: {s}");
    }
    match verified {
        Some(Ok(sum)) => println!(
            "  verified      counters sum to {sum}: every acknowledged increment applied ({} acknowledged, {} of unknown outcome, warm-up included)",
            measured.total_acked, measured.total_failed
        ),
        Some(Err(why)) => println!("  FAILED        {why}"),
        None => {}
    }
    println!("  run dir: {}", run_dir.display());
    let Some(path) = &args.json else {
        return Ok(());
    };
    let report = json!({
        "target": what,
        "nodes": nodes,
        "regions": args.regions,
        "connections": args.connections,
        "route": format!("{:?}", args.route).to_lowercase(),
        "keys": args.keys,
        "duration_s": secs,
        "acknowledged": measured.acked,
        "acknowledged_per_s": rate,
        "errors": measured.errors,
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                       "max": measured.latency_us.max() as f64 / 1000.0},
        "cpu_cores": {"nodes": node_cpu / secs, "store": store_cpu / secs,
                      "load_generator": client_cpu / secs},
        "store_cpu_us_per_ack": store_us_per_ack,
        "group_commits": commits.as_ref().map(|c| json!({
            "commits": c.commits, "writes": c.writes,
            "writes_per_commit": c.writes_per_commit(), "ms_per_commit": c.ms_per_commit(),
        })),
        "verified": verified.as_ref().map(|v| v.is_ok()),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Group commits of checkpoints, summed over the nodes, from their
/// `liege_store_commit_batch_size` histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Commits {
    /// Group commits (histogram count).
    commits: f64,
    /// Checkpoint writes they carried (histogram sum).
    writes: f64,
    /// Seconds the commits took, each from the writer's call to the store's answer
    /// (`liege_store_commit_duration_seconds` sum).
    seconds: f64,
}

impl Commits {
    /// What was committed between `before` and `self`.
    fn since(self, before: Commits) -> Commits {
        Commits {
            commits: self.commits - before.commits,
            writes: self.writes - before.writes,
            seconds: self.seconds - before.seconds,
        }
    }

    /// Mean time of one commit in milliseconds; 0 without commits.
    fn ms_per_commit(&self) -> f64 {
        if self.commits > 0.0 {
            self.seconds * 1000.0 / self.commits
        } else {
            0.0
        }
    }

    /// Mean batch size; 0 without commits.
    fn writes_per_commit(&self) -> f64 {
        if self.commits > 0.0 {
            self.writes / self.commits
        } else {
            0.0
        }
    }

    /// Adds one node's exposition; `None` if it lacks either commit histogram.
    fn add(&mut self, metrics: &str) -> Option<()> {
        // Every series of the name counts, whatever its labels.
        let sample = |name: &str| liege::telemetry::sample_sum(metrics, name, &[]);
        let writes = sample("liege_store_commit_batch_size_sum")?;
        let commits = sample("liege_store_commit_batch_size_count")?;
        let seconds = sample("liege_store_commit_duration_seconds_sum")?;
        self.writes += writes;
        self.commits += commits;
        self.seconds += seconds;
        Some(())
    }
}

/// Every node's group commits so far; `None` for the no-op baseline or when a node's
/// `/metrics` cannot be read (a partial sum would be wrong).
async fn commits_now(target: &Target, client: &Client) -> Option<Commits> {
    let Target::Cluster { .. } = target else {
        return None;
    };
    let mut total = Commits::default();
    for addr in target.addrs() {
        let text = client
            .get_text(addr, "/metrics", Duration::from_secs(2))
            .await
            .ok()?;
        total.add(&text)?;
    }
    Some(total)
}

/// Reads every counter back from the cluster and checks that their sum covers every
/// acknowledged increment and no more than those plus the ones of unknown outcome. `None` for
/// the no-op baseline, which keeps nothing worth checking.
async fn verify(
    target: &Target,
    client: &Client,
    keys: &Arc<Vec<String>>,
    measured: &load::Measured,
) -> Option<Result<i64, String>> {
    let Target::Cluster { .. } = target else {
        return None;
    };
    let finals = observe::finals(client, &target.addrs(), keys).await;
    let unreadable = finals.iter().filter(|v| v.is_none()).count();
    if unreadable > 0 {
        return Some(Err(format!("{unreadable} counters could not be read back")));
    }
    let sum: i64 = finals.into_iter().flatten().sum();
    let (acked, failed) = (measured.total_acked as i64, measured.total_failed as i64);
    Some(if sum < acked {
        Err(format!(
            "counters sum to {sum}, fewer than the {acked} acknowledged increments: updates lost"
        ))
    } else if sum > acked + failed {
        Err(format!(
            "counters sum to {sum}, more than the {acked} acknowledged plus {failed} failed increments: updates applied twice"
        ))
    } else {
        Ok(sum)
    })
}

#[cfg(test)]
mod tests {
    use super::Commits;

    const EXPOSITION: &str =
        "# HELP liege_store_commit_batch_size Checkpoint writes per group commit.
# TYPE liege_store_commit_batch_size histogram
liege_store_commit_batch_size_sum_other 9.0
liege_store_commit_batch_size_count_total 7
liege_store_commit_batch_size_sum{node=\"a\",region=\"iad\"} 120.0
liege_store_commit_batch_size_count{node=\"a\",region=\"iad\"} 15
liege_store_commit_batch_size_bucket{node=\"a\",region=\"iad\",le=\"1.0\"} 3
liege_store_commit_duration_seconds_sum{node=\"a\",region=\"iad\"} 0.03
liege_store_commit_duration_seconds_count{node=\"a\",region=\"iad\"} 15
";

    #[test]
    fn group_commits_are_summed_over_nodes_and_counted_from_the_window() {
        let mut before = Commits::default();
        before.add(EXPOSITION).expect("histogram present");
        let mut after = Commits::default();
        after.add(EXPOSITION).expect("histogram present");
        after
            .add(
                &EXPOSITION
                    .replace("} 120.0", "} 200.0")
                    .replace("} 15\n", "} 25\n")
                    .replace("} 0.03\n", "} 0.05\n"),
            )
            .expect("histogram present");
        // Two series of one name (say, two label sets) add up.
        let mut two = Commits::default();
        two.add(&format!(
            "{EXPOSITION}liege_store_commit_batch_size_sum{{node=\"b\"}} 30.0\n\
             liege_store_commit_batch_size_count{{node=\"b\"}} 5\n\
             liege_store_commit_duration_seconds_sum{{node=\"b\"}} 0.01\n"
        ))
        .expect("histograms present");
        assert_eq!((two.commits, two.writes), (20.0, 150.0));
        assert!((two.seconds - 0.04).abs() < 1e-9, "{two:?}");
        // Without labels, as another exporter might write them.
        let mut plain = Commits::default();
        plain
            .add(
                "liege_store_commit_batch_size_sum 6.0\nliege_store_commit_batch_size_count 2\n\
                 liege_store_commit_duration_seconds_sum 0.004\n",
            )
            .expect("histograms present");
        assert_eq!(plain.writes_per_commit(), 3.0);
        assert!((plain.ms_per_commit() - 2.0).abs() < 1e-9);
        assert_eq!((after.commits, after.writes), (40.0, 320.0));
        let window = after.since(before);
        assert_eq!(window.commits, 25.0);
        assert_eq!(window.writes_per_commit(), 8.0);
        assert!((window.ms_per_commit() - 2.0).abs() < 1e-9, "{window:?}");
        assert_eq!(Commits::default().writes_per_commit(), 0.0);
        assert_eq!(Commits::default().ms_per_commit(), 0.0);
        assert!(Commits::default().add("# no histogram here\n").is_none());
        // Batch sizes without durations would make a mean of nothing.
        assert!(Commits::default()
            .add("liege_store_commit_batch_size_sum 6.0\nliege_store_commit_batch_size_count 2\n")
            .is_none());
    }
}
