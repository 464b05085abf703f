//! [`NodeConfig`]: everything a node needs to know before it starts.

use crate::error::ConfigError;
use std::net::SocketAddr;
use std::time::Duration;

use crate::core::engine::RebalanceConfig;
use crate::core::placement::PlacementPolicy;
pub use crate::host::{ParsePersistenceError, Persistence};
use crate::sabotage::Sabotage;

/// The shortest cluster secret a node accepts.
pub const MIN_SECRET_BYTES: usize = 16;

/// Configuration of one node. Build with [`NodeConfig::new`] and adjust fields. Its `Debug`
/// output shows the secret's length, never the secret.
#[derive(Clone)]
pub struct NodeConfig {
    /// Stable node name, unique among live nodes (`iad-1`).
    pub name: String,
    /// Region label (`iad`); placement prefers a partition's home region.
    pub region: String,
    /// Address the cluster transport binds (`127.0.0.1:0` picks a free port).
    pub cluster_listen: SocketAddr,
    /// Address peers use to reach the transport; defaults to the bound address.
    pub cluster_advertise: Option<String>,
    /// HTTP address to publish in membership (for stats and owner answers); informational.
    pub http_advertise: String,
    /// Cluster secret; every node of a cluster must share it. `None`: the cluster port is
    /// bound to loopback whatever `cluster_listen` says.
    pub secret: Option<Vec<u8>>,
    /// Partition count; fixed when the cluster is created in the store.
    pub partitions: u32,
    /// Lease TTL: how long a silent node keeps its partitions. Renewed every `ttl / 4`.
    pub lease_ttl: Duration,
    /// Placement policy; every node must use the same.
    pub placement: PlacementPolicy,
    /// When state is made durable.
    pub persistence: Persistence,
    /// Idle time after which an activation is passivated; reset by every signal.
    pub idle_timeout: Duration,
    /// Mailbox bound per key: signals waiting beyond it get `Overloaded`.
    pub mailbox_capacity: usize,
    /// How many recent signal ids per key travel in its checkpoint (every id, including the
    /// ones liege generated; they answer the router's own retries).
    pub dedupe_window: usize,
    /// How long a signal id the caller chose is remembered per key (in the store, written
    /// with the checkpoint), however many signals the key takes meanwhile.
    pub dedupe_retention: Duration,
    /// How many caller-chosen ids each activation keeps in memory in front of the store.
    pub dedupe_cache: usize,
    /// Most activations held at once; past it the least recently used idle ones are
    /// passivated (state written first), and new calls are still served.
    pub max_activations: usize,
    /// Most bytes of agent state held at once (each activation counted for its checkpoint's
    /// size as last loaded or written); past it the least recently used idle activations are
    /// passivated, as for `max_activations`.
    pub max_state_bytes: usize,
    /// How long the node may go without a valid lease (not shutting down) before `/healthz`
    /// reports it unhealthy.
    pub unhealthy_without_lease: Duration,
    /// Default deadline of a call, including retries during failover.
    pub call_timeout: Duration,
    /// Most checkpoint writes per group commit.
    pub max_batch: usize,
    /// Longest a small group commit (under 16 writes) waits for more writes while the node is
    /// in a stream of commits; zero (the default): never. A write to an idle node never waits.
    /// Fewer, fuller commits cost a shared store less per write, for up to this much more
    /// latency per write; at most 1 s. See `docs/SCALING.md`, "Write linger".
    pub write_linger: Duration,
    /// Whether and how fast partitions move to their desired owners (rebalancing).
    /// Failover claims happen regardless and are never paced.
    pub rebalance: RebalanceConfig,
    /// Guards switched off on purpose; only builds with the `unsafe-sabotage` feature can
    /// switch any on (see [`crate::sabotage`]).
    pub sabotage: Sabotage,
}

impl NodeConfig {
    /// Defaults for a node called `name` in `region`, transport on a free loopback port.
    pub fn new(name: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_advertise: None,
            http_advertise: String::new(),
            secret: None,
            partitions: 1024,
            lease_ttl: Duration::from_millis(1000),
            placement: PlacementPolicy::default(),
            persistence: Persistence::Durable,
            idle_timeout: Duration::from_secs(300),
            mailbox_capacity: 1024,
            dedupe_window: 16,
            dedupe_retention: Duration::from_secs(24 * 3600),
            dedupe_cache: 1024,
            max_activations: 1_000_000,
            max_state_bytes: 1 << 30,
            unhealthy_without_lease: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
            max_batch: 512,
            write_linger: Duration::ZERO,
            rebalance: RebalanceConfig::default(),
            sabotage: Sabotage::none(),
        }
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::new(
                    "secret",
                    format!(
                        "is {} bytes; it must be at least {MIN_SECRET_BYTES} \
                         (make one with `liege secret`)",
                        secret.len()
                    ),
                ));
            }
        }
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(ConfigError::new("name", "must be 1..=128 bytes"));
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err(ConfigError::new("region", "must be 1..=64 bytes"));
        }
        if self.partitions == 0 || self.partitions > 65_536 {
            return Err(ConfigError::new("partitions", "must be 1..=65536"));
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(ConfigError::new("lease_ttl", "must be at least 100 ms"));
        }
        if self.mailbox_capacity == 0
            || self.max_batch == 0
            || self.max_activations == 0
            || self.max_state_bytes == 0
        {
            return Err(ConfigError::new(
                "mailbox_capacity, max_batch, max_activations, max_state_bytes",
                "must be positive",
            ));
        }
        if self.dedupe_retention < Duration::from_secs(1)
            || self.dedupe_retention > Duration::from_secs(3650 * 24 * 3600)
        {
            return Err(ConfigError::new(
                "dedupe_retention",
                "must be between 1 s and 3650 days",
            ));
        }
        if self.write_linger > Duration::from_secs(1) {
            return Err(ConfigError::new("write_linger", "must be at most 1 s"));
        }
        if self.rebalance.max_per_tick == 0 {
            return Err(ConfigError::new(
                "rebalance.max_per_tick",
                "must be positive",
            ));
        }
        self.placement
            .validate(self.partitions)
            .map_err(|e| ConfigError::new("placement", e.to_string()))
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("cluster_listen", &self.cluster_listen)
            .field("cluster_advertise", &self.cluster_advertise)
            .field("http_advertise", &self.http_advertise)
            .field(
                "secret",
                &self
                    .secret
                    .as_ref()
                    .map(|s| format!("<redacted, {} bytes>", s.len())),
            )
            .field("partitions", &self.partitions)
            .field("lease_ttl", &self.lease_ttl)
            .field("placement", &self.placement)
            .field("persistence", &self.persistence)
            .field("idle_timeout", &self.idle_timeout)
            .field("mailbox_capacity", &self.mailbox_capacity)
            .field("max_state_bytes", &self.max_state_bytes)
            .field("dedupe_window", &self.dedupe_window)
            .field("dedupe_retention", &self.dedupe_retention)
            .field("dedupe_cache", &self.dedupe_cache)
            .field("max_activations", &self.max_activations)
            .field("unhealthy_without_lease", &self.unhealthy_without_lease)
            .field("call_timeout", &self.call_timeout)
            .field("max_batch", &self.max_batch)
            .field("write_linger", &self.write_linger)
            .field("rebalance", &self.rebalance)
            .field("sabotage", &self.sabotage)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = NodeConfig::new("a", "iad");
        c.secret = Some(b"correct-horse-battery-staple".to_vec());
        let shown = format!("{c:?}");
        assert!(!shown.contains("correct-horse"), "{shown}");
        assert!(shown.contains("<redacted, 28 bytes>"), "{shown}");
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut c = NodeConfig::new("a", "iad");
        c.secret = Some(b"fifteen-bytes!!".to_vec());
        assert_eq!(c.validate().unwrap_err().setting, "secret");
        c.secret = Some(b"sixteen-bytes!!!".to_vec());
        c.validate().expect("16 bytes are enough");
    }

    #[test]
    fn a_write_linger_beyond_a_second_is_refused() {
        let mut c = NodeConfig::new("a", "iad");
        c.write_linger = Duration::from_millis(1001);
        assert_eq!(c.validate().unwrap_err().setting, "write_linger");
        c.write_linger = Duration::from_secs(1);
        c.validate().expect("1 s is allowed");
    }
}
