//! `liege placement`: show the cluster's placement policy, or change it while no node runs.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use liege::core::placement::PlacementPolicy;
use liege::store::StoreOptions;

/// Options of `liege placement`.
#[derive(Args, Debug, Clone)]
pub(crate) struct PlacementArgs {
    /// Store: sqlite:PATH or postgres://... (falls back to DATABASE_URL).
    #[arg(long, env = "LIEGE_STORE")]
    store: Option<String>,
    /// Replace the policy, e.g. "regions=iad>ord,ord>iad; prefix tenant-7/=iad". Refused while
    /// any node holds a live lease: stop every node first.
    #[arg(long)]
    set: Option<String>,
}

/// Prints or changes the recorded policy.
pub(crate) async fn run(args: PlacementArgs) -> anyhow::Result<ExitCode> {
    let url = crate::node::store_url(args.store.as_deref())?;
    let store = liege::store::open(&url, StoreOptions::default())
        .await
        .with_context(|| format!("opening store {url}"))?;
    let Some(meta) = store.cluster().await? else {
        eprintln!("error: there is no cluster in {url} yet (start a node to create it)");
        return Ok(ExitCode::from(2));
    };
    let Some(text) = args.set else {
        let policy = meta
            .placement
            .as_deref()
            .unwrap_or("none (not recorded yet)");
        println!("placement: {policy}\npartitions: {}", meta.partitions);
        return Ok(ExitCode::SUCCESS);
    };
    let policy: PlacementPolicy = match text.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --set: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(e) = policy.validate(meta.partitions) {
        eprintln!("error: --set: {e}");
        return Ok(ExitCode::from(2));
    }
    match store.set_placement(&policy.to_string()).await {
        Ok(()) => {
            println!("placement: {policy}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ liege::store::StoreError::Mismatch(_)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
