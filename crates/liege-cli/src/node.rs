//! `liege node`: run one node until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use liege::cluster::{Node, NodeConfig, Persistence};
use liege::store::{StoreOptions, StoreUrl};
use liege::Agents;
use tokio_util::sync::CancellationToken;

/// Options of `liege node`. Every flag has a `LIEGE_*` environment fallback.
#[derive(Args, Debug, Clone)]
pub(crate) struct NodeArgs {
    /// Node name, unique among live nodes (default: `REGION-FLY_MACHINE_ID` on Fly.io, else
    /// the host name, else `local-1`).
    #[arg(long, env = "LIEGE_NAME")]
    pub(crate) name: Option<String>,
    /// Region label (falls back to FLY_REGION, then "local").
    #[arg(long, env = "LIEGE_REGION")]
    pub(crate) region: Option<String>,
    /// Cluster transport address to bind.
    #[arg(long, env = "LIEGE_LISTEN", default_value = "127.0.0.1:7070")]
    pub(crate) listen: SocketAddr,
    /// Cluster address peers should dial (default: the bound address).
    #[arg(long, env = "LIEGE_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// HTTP API address to bind.
    #[arg(long, env = "LIEGE_HTTP", default_value = "127.0.0.1:8080")]
    pub(crate) http: SocketAddr,
    /// Store: memory:, sqlite:PATH or postgres://... (falls back to DATABASE_URL).
    #[arg(long, env = "LIEGE_STORE")]
    pub(crate) store: Option<String>,
    /// PostgreSQL only: most connections this node opens for reads and writes at once; it
    /// also opens up to 3 for leases and the directory and 1 to listen for changes, so a
    /// cluster of N nodes needs `N × (this + 4)` of the server's `max_connections`.
    #[arg(long, env = "LIEGE_STORE_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) store_pool_size: u16,
    /// Cluster secret (prefer --secret-file or LIEGE_SECRET).
    #[arg(long, env = "LIEGE_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// File holding the cluster secret (trailing newline ignored).
    #[arg(long, env = "LIEGE_SECRET_FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Lease TTL in milliseconds: how long a silent node keeps its partitions.
    #[arg(long, env = "LIEGE_LEASE_TTL_MS", default_value_t = 1000)]
    pub(crate) lease_ttl_ms: u64,
    /// Partition count (fixed when the cluster is created).
    #[arg(long, env = "LIEGE_PARTITIONS", default_value_t = 1024)]
    pub(crate) partitions: u32,
    /// Persistence: durable, interval:MS or on_passivate.
    #[arg(long, env = "LIEGE_PERSISTENCE", default_value = "durable")]
    pub(crate) persistence: Persistence,
    /// Longest a small group commit of checkpoints waits for more writes while the node is in
    /// a stream of commits, in milliseconds (0: never). A write to an idle node never waits.
    #[arg(long, env = "LIEGE_WRITE_LINGER_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub(crate) write_linger_ms: u64,
    /// Idle time before an activation is passivated, in seconds.
    #[arg(long, env = "LIEGE_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub(crate) idle_timeout_secs: u64,
    /// Mailbox bound per key.
    #[arg(long, env = "LIEGE_MAILBOX", default_value_t = 1024)]
    pub(crate) mailbox: usize,
    /// Most activations held at once; past it the least recently used idle ones are
    /// passivated.
    #[arg(long, env = "LIEGE_MAX_ACTIVATIONS", default_value_t = 1_000_000)]
    pub(crate) max_activations: usize,
    /// Most bytes of agent state held at once (checkpoint sizes), e.g. `1GiB`, `512MiB`,
    /// `2000000`; past it the least recently used idle activations are passivated.
    #[arg(long, env = "LIEGE_MAX_STATE_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub(crate) max_state_bytes: usize,
    /// How long a signal id the caller chose (`Idempotency-Key`, a CloudEvent's `id`) is
    /// remembered per key, e.g. `24h`, `90m`, `7d`.
    #[arg(long, env = "LIEGE_DEDUPE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) dedupe_retention: Duration,
    /// Caller-chosen signal ids each activation keeps in memory in front of the store
    /// (older ones are looked up in the store).
    #[arg(long, env = "LIEGE_DEDUPE_CACHE", default_value_t = 1024)]
    pub(crate) dedupe_cache: usize,
    /// Least time between two batches of planned moves (rebalancing), in milliseconds.
    #[arg(long, env = "LIEGE_REBALANCE_INTERVAL_MS", default_value_t = 250)]
    pub(crate) rebalance_interval_ms: u64,
    /// Most partitions moved per batch of planned moves (failover claims are never paced).
    #[arg(long, env = "LIEGE_MAX_MIGRATIONS_PER_TICK", default_value_t = 256)]
    pub(crate) max_migrations_per_tick: usize,
    /// Placement policy (see docs/ARCHITECTURE.md), e.g. "regions=iad>ord,ord>iad".
    #[arg(long, env = "LIEGE_PLACEMENT")]
    pub(crate) placement: Option<String>,
    /// Record every committed write in the store's audit table (drills, debugging).
    #[arg(long, env = "LIEGE_AUDIT")]
    pub(crate) audit: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "LIEGE_LOG_JSON")]
    pub(crate) log_json: bool,
    /// Bearer token the HTTP API requires on every route but /healthz and /readyz (prefer
    /// --api-token-file or LIEGE_API_TOKEN).
    #[arg(long, env = "LIEGE_API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,
    /// File holding the API token (trailing newline ignored).
    #[arg(long, env = "LIEGE_API_TOKEN_FILE", conflicts_with = "api_token")]
    pub(crate) api_token_file: Option<PathBuf>,
    /// Serve /metrics without the API token.
    #[arg(long, env = "LIEGE_METRICS_PUBLIC")]
    pub(crate) metrics_public: bool,
    /// Allow binding the HTTP API beyond loopback without an API token (a public demo).
    #[arg(long, env = "LIEGE_ALLOW_UNAUTHENTICATED_HTTP")]
    pub(crate) allow_unauthenticated_http: bool,
    /// Seconds to receive a request's headers; also the keep-alive idle timeout.
    #[arg(long, env = "LIEGE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub(crate) http_header_timeout_secs: u64,
    /// Seconds to receive a request's whole body.
    #[arg(long, env = "LIEGE_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) http_body_timeout_secs: u64,
    /// Most open HTTP connections; more are answered 503 and closed.
    #[arg(long, env = "LIEGE_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) http_max_connections: usize,
    /// Most HTTP requests handled at once; more get 503 with Retry-After.
    #[arg(long, env = "LIEGE_HTTP_MAX_IN_FLIGHT", default_value_t = 4_096)]
    pub(crate) http_max_in_flight: usize,
}

/// `--name`, else `REGION-MACHINE` on Fly.io (every machine of an app has the same
/// environment, so a fixed default name would collide), else the host name (distinct per
/// machine wherever containers or VMs are named), else `local-1`.
fn node_name(
    flag: Option<&str>,
    region: &str,
    fly_machine: Option<String>,
    host: Option<String>,
) -> String {
    match (flag, fly_machine.filter(|m| !m.is_empty()), host) {
        (Some(name), _, _) => name.to_string(),
        (None, Some(machine), _) => format!("{region}-{machine}"),
        (None, None, Some(host)) => host,
        (None, None, None) => "local-1".to_string(),
    }
}

/// This machine's host name, if it has a usable one (printable ASCII, 1..=128 bytes).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    let usable = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_graphic())
        && name != "localhost";
    usable.then(|| name.to_string())
}

/// On Fly.io, peers dial the machine's private (6PN, IPv6) address on the cluster port.
fn fly_advertise(private_ip: Option<&str>, port: u16) -> Option<String> {
    let ip: std::net::IpAddr = private_ip?.parse().ok()?;
    (port != 0).then(|| std::net::SocketAddr::new(ip, port).to_string())
}

/// The contents of a secret or token file, without its trailing newline; `what` names it in
/// the error.
pub(crate) fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The HTTP settings from the flags; refuses an exposed API without a token.
fn http_config(args: &NodeArgs) -> anyhow::Result<liege::http::HttpConfig> {
    let token = match (&args.api_token, &args.api_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(read_secret_file(path, "API token file")?),
        (None, None) => None,
    };
    if token.as_deref().is_some_and(|t| t.len() < 16) {
        bail!("the API token must be at least 16 bytes (make one with `liege secret`)");
    }
    if token.is_none() && !args.http.ip().is_loopback() && !args.allow_unauthenticated_http {
        bail!(
            "refusing to serve the HTTP API on {} without an API token: set --api-token-file \
             (or LIEGE_API_TOKEN), bind it to loopback, or pass --allow-unauthenticated-http",
            args.http
        );
    }
    let config = liege::http::HttpConfig {
        api_token: token.map(Into::into),
        metrics_public: args.metrics_public,
        admin_without_token: args.http.ip().is_loopback(),
        header_timeout: Duration::from_secs(args.http_header_timeout_secs),
        body_timeout: Duration::from_secs(args.http_body_timeout_secs),
        max_connections: args.http_max_connections,
        max_in_flight: args.http_max_in_flight,
    };
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(config)
}

pub(crate) fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIEGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The store named by `--store`, else `DATABASE_URL`, else the default SQLite file.
pub(crate) fn store_url(flag: Option<&str>) -> anyhow::Result<StoreUrl> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "sqlite:./liege-data/liege.db".to_string());
    raw.parse::<StoreUrl>().map_err(|e| anyhow::anyhow!(e))
}

/// A secret given but unusable: exit 2 with the rule it breaks.
fn check_secret(secret: &[u8], source: &str) -> anyhow::Result<()> {
    if secret.len() < liege::cluster::MIN_SECRET_BYTES {
        bail!(
            "the cluster secret from {source} is {} bytes; it must be at least {} bytes \
             (make one with `liege secret`)",
            secret.len(),
            liege::cluster::MIN_SECRET_BYTES
        );
    }
    Ok(())
}

/// The cluster secret from `--secret`/`LIEGE_SECRET` or `--secret-file`, checked.
fn secret(args: &NodeArgs) -> anyhow::Result<Option<Vec<u8>>> {
    match (&args.secret, &args.secret_file) {
        (Some(_), Some(_)) => bail!("give either --secret or --secret-file, not both"),
        (Some(s), None) => {
            check_secret(s.as_bytes(), "--secret (or LIEGE_SECRET)")?;
            Ok(Some(s.as_bytes().to_vec()))
        }
        (None, Some(path)) => {
            let s = read_secret_file(path, "secret file")?;
            check_secret(s.as_bytes(), &format!("secret file {}", path.display()))?;
            Ok(Some(s.as_bytes().to_vec()))
        }
        (None, None) => Ok(None),
    }
}

/// `liege secret`: a new random 32-byte secret, hex-encoded, from the operating system's
/// random source.
pub(crate) fn new_secret() -> anyhow::Result<String> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs a node until SIGTERM/SIGINT, then shuts down gracefully.
pub(crate) async fn run(args: NodeArgs, agents: Agents) -> anyhow::Result<ExitCode> {
    init_logging(args.log_json);
    let region = args
        .region
        .clone()
        .or_else(|| std::env::var("FLY_REGION").ok())
        .unwrap_or_else(|| "local".to_string());
    let sabotage = liege::sabotage::Sabotage::from_env()?;
    if !sabotage.is_none() {
        tracing::error!(%sabotage, "SABOTAGE is on: this node breaks the guarantees on purpose");
    }
    let secret = secret(&args)?;
    let http_config = http_config(&args)?;
    let url = store_url(args.store.as_deref())?;
    let options = StoreOptions {
        audit: args.audit,
        sabotage,
    };
    // PostgreSQL takes its pool size; every other backend opens as `store::open` does.
    let opened = match &url {
        StoreUrl::Postgres(pg) => {
            let options = liege::store::postgres::PostgresOptions {
                store: options,
                pool_size: usize::from(args.store_pool_size),
                ..Default::default()
            };
            liege::store::postgres::PostgresStore::connect(pg, options)
                .await
                .map(|s| std::sync::Arc::new(s) as liege::store::SharedStore)
        }
        _ => liege::store::open(&url, options).await,
    };
    let store = opened.with_context(|| format!("opening store {url}"))?;

    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP {}", args.http))?;
    let http_addr = http.local_addr()?;

    let name = node_name(
        args.name.as_deref(),
        &region,
        std::env::var("FLY_MACHINE_ID").ok(),
        host_name(),
    );
    let mut config = NodeConfig::new(name, region);
    config.cluster_listen = args.listen;
    config.cluster_advertise = args.advertise.clone().or_else(|| {
        fly_advertise(
            std::env::var("FLY_PRIVATE_IP").ok().as_deref(),
            args.listen.port(),
        )
    });
    config.rebalance.interval = Duration::from_millis(args.rebalance_interval_ms);
    config.rebalance.max_per_tick = args.max_migrations_per_tick;
    config.http_advertise = http_addr.to_string();
    config.secret = secret;
    config.partitions = args.partitions;
    config.lease_ttl = Duration::from_millis(args.lease_ttl_ms);
    config.persistence = args.persistence;
    config.write_linger = Duration::from_millis(args.write_linger_ms);
    config.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    config.mailbox_capacity = args.mailbox;
    config.max_activations = args.max_activations;
    config.max_state_bytes = args.max_state_bytes;
    config.dedupe_retention = args.dedupe_retention;
    config.dedupe_cache = args.dedupe_cache;
    config.sabotage = sabotage;
    if let Some(p) = &args.placement {
        config.placement = p.parse().map_err(|e| anyhow::anyhow!("--placement: {e}"))?;
    }

    let node = Node::start(config, store, agents)
        .await
        .context("starting the node")?;
    tracing::info!(
        name = %node.name(),
        region = %node.region(),
        http = %http_addr,
        cluster = %node.cluster_addr(),
        store = url_label(&url),
        "liege node started"
    );

    let stop_http = CancellationToken::new();
    let http_task = tokio::spawn(liege::http::serve_configured(
        http,
        node.clone(),
        http_config,
        stop_http.clone(),
    ));

    wait_for_signal().await?;
    tracing::info!("shutting down: handing off partitions and making state durable");
    node.shutdown().await;
    stop_http.cancel();
    match tokio::time::timeout(Duration::from_secs(5), http_task).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP task failed"),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn url_label(url: &StoreUrl) -> &'static str {
    match url {
        StoreUrl::Memory => "memory",
        StoreUrl::Sqlite(_) => "sqlite",
        StoreUrl::Postgres(_) => "postgres",
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// A byte count: digits, optionally followed by `K`, `M`, `G` (powers of 1000, also `KB`…)
/// or `KiB`, `MiB`, `GiB` (powers of 1024), case-insensitive.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (e.g. 1GiB, 512MiB, 2000000)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_decimal_and_binary_units() {
        assert_eq!(parse_bytes("2000000"), Ok(2_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512mib"), Ok(512 << 20));
        assert_eq!(parse_bytes("3 KB"), Ok(3_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn the_default_name_is_this_machines_host_name() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        let kernel = kernel.trim();
        let expected = (kernel != "localhost" && !kernel.is_empty()).then(|| kernel.to_string());
        assert_eq!(host_name(), expected);
    }

    #[test]
    fn fly_machines_get_distinct_names_and_their_private_address() {
        let host = || Some("web-7".to_string());
        assert_eq!(
            node_name(Some("iad-1"), "iad", Some("m1".into()), host()),
            "iad-1"
        );
        assert_eq!(
            node_name(None, "ams", Some("3d8d9e1a".into()), host()),
            "ams-3d8d9e1a"
        );
        assert_eq!(node_name(None, "local", None, host()), "web-7");
        assert_eq!(node_name(None, "local", None, None), "local-1");
        assert_eq!(
            fly_advertise(Some("fdaa:0:1:a7b:1::2"), 7070).as_deref(),
            Some("[fdaa:0:1:a7b:1::2]:7070")
        );
        assert_eq!(
            fly_advertise(Some("10.0.0.5"), 7070).as_deref(),
            Some("10.0.0.5:7070")
        );
        assert_eq!(fly_advertise(Some("not an ip"), 7070), None);
        assert_eq!(fly_advertise(Some("10.0.0.5"), 0), None);
        assert_eq!(fly_advertise(None, 7070), None);
    }
}
