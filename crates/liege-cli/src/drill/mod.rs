//! `liege drill`: the multi-region chaos drill.
//!
//! It starts real `liege node` processes over one shared store, warms `--keys` counters,
//! records who owns them, injects a fault, keeps the load going through the survivors, waits
//! for convergence, reconciles failed increments with their idempotency keys, and verifies that
//! every counter equals its acknowledged increments: nothing lost, nothing applied twice.
//!
//! Layout: [`args`] (flags and criteria) · [`store`] (where the store comes from) ·
//! [`topology`] (child processes and their kill guard) · [`client`] (HTTP) · [`load`]
//! (workers and logical increments) · [`observe`] (stats, owners, finals, metrics) ·
//! [`phases`] (the script) · [`fault`] (what to hit) · [`measure`] (pure arithmetic) · [`report`] / [`html`] (output) ·
//! [`progress`] (bars or plain lines).

mod args;
pub(crate) mod client;
mod fault;
mod html;
mod ledger;
mod load;
mod measure;
pub(crate) mod observe;
mod phases;
mod progress;
mod report;
pub(crate) mod store;
pub(crate) mod topology;

use std::process::ExitCode;

pub(crate) use args::{parse_duration, parse_duration_or_zero, DrillArgs};

/// A problem with the flags or the machine, reported with exit code 2.
#[derive(Debug)]
pub(crate) struct SetupError(pub(crate) String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// Runs the drill: exit 0 on pass, 1 on fail, 2 on a usage or setup error. Ctrl-C stops it
/// (every node is killed on the way out) with exit code 130.
pub(crate) async fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    tokio::select! {
        result = phases::drill(args) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: killing the drill's nodes");
            Ok(ExitCode::from(130))
        }
    }
}
