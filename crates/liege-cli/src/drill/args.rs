//! `liege drill` flags, their defaults, and the pass criteria derived from them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The fault a drill injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// SIGKILL every node of one region (`--kill-region`, default: the region owning most keys).
    RegionKill,
    /// SIGKILL the single node owning the most keys.
    NodeKill,
    /// SIGSTOP the node owning the most keys for 3 × TTL, then SIGCONT: it must self-fence.
    Pause,
    /// Stop the throwaway Postgres server for 2 × TTL, then start it again (`--postgres-temp`).
    StoreOutage,
    /// Restart every node in turn with SIGTERM (graceful handoff), on the same ports: zero client errors expected.
    RollingRestart,
    /// Drain the region owning the most keys through the admin API (`--kill-region` picks
    /// another), hold it drained, then undrain it: zero client errors, every partition off
    /// the region while drained and back after.
    RegionDrain,
}

impl Scenario {
    /// The flag spelling, for reports.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Scenario::RegionKill => "region-kill",
            Scenario::NodeKill => "node-kill",
            Scenario::Pause => "pause",
            Scenario::StoreOutage => "store-outage",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::RegionDrain => "region-drain",
        }
    }

    /// Planned moves, not failures: recovery is the delay of retried requests.
    pub(crate) fn is_planned(self) -> bool {
        matches!(self, Scenario::RollingRestart | Scenario::RegionDrain)
    }
}

/// Options of `liege drill`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DrillArgs {
    /// Comma-separated region labels; each gets `--nodes-per-region` nodes.
    #[arg(long, value_delimiter = ',', default_value = "iad,ord,lax")]
    pub(crate) regions: Vec<String>,
    /// Nodes started in every region.
    #[arg(long, default_value_t = 2)]
    pub(crate) nodes_per_region: usize,
    /// Distinct keys (counters) driven by the load.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// Length of the load after the fault, e.g. `10s` or `1500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Client deadline per logical increment, retries included (default 3 × TTL + 1000).
    #[arg(long)]
    pub(crate) deadline_ms: Option<u64>,
    /// The fault to inject.
    #[arg(long, value_enum, default_value = "region-kill")]
    pub(crate) scenario: Scenario,
    /// Region killed by `region-kill` or drained by `region-drain` (default: the one owning
    /// the most keys).
    #[arg(long)]
    pub(crate) kill_region: Option<String>,
    /// With `region-kill` / `node-kill`: right after the kill, declare every killed node down
    /// through the admin API (`POST /admin/down`), the failure-detector hook; survivors then
    /// claim at once instead of waiting out the lease (default pass criterion p99 ≤ 300 ms).
    #[arg(long)]
    pub(crate) declare_dead: bool,
    /// Drill an existing deployment instead of starting nodes: the HTTP base URLs of its nodes
    /// (`http://host:port`, comma-separated). Names, regions and owners are read from the
    /// nodes' own endpoints; there is no fencing audit (the drill has no access to the store).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["store", "postgres_temp"])]
    pub(crate) target: Vec<String>,
    /// With `--target` and `region-kill` / `node-kill`: the operator's command that injects the
    /// fault (run with `sh -c`; e.g. `fly machine stop ...`). It gets the chosen nodes in
    /// `LIEGE_DRILL_NODES` (comma-separated), their region in `LIEGE_DRILL_REGION` and the
    /// scenario in `LIEGE_DRILL_SCENARIO`, and must exit 0.
    #[arg(long, requires = "target")]
    pub(crate) fault_cmd: Option<String>,
    /// API token of the nodes (`--target` deployments; sent as a bearer token). Also read from
    /// `LIEGE_API_TOKEN`; never printed.
    #[arg(long, env = "LIEGE_API_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Store shared by the nodes: `sqlite:PATH` or `postgres://...` (default: a fresh
    /// SQLite file in the run directory).
    #[arg(long, conflicts_with = "postgres_temp")]
    pub(crate) store: Option<String>,
    /// Start a throwaway Postgres server from local binaries for the run.
    #[arg(long)]
    pub(crate) postgres_temp: bool,
    /// Lease TTL of every node, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) lease_ttl_ms: u64,
    /// Partition count passed to the nodes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) partitions: u32,
    /// Concurrent load workers, each owning a slice of the keys (default: one per key, at
    /// most 2048, so a key waiting for its failover never holds up another key).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Target rate of the continue phase, in logical increments per second over all keys
    /// (0: as fast as the cluster answers).
    #[arg(long, default_value_t = 6000)]
    pub(crate) rate: u64,
    /// Directory for the store, node logs and reports (default: a fresh temp dir, kept).
    #[arg(long)]
    pub(crate) run_dir: Option<PathBuf>,
    /// Write the machine-readable result here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write a self-contained HTML report (timeline and recovery histogram) here.
    #[arg(long)]
    pub(crate) html: Option<PathBuf>,
    /// Pass criterion: recovery p99 ceiling in ms (default 2 × TTL + 500).
    #[arg(long)]
    pub(crate) max_recovery_p99_ms: Option<u64>,
    /// Pass criterion: tolerate client errors (default: zero allowed when deadline ≥ 3 × TTL).
    #[arg(long)]
    pub(crate) allow_errors: bool,
    /// Pass criterion: tolerate this many lost or double-applied increments (default 0).
    #[arg(long, default_value_t = 0)]
    pub(crate) allow_inexact: u64,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// With `rolling-restart`: start the nodes from this older `liege` executable and
    /// restart each one onto this one, a rolling upgrade under load (the rolling restart's
    /// criteria apply: zero client errors, every increment applied exactly once).
    #[arg(long, conflicts_with = "target")]
    pub(crate) upgrade_from: Option<PathBuf>,
}

/// Thresholds a run is judged by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Criteria {
    /// Recovery p99 must not exceed this.
    pub(crate) max_recovery_p99_ms: u64,
    /// Client errors allowed (None: any number).
    pub(crate) max_errors: Option<u64>,
    /// Lost plus double-applied increments allowed.
    pub(crate) max_inexact: u64,
    /// For a store outage: the recovery work allowed after the store returns, as
    /// (failovers per node, partition claims in percent of the partitions).
    pub(crate) max_recovery_work: Option<(u64, u64)>,
}

impl DrillArgs {
    /// Lease TTL as a duration.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// Load workers: `--workers`, or one per key (at most 2048).
    pub(crate) fn workers(&self) -> usize {
        self.workers.unwrap_or(self.keys.min(2048)).max(1)
    }

    /// Pause between two increments of one worker in the continue phase, for `--rate`.
    pub(crate) fn pace(&self) -> Option<Duration> {
        (self.rate > 0).then(|| {
            Duration::from_secs_f64(self.workers().min(self.keys) as f64 / self.rate as f64)
        })
    }

    /// The client deadline per logical increment.
    pub(crate) fn deadline(&self) -> Duration {
        // A store outage lasts 2 × TTL before the store returns: give callers room to wait.
        let default = match self.scenario {
            Scenario::StoreOutage => 6 * self.lease_ttl_ms + 1000,
            _ => 3 * self.lease_ttl_ms + 1000,
        };
        Duration::from_millis(self.deadline_ms.unwrap_or(default))
    }

    /// The thresholds, defaults filled in.
    pub(crate) fn criteria(&self) -> Criteria {
        let strict = !self.allow_errors && self.deadline() >= 3 * self.ttl();
        let outage = self.scenario == Scenario::StoreOutage;
        // After a store outage nodes only rejoin and take their own partitions back: every
        // key answers within one TTL of the store's return.
        let default_p99 = if outage {
            self.lease_ttl_ms
        } else if self.declare_dead {
            // Nobody waits for the lease: detection is the operator's call, claims are at once.
            300
        } else {
            2 * self.lease_ttl_ms + 500
        };
        Criteria {
            max_recovery_p99_ms: self.max_recovery_p99_ms.unwrap_or(default_p99),
            max_errors: strict.then_some(0),
            max_inexact: self.allow_inexact,
            max_recovery_work: outage.then_some((1, 150)),
        }
    }

    /// Rejects combinations that cannot run; the message is shown as a usage error.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.regions.is_empty() || self.regions.iter().any(|r| r.trim().is_empty()) {
            return Err("--regions needs at least one non-empty label".into());
        }
        let mut sorted = self.regions.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.regions.len() {
            return Err("--regions lists a region twice".into());
        }
        if self.nodes_per_region == 0 || self.keys == 0 || self.workers == Some(0) {
            return Err("--nodes-per-region, --keys and --workers must be positive".into());
        }
        if self.lease_ttl_ms < 100 {
            return Err("--lease-ttl-ms must be at least 100".into());
        }
        if self.partitions == 0 {
            return Err("--partitions must be positive".into());
        }
        if self.declare_dead && !matches!(self.scenario, Scenario::RegionKill | Scenario::NodeKill)
        {
            return Err("--declare-dead goes with --scenario region-kill or node-kill".into());
        }
        if self.upgrade_from.is_some() && self.scenario != Scenario::RollingRestart {
            return Err("--upgrade-from goes with --scenario rolling-restart".into());
        }
        if let Some(exe) = &self.upgrade_from {
            if !exe.is_file() {
                return Err(format!(
                    "--upgrade-from: no executable at {}",
                    exe.display()
                ));
            }
        }
        if !self.target.is_empty() {
            return self.validate_target();
        }
        let nodes = self.regions.len() * self.nodes_per_region;
        match self.scenario {
            Scenario::RegionKill if self.regions.len() < 2 => {
                return Err("region-kill needs at least two regions".into())
            }
            Scenario::NodeKill | Scenario::Pause if nodes < 2 => {
                return Err(format!(
                    "{} needs at least two nodes",
                    self.scenario.label()
                ))
            }
            _ => {}
        }
        if let Some(r) = &self.kill_region {
            if !self.regions.contains(r) {
                return Err(format!("--kill-region {r} is not one of --regions"));
            }
        }
        Ok(())
    }
}

impl DrillArgs {
    /// `--target` runs: URLs that parse, a fault the drill can inject into a deployment.
    fn validate_target(&self) -> Result<(), String> {
        for url in &self.target {
            target_addr(url)?;
        }
        match (self.scenario, &self.fault_cmd) {
            (Scenario::RegionKill | Scenario::NodeKill, Some(cmd)) if !cmd.trim().is_empty() => {
                Ok(())
            }
            (Scenario::RegionKill | Scenario::NodeKill, _) => Err(format!(
                "--target with {} needs --fault-cmd: the command that kills the chosen nodes",
                self.scenario.label()
            )),
            (Scenario::RegionDrain, None) => Ok(()),
            (Scenario::RegionDrain, Some(_)) => {
                Err("region-drain drains through the admin API: drop --fault-cmd".into())
            }
            (other, _) => Err(format!(
                "--target supports region-kill, node-kill and region-drain, not {}",
                other.label()
            )),
        }
    }
}

/// The socket address of a `--target` URL (`http://host:port`, an optional trailing `/`).
pub(crate) fn target_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--target {url:?}: use http://host:port (the drill's client speaks plain HTTP)")
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(format!("--target {url:?}: give only http://host:port"));
    }
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("--target {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {url:?}: no address"))
}

/// [`parse_duration`], or zero (`0`, `0s`, `0ms`): for waits that may be skipped.
pub(crate) fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if matches!(s.trim(), "0" | "0s" | "0ms") {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Parses `10s`, `1500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 10s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!("duration {s:?} must be between 1ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_or_without_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn target_urls_name_a_host_and_port() {
        assert_eq!(
            target_addr("http://127.0.0.1:8080/").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(target_addr("http://[::1]:9000").unwrap().port(), 9000);
        assert_eq!(target_addr("http://127.0.0.1").unwrap().port(), 80);
        assert!(target_addr("https://app.fly.dev").is_err());
        assert!(target_addr("http://127.0.0.1:8080/v1").is_err());
        assert!(target_addr("127.0.0.1:8080").is_err());
    }
}
