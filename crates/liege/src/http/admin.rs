//! `/admin/` routes: the operator's controls over HTTP (see [`crate::cluster::Node`]'s
//! `set_operator_setting` and `declare_down`). The guard lets them through only with the API
//! token, or, when the node has no token, only if its HTTP listener is on loopback.
//!
//! - `GET /admin/status`: nodes, regions, drains, partitions per node, orphaned and misplaced
//!   partitions, rebalance state.
//! - `POST /admin/drain` / `POST /admin/undrain` with `{"node": N}` or `{"region": R}`.
//! - `POST /admin/down` with `{"node": N}`: the failure-detector hook.
//! - `POST /admin/rebalance/pause` / `POST /admin/rebalance/resume`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::cluster::{AdminError, Node};
use crate::store::{OperatorSetting, Settings};

/// The body of a drain or undrain: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    node: Option<String>,
    region: Option<String>,
}

impl Target {
    fn setting(self) -> Result<OperatorSetting, ApiError> {
        match (self.node, self.region) {
            (Some(n), None) if !n.is_empty() => Ok(OperatorSetting::DrainNode(n)),
            (None, Some(r)) if !r.is_empty() => Ok(OperatorSetting::DrainRegion(r)),
            _ => Err(ApiError::bad_request(
                "give exactly one of {\"node\": NAME} or {\"region\": NAME}",
            )),
        }
    }
}

/// The body of `down`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Down {
    node: String,
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::Unknown(m) => ApiError::new(StatusCode::NOT_FOUND, "unknown_target", m),
        AdminError::Refused(m) => ApiError::new(StatusCode::CONFLICT, "refused", m),
        AdminError::Store(e) => store_error(&e),
    }
}

fn store_error(e: &crate::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
    )
}

fn settings_json(s: &Settings) -> Value {
    json!({
        "drained_nodes": s.drained_nodes,
        "drained_regions": s.drained_regions,
        "rebalance_paused": s.rebalance_paused,
    })
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

pub(super) async fn status(State(node): State<Node>) -> Result<Json<Value>, ApiError> {
    let settings = node
        .operator_settings()
        .await
        .map_err(|e| store_error(&e))?;
    let stats = node.stats().await;
    Ok(Json(json!({
        "from": stats.from,
        "nodes": stats.nodes.iter().map(|n| json!({
            "name": n.name,
            "region": n.region,
            "live": n.live,
            "ready": n.ready,
            "partitions": n.partitions,
            "active_agents": n.active_agents,
            "drained": settings.drained_nodes.contains(&n.name)
                || settings.drained_regions.contains(&n.region),
        })).collect::<Vec<_>>(),
        "unreachable": stats.unreachable,
        "partitions_by_owner": stats.partitions_by_owner,
        "partitions_orphaned": stats.partitions_orphaned,
        "partitions_misplaced": stats.partitions_misplaced,
        "settings": settings_json(&settings),
    })))
}

async fn set(node: &Node, setting: OperatorSetting, on: bool) -> Result<Json<Value>, ApiError> {
    let settings = node
        .set_operator_setting(setting, on)
        .await
        .map_err(admin_error)?;
    Ok(Json(settings_json(&settings)))
}

pub(super) async fn drain(
    State(node): State<Node>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let target: Target = body(&bytes)?;
    set(&node, target.setting()?, true).await
}

pub(super) async fn undrain(
    State(node): State<Node>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let target: Target = body(&bytes)?;
    set(&node, target.setting()?, false).await
}

pub(super) async fn pause(State(node): State<Node>) -> Result<Json<Value>, ApiError> {
    set(&node, OperatorSetting::RebalancePaused, true).await
}

pub(super) async fn resume(State(node): State<Node>) -> Result<Json<Value>, ApiError> {
    set(&node, OperatorSetting::RebalancePaused, false).await
}

pub(super) async fn down(
    State(node): State<Node>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let down: Down = body(&bytes)?;
    match node.declare_down(&down.node).await {
        Ok(Some(id)) => Ok(Json(json!({
            "declared_down": id.name.to_string(),
            "incarnation": id.incarnation,
        }))),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_target",
            format!("no live node named {:?}", down.node),
        )),
        Err(e) => Err(store_error(&e)),
    }
}
