//! [`NodeConfig`]: everything a node needs to know before it starts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::engine::RebalanceConfig;
use crate::core::placement::PlacementPolicy;
pub use crate::host::Persistence;
use crate::sabotage::Sabotage;

/// Configuration of one node. Build with [`NodeConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
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
    /// How many recent signal ids per key are remembered for idempotency.
    pub dedupe_window: usize,
    /// Default deadline of a call, including retries during failover.
    pub call_timeout: Duration,
    /// Most checkpoint writes per group commit.
    pub max_batch: usize,
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
            call_timeout: Duration::from_secs(5),
            max_batch: 512,
            rebalance: RebalanceConfig::default(),
            sabotage: Sabotage::none(),
        }
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 128 {
            return Err("node name must be 1..=128 bytes".into());
        }
        if self.region.is_empty() || self.region.len() > 64 {
            return Err("region must be 1..=64 bytes".into());
        }
        if self.partitions == 0 || self.partitions > 65_536 {
            return Err("partitions must be 1..=65536".into());
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err("lease TTL must be at least 100 ms".into());
        }
        if self.mailbox_capacity == 0 || self.max_batch == 0 {
            return Err("mailbox capacity and max batch must be positive".into());
        }
        if self.rebalance.max_per_tick == 0 {
            return Err("max migrations per tick must be positive".into());
        }
        self.placement
            .validate(self.partitions)
            .map_err(|e| format!("placement: {e}"))
    }
}
