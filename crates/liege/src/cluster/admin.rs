//! The operator's controls: drains, paused rebalancing, and the failure-detector hook.
//!
//! Every control is a row in the store ([`OperatorSetting`]) or a change to a lease, so it
//! holds for every node and survives restarts; the node that took the command re-reads the
//! store at once, the others at their next refresh (at once on PostgreSQL, which notifies).

use super::node::Node;
use crate::core::ids::NodeId;
use crate::store::{OperatorSetting, Settings, StoreError};

/// Why an operator command was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The command names no node or region the membership knows.
    #[error("{0}")]
    Unknown(String),
    /// The command would leave the cluster without a node to own partitions.
    #[error("{0}")]
    Refused(String),
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Node {
    /// The operator settings recorded in the store.
    pub async fn operator_settings(&self) -> Result<Settings, StoreError> {
        self.store().settings().await
    }

    /// Switches an operator setting on or off. Draining a node or region that the
    /// membership does not know is refused (a typo would otherwise drain nothing, silently),
    /// and so is a drain that would leave no live, undrained node. Undraining always works.
    pub async fn set_operator_setting(
        &self,
        setting: OperatorSetting,
        on: bool,
    ) -> Result<Settings, AdminError> {
        if on && setting != OperatorSetting::RebalancePaused {
            let membership = self.store().nodes().await?;
            let mut settings = self.store().settings().await?;
            let live: Vec<_> = membership.live().collect();
            match &setting {
                OperatorSetting::DrainNode(n) => {
                    if !membership.nodes.iter().any(|l| *l.record.id.name == **n) {
                        return Err(AdminError::Unknown(format!("no node named {n:?}")));
                    }
                    settings.drained_nodes.push(n.clone());
                }
                OperatorSetting::DrainRegion(r) => {
                    if !membership.nodes.iter().any(|l| l.record.region == *r) {
                        return Err(AdminError::Unknown(format!("no node in region {r:?}")));
                    }
                    settings.drained_regions.push(r.clone());
                }
                OperatorSetting::RebalancePaused => {}
            }
            let left = live.iter().any(|l| {
                !settings
                    .drained_nodes
                    .iter()
                    .any(|d| **d == *l.record.id.name)
                    && !settings.drained_regions.contains(&l.record.region)
            });
            if !left {
                return Err(AdminError::Refused(format!(
                    "refusing to drain {}: no live node would be left to own partitions",
                    setting.key()
                )));
            }
        }
        self.store().set_setting(&setting, on).await?;
        self.refresh_soon();
        Ok(self.store().settings().await?)
    }

    /// The failure-detector hook: declares the node called `name` dead. Its current
    /// incarnation's lease ends now in the store (as if it had left), so survivors claim its
    /// partitions at once instead of waiting out the lease; its next renewal is refused, so if
    /// it was alive after all it fences itself and rejoins under a new incarnation. Writes stay
    /// fenced either way (see `docs/ARCHITECTURE.md`). Returns the incarnation declared down,
    /// or `None` if no live node has that name.
    pub async fn declare_down(&self, name: &str) -> Result<Option<NodeId>, StoreError> {
        let membership = self.store().nodes().await?;
        let Some(victim) = membership
            .live()
            .find(|l| *l.record.id.name == *name)
            .map(|l| l.record.id.clone())
        else {
            return Ok(None);
        };
        self.store().leave(&victim).await?;
        tracing::warn!(node = %victim, "node declared down by an operator: its lease ended now");
        self.refresh_soon();
        Ok(Some(victim))
    }
}
