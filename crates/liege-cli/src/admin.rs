//! `liege admin`: the operator's controls against a running node's `/admin/` routes.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// Arguments of `liege admin`.
#[derive(Args, Debug)]
pub(crate) struct AdminArgs {
    /// Any node's HTTP address, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "LIEGE_ADMIN_URL")]
    url: String,
    /// The nodes' API token (`--api-token` of `liege node`).
    #[arg(long, env = "LIEGE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token (trailing newline ignored).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

/// What to do.
#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Nodes, regions, drains, partitions per node, orphaned partitions, rebalance state.
    Status,
    /// Hand every partition of a node or region to the others; it receives none until
    /// undrained. Recorded in the store: survives restarts, honoured by every node.
    Drain(Target),
    /// End a drain.
    Undrain(Target),
    /// Declare a node dead (failure-detector hook): its lease ends now and the survivors
    /// claim its partitions at once; if it was alive, it fences itself and rejoins.
    Down {
        /// The node's name.
        node: String,
    },
    /// Pause or resume planned moves (failover claims go on while paused).
    Rebalance {
        #[arg(value_enum)]
        action: RebalanceAction,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Target {
    /// A node, by name.
    #[arg(long)]
    node: Option<String>,
    /// A region: every node in it.
    #[arg(long)]
    region: Option<String>,
}

impl Target {
    fn body(&self) -> Value {
        match (&self.node, &self.region) {
            (Some(n), _) => json!({ "node": n }),
            (_, Some(r)) => json!({ "region": r }),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RebalanceAction {
    Pause,
    Resume,
}

/// Runs one admin command; prints the node's JSON answer. Exit 0 on success, 1 when the node
/// refused the command, 2 for usage or connection errors.
pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(crate::node::read_secret_file(path, "--token-file")?),
        (None, None) => None,
    };
    let (method, path, body) = match &args.command {
        AdminCommand::Status => (Method::GET, "/admin/status", None),
        AdminCommand::Drain(t) => (Method::POST, "/admin/drain", Some(t.body())),
        AdminCommand::Undrain(t) => (Method::POST, "/admin/undrain", Some(t.body())),
        AdminCommand::Down { node } => (Method::POST, "/admin/down", Some(json!({ "node": node }))),
        AdminCommand::Rebalance { action } => match action {
            RebalanceAction::Pause => (Method::POST, "/admin/rebalance/pause", None),
            RebalanceAction::Resume => (Method::POST, "/admin/rebalance/resume", None),
        },
    };
    let base = args.url.trim_end_matches('/');
    if !base.starts_with("http://") {
        bail!("--url must be an http:// URL (got {base:?}); put TLS in front with a proxy");
    }
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = &token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let bytes = match &body {
        Some(b) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(b).expect("json"))
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(bytes))
        .with_context(|| format!("building the request to {base}"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .with_context(|| format!("{base} did not answer within 30 s"))?
        .with_context(|| format!("connecting to {base}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => serde_json::to_string_pretty(&v).expect("json"),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if status.is_success() {
        println!("{text}");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        eprintln!("{} answered {status}:\n{text}", base);
        Ok(std::process::ExitCode::from(1))
    }
}
