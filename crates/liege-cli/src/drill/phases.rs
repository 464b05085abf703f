//! The drill's script: start → settle → warm → record owners → fault → continue → converge →
//! reconcile → verify → report. Each phase is announced on stderr.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::args::{DrillArgs, Scenario};
use super::client::Client;
use super::load::{self, Entry, KeyState, LoadSpec, Phase, Until, Worker};
use super::progress::Progress;
use super::report::{DrainOutcome, Findings};
use super::store::StoreSetup;
use super::topology::{ensure_dir, fresh_run_dir, Cluster, NodeTemplate};
use super::{fault, html, ledger, measure, observe, SetupError};

/// Timers armed per run (at most one per key).
const TIMERS: usize = 200;

fn liege_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Waits (until 10 s past their due time at most) for every timer to have fired, then counts
/// how often each did.
async fn check_timers(
    client: &Client,
    alive: &[(String, SocketAddr)],
    ids: &Arc<Vec<String>>,
    due_ms: i64,
    unarmed: usize,
) -> super::report::TimerCheck {
    let addrs: Vec<SocketAddr> = alive.iter().map(|(_, a)| *a).collect();
    let give_up = due_ms + 10_000;
    loop {
        let fired = observe::timers_fired(client, &addrs, ids).await;
        let pending = fired.iter().filter(|f| **f == Some(0)).count();
        if pending <= unarmed || liege_now_ms() > give_up {
            let count = |want: fn(&Option<u64>) -> bool| fired.iter().filter(|f| want(f)).count();
            return super::report::TimerCheck {
                armed: ids.len() - unarmed,
                once: count(|f| *f == Some(1)),
                never: count(|f| *f == Some(0)).saturating_sub(unarmed),
                more: count(|f| f.is_some_and(|n| n > 1)),
                unreadable: count(Option::is_none),
                unarmed,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Entry nodes among `cluster`'s nodes whose name passes `keep`.
fn entries(cluster: &Cluster, regions: &[String], keep: impl Fn(&str) -> bool) -> Vec<Entry> {
    cluster
        .nodes
        .iter()
        .filter(|n| !n.killed && keep(&n.name))
        .map(|n| Entry {
            addr: n.http,
            region: regions.iter().position(|r| *r == n.region).unwrap_or(0) as u8,
        })
        .collect()
}

fn members(cluster: &Cluster, keep: impl Fn(&str) -> bool) -> Vec<(String, SocketAddr)> {
    cluster
        .nodes
        .iter()
        .filter(|n| !n.killed && keep(&n.name))
        .map(|n| (n.name.clone(), n.http))
        .collect()
}

/// Runs one load phase over every worker with a progress bar.
async fn phase(
    workers: Vec<Worker>,
    spec: &mut LoadSpec,
    p: Phase,
    until: Until,
    progress: &Progress,
    label: &str,
    span: (Option<u64>, Option<Duration>),
) -> anyhow::Result<Vec<Worker>> {
    spec.phase = p;
    spec.done = Arc::new(AtomicU64::new(0));
    spec.failed = Arc::new(AtomicU64::new(0));
    let bar = progress.bar(
        label,
        span.0,
        span.1,
        spec.done.clone(),
        spec.failed.clone(),
    );
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(w.run(spec.clone(), until)))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("a load worker failed")?);
    }
    bar.finish();
    Ok(out)
}

/// The whole drill; see the module docs.
pub(crate) async fn drill(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let progress = Progress::new(args.no_progress, t0);
    let run_dir = match &args.run_dir {
        Some(d) => {
            ensure_dir(d)?;
            d.canonicalize()
                .with_context(|| format!("resolving {}", d.display()))?
        }
        None => fresh_run_dir()?,
    };
    progress.say(format!("run directory: {}", run_dir.display()));
    let attached = !args.target.is_empty();
    if args.postgres_temp {
        progress.say("store: starting a throwaway PostgreSQL from the local server binaries");
    }
    // Against an existing deployment the drill neither starts nodes nor sees the store.
    let store = match attached {
        true => None,
        false => Some(tokio::task::block_in_place(|| {
            StoreSetup::from_args(args.store.as_deref(), args.postgres_temp, &run_dir)
        })?),
    };
    let harness = store.as_ref().and_then(|s| s.harness());
    if args.scenario == Scenario::StoreOutage && harness.is_none() {
        return Err(SetupError(
            "--scenario store-outage needs a store the drill controls: use --postgres-temp".into(),
        )
        .into());
    }
    let store_label = store.as_ref().map_or("existing deployment", |s| s.label());
    let exe = std::env::current_exe().context("finding the liege executable")?;
    // A rolling upgrade starts the nodes from the older executable; restarts use this one.
    let first_exe = args.upgrade_from.clone().unwrap_or_else(|| exe.clone());
    let template = store.as_ref().map(|store| NodeTemplate {
        exe: first_exe,
        store: store.node_url(),
        secret: random_hex(32),
        lease_ttl_ms: args.lease_ttl_ms,
        partitions: args.partitions,
        run_dir: run_dir.clone(),
        audit: true,
        extra: Vec::new(),
    });
    let client = Client::with_token(args.token.as_deref());
    let mut cluster = match &template {
        Some(template) => {
            progress.say(format!(
                "start: {} nodes ({} × {}), {store_label} store, TTL {} ms",
                args.regions.len() * args.nodes_per_region,
                args.regions.join(","),
                args.nodes_per_region,
                args.lease_ttl_ms
            ));
            if let Some(older) = &args.upgrade_from {
                progress.say(format!(
                    "start: from {}; each restart upgrades a node to {}",
                    older.display(),
                    exe.display()
                ));
            }
            Cluster::start(template, &args.regions, args.nodes_per_region, &client).await?
        }
        None => {
            let cluster = Cluster::attach(&args.target, &client).await?;
            progress.say(format!(
                "attach: {} nodes of an existing deployment ({})",
                cluster.nodes.len(),
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("{} in {}", n.name, n.region))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            cluster
        }
    };
    let regions: Vec<String> = match attached {
        false => args.regions.clone(),
        true => {
            let mut seen = Vec::new();
            for n in &cluster.nodes {
                if !seen.contains(&n.region) {
                    seen.push(n.region.clone());
                }
            }
            seen
        }
    };
    let total_nodes = cluster.nodes.len();
    let settle = observe::balance(
        &client,
        &members(&cluster, |_| true),
        Duration::from_secs(30),
    )
    .await
    .map_err(|why| SetupError(format!("the cluster did not settle: {why}")))?;
    progress.say(format!(
        "settled: every node ready, every partition at its desired owner ({} ms)",
        ms(settle)
    ));

    // warm
    let run_tag = random_hex(4);
    let keys: Arc<Vec<String>> = Arc::new(
        (0..args.keys)
            .map(|i| format!("drill-{run_tag}-{i}"))
            .collect(),
    );
    let ttl = args.ttl();
    let mut spec = LoadSpec {
        keys: keys.clone(),
        run_tag: run_tag.clone().into(),
        deadline: args.deadline(),
        attempt_cap: 2 * ttl + Duration::from_millis(500),
        t0,
        entries: Arc::new(RwLock::new(entries(&cluster, &regions, |_| true))),
        client: client.clone(),
        phase: Phase::Warm,
        pace: None,
        done: Arc::default(),
        failed: Arc::default(),
    };
    progress.say(format!(
        "warm: one increment per key through every region ({} keys)",
        args.keys
    ));
    let workers = load::workers(args.keys, args.workers());
    let span = (Some(args.keys as u64), None);
    let workers = phase(
        workers,
        &mut spec,
        Phase::Warm,
        Until::OncePerKey,
        &progress,
        "warm",
        span,
    )
    .await?;

    // arm timers: durable alarms due in the middle of the load after the fault, which must
    // each fire exactly once whatever the fault does to their owners
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.http).collect();
    let timer_ids: Arc<Vec<String>> = Arc::new(
        (0..args.keys.min(TIMERS))
            .map(|i| format!("drill-{run_tag}-t{i}"))
            .collect(),
    );
    let due_ms = liege_now_ms() + 1_000 + ms(args.duration) as i64 / 3;
    let unarmed = observe::arm_timers(&client, &addrs, &timer_ids, due_ms).await;
    progress.say(format!(
        "timers: {} armed to fire {} ms after the fault phase starts",
        timer_ids.len() - unarmed,
        ms(args.duration) / 3
    ));

    // ledgers: journal appends, one after another per ledger, through the fault to the end
    // of the load; each must end holding exactly its acknowledged entries
    let ledger_ids: Arc<Vec<String>> = Arc::new(
        (0..args.keys.min(ledger::LEDGERS))
            .map(|i| format!("drill-{run_tag}-l{i}"))
            .collect(),
    );
    let ledgers_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ledgers = ledger::start(&client, &spec.entries, &ledger_ids, &ledgers_stop);
    progress.say(format!(
        "ledgers: appending to {} journals until the load ends",
        ledger_ids.len()
    ));

    // record owners
    let owners = observe::owners(&client, &addrs, &keys).await;
    let per_node = fault::keys_per_node(&owners);
    progress.say(format!("owners: {per_node:?}"));

    // fault
    let targets = fault::choose(&args, &cluster, &per_node)?;
    let hit: BTreeSet<String> = targets.iter().cloned().collect();
    // A store outage hits every key; node faults hit the keys their targets owned.
    let owned_by_target: Vec<bool> = owners
        .iter()
        .map(|o| args.scenario == Scenario::StoreOutage || hit.contains(o))
        .collect();
    *spec
        .entries
        .write()
        .expect("entries lock is never poisoned") = entries(&cluster, &regions, |n| {
        // A rolling restart takes nodes away one at a time, a drained node forwards: clients
        // keep using them all.
        args.scenario.is_planned() || !hit.contains(n)
    });
    let verb = match args.scenario {
        _ if attached && !args.scenario.is_planned() => "run --fault-cmd against",
        Scenario::Pause => "SIGSTOP",
        Scenario::StoreOutage => "stop the store server;",
        Scenario::RollingRestart => "SIGTERM and restart, in turn,",
        Scenario::RegionDrain => "drain through the admin API",
        _ => "SIGKILL",
    };
    progress.say(format!(
        "fault: {} {verb} {} ({} keys)",
        args.scenario.label(),
        targets.join(","),
        owned_by_target.iter().filter(|b| **b).count()
    ));
    let all = members(&cluster, |_| true);
    let events_before = observe::events(&client, &all, None).await;
    let hit_region = targets
        .first()
        .and_then(|t| cluster.nodes.iter().find(|n| n.name == *t))
        .map(|n| n.region.clone())
        .unwrap_or_default();
    // Admin requests go to a node the fault leaves alone.
    let admin_via = cluster
        .nodes
        .iter()
        .find(|n| !hit.contains(&n.name))
        .or(cluster.nodes.first())
        .map(|n| n.http)
        .context("no node to send admin requests to")?;
    let fault_at = Instant::now();
    match harness {
        Some(h) if args.scenario == Scenario::StoreOutage => h.stop().await?,
        _ if args.scenario == Scenario::RollingRestart => {}
        _ if args.scenario == Scenario::RegionDrain => {
            fault::set_drain(&client, admin_via, &hit_region, true).await?
        }
        _ if attached => {
            let cmd = args.fault_cmd.as_deref().unwrap_or_default();
            let took = fault::run_fault_cmd(cmd, args.scenario, &targets, &hit_region).await?;
            progress.say(format!("fault: --fault-cmd exited 0 after {} ms", ms(took)));
            for t in &targets {
                if let Some(n) = cluster.get_mut(t) {
                    n.killed = true;
                }
            }
        }
        _ => fault::strike(&mut cluster, args.scenario, &targets)?,
    }
    if args.declare_dead {
        fault::declare_down(&client, admin_via, &targets).await?;
        progress.say(format!(
            "down: declared {} dead via the admin API {} ms after the fault",
            targets.join(","),
            ms(fault_at.elapsed())
        ));
    }

    // continue (a rolling restart keeps the load on until every node has been restarted)
    let duration = match args.scenario {
        Scenario::RollingRestart => args
            .duration
            .max((2 * ttl + Duration::from_millis(1500)) * targets.len() as u32),
        // Drained, held, undrained and settled again, all under load.
        Scenario::RegionDrain => args.duration.max(4 * ttl + Duration::from_secs(4)),
        _ => args.duration,
    };
    let end = fault_at + duration;
    let span = (None, Some(duration));
    let mut cont_spec = spec.clone();
    cont_spec.pace = args.pace();
    let progress2 = progress.clone();
    let cont = tokio::spawn(async move {
        phase(
            workers,
            &mut cont_spec,
            Phase::Continue,
            Until::Deadline(end),
            &progress2,
            "continue",
            span,
        )
        .await
    });
    if args.scenario == Scenario::Pause {
        tokio::time::sleep(3 * ttl).await;
        fault::resume(&mut cluster, &targets)?;
        progress.say(format!("resume: SIGCONT {}", targets.join(",")));
    }
    if let (Scenario::RollingRestart, Some(template)) = (args.scenario, &template) {
        let template = NodeTemplate {
            exe: exe.clone(),
            ..template.clone()
        };
        for name in &targets {
            let took = cluster.restart(&template, name, &client).await?;
            progress.say(format!(
                "restart: {name} drained, restarted and ready in {} ms",
                ms(took)
            ));
            // Let its partitions come back before the next one goes.
            tokio::time::sleep(2 * ttl).await;
        }
    }
    let mut drain = None;
    if args.scenario == Scenario::RegionDrain {
        drain = Some(
            drain_and_undrain(
                &client,
                admin_via,
                &cluster,
                &targets,
                &hit_region,
                end,
                &progress,
            )
            .await?,
        );
    }
    // Recovery is measured from the end of a store outage (from the fault otherwise).
    let mut recovery_from = fault_at;
    if let (Scenario::StoreOutage, Some(h)) = (args.scenario, harness) {
        // Long enough for every lease to lapse: all nodes must fence, then rejoin by themselves.
        tokio::time::sleep(2 * ttl).await;
        h.start().await?;
        recovery_from = Instant::now();
        progress.say("resume: store server started again");
    }
    let workers = cont.await.context("the load phase failed")??;
    ledgers_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appends = ledgers.await.context("the ledger appends failed")?;

    // converge
    let alive: Vec<(String, SocketAddr)> = match args.scenario {
        Scenario::Pause | Scenario::RollingRestart | Scenario::RegionDrain => {
            members(&cluster, |_| true)
        }
        _ => members(&cluster, |n| !hit.contains(n)),
    };
    let converge_timeout = Duration::from_secs(10).max(10 * ttl);
    let converged = observe::converge(&client, &alive, converge_timeout)
        .await
        .map(ms);
    match &converged {
        Ok(t) => progress.say(format!("converge: {} nodes agree ({t} ms)", alive.len())),
        Err(why) => progress.say(format!("converge: NOT converged: {why}")),
    }

    // reconcile
    *spec
        .entries
        .write()
        .expect("entries lock is never poisoned") =
        entries(&cluster, &regions, |n| alive.iter().any(|(a, _)| a == n));
    spec.deadline = spec.deadline.max(Duration::from_secs(30));
    let parked = workers
        .iter()
        .flat_map(|w| &w.state)
        .filter(|s| s.pending.is_some())
        .count();
    let workers = if parked > 0 {
        progress.say(format!(
            "reconcile: re-sending {parked} failed increments with their idempotency keys"
        ));
        phase(
            workers,
            &mut spec,
            Phase::Reconcile,
            Until::Parked,
            &progress,
            "reconcile",
            (Some(parked as u64), None),
        )
        .await?
    } else {
        workers
    };

    // verify
    progress.say("verify: reading every counter and timer, the audit and the telemetry");
    let timers = check_timers(&client, &alive, &timer_ids, due_ms, unarmed).await;
    let alive_http: Vec<SocketAddr> = alive.iter().map(|(_, a)| *a).collect();
    let ledgers = ledger::check(&client, &alive_http, &ledger_ids, &appends).await;
    let mut states = vec![KeyState::default(); args.keys];
    let (mut logical, mut attempts) = (Vec::new(), Vec::new());
    for w in workers {
        for (k, s) in w.keys.iter().zip(w.state) {
            states[*k as usize] = s;
        }
        logical.extend(w.logical);
        attempts.extend(w.attempts);
    }
    let alive_addrs: Vec<SocketAddr> = alive.iter().map(|(_, a)| *a).collect();
    let finals = observe::finals(&client, &alive_addrs, &keys).await;
    let fault_us = u64::try_from(recovery_from.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
    let mut recovery = if args.scenario.is_planned() {
        // No key is lost for long in a drain: what clients see is the delay of the requests
        // that had to be retried while partitions moved.
        measure::retried_latency(fault_us, &logical)
    } else {
        measure::recovery(fault_us, &owned_by_target, &logical)
    };
    let events = observe::events_since(
        &events_before,
        observe::events(&client, &alive, Some(&run_dir)).await,
    );
    let audit = match &store {
        Some(store) => Some(match store.audit().await {
            Ok(records) => liege::testing::check_audit(&records).map_err(|v| v.to_string()),
            Err(e) => Err(format!("audit unreadable: {e:#}")),
        }),
        None => None,
    };
    let load_phase = |l: &&load::Logical| l.phase != Phase::Reconcile;
    let findings = Findings {
        scenario: args.scenario.label().into(),
        store: store_label.into(),
        regions: regions.clone(),
        nodes: total_nodes,
        keys: args.keys,
        target_keys: owned_by_target.iter().filter(|b| **b).count(),
        targets: targets.clone(),
        fault_ms: fault_us / 1000,
        recovery: measure::percentiles(&mut recovery.times_ms),
        recovery_ms: recovery.times_ms,
        unrecovered: recovery.unrecovered,
        continuity: measure::continuity(&states, &finals),
        requests: logical.iter().filter(load_phase).count() as u64,
        errors: logical.iter().filter(load_phase).filter(|l| !l.ok).count() as u64,
        attempts: attempts.len() as u64,
        converge_ms: *converged.as_ref().unwrap_or(&0),
        not_converged: converged.err(),
        audit_checked: audit.is_some(),
        audit_writes: audit
            .as_ref()
            .and_then(|a| a.as_ref().ok())
            .copied()
            .unwrap_or(0),
        audit_violation: audit.and_then(Result::err),
        drain,
        timers,
        ledgers,
        self_fenced: match args.scenario {
            Scenario::Pause => Some(
                targets
                    .iter()
                    .filter_map(|t| events.get(t).and_then(|m| m.get("self_fenced")))
                    .sum(),
            ),
            // Every node must have fenced itself while the store was down.
            Scenario::StoreOutage => {
                let fenced = cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        events
                            .get(&n.name)
                            .and_then(|m| m.get("self_fenced"))
                            .is_some_and(|c| *c > 0)
                    })
                    .count();
                Some(if fenced == cluster.nodes.len() {
                    fenced as u64
                } else {
                    0
                })
            }
            _ => None,
        },
        events,
        partitions: args.partitions,
        timeline: measure::timeline(&attempts, regions.len(), 100),
        wall_ms: ms(t0.elapsed()),
        run_dir: run_dir.display().to_string(),
    };
    let verdict = findings.judge(&args.criteria());
    print!("{}", findings.summary(&verdict));
    if let Some(path) = &args.json {
        let doc = serde_json::to_string_pretty(&findings.to_json(&verdict))?;
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&findings, &verdict))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(cluster);
    Ok(if verdict.iter().all(|c| c.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The region-drain scenario after the drain request: wait until no node of the region owns
/// a partition, hold the drain until half the load phase has passed, undrain, and wait until
/// every partition is at its desired owner again (the region's nodes included).
async fn drain_and_undrain(
    client: &Client,
    via: SocketAddr,
    cluster: &Cluster,
    region_nodes: &[String],
    region: &str,
    load_end: Instant,
    progress: &Progress,
) -> anyhow::Result<DrainOutcome> {
    let started = Instant::now();
    let timeout = Duration::from_secs(30);
    let off = fault::wait_owned(client, via, region_nodes, |n| n == 0, timeout)
        .await
        .map(ms);
    match &off {
        Ok(t) => progress.say(format!("drain: {region} owns no partition after {t} ms")),
        Err(why) => progress.say(format!("drain: {region} NOT drained: {why}")),
    }
    // Hold until the middle of what is left of the load, so the drained state sees traffic.
    let left = load_end.saturating_duration_since(Instant::now());
    tokio::time::sleep(left / 2).await;
    fault::set_drain(client, via, region, false).await?;
    let undrained_at = Instant::now();
    progress.say(format!(
        "undrain: {region}, {} ms after the drain",
        ms(started.elapsed())
    ));
    let back = observe::balance(client, &members(cluster, |_| true), timeout)
        .await
        .map(|_| ms(undrained_at.elapsed()));
    match &back {
        Ok(t) => progress.say(format!(
            "undrain: every partition at its desired owner again ({t} ms)"
        )),
        Err(why) => progress.say(format!("undrain: NOT back: {why}")),
    }
    Ok(DrainOutcome { off, back })
}
