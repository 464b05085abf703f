//! The `liege` command as a library: run a node, the multi-region chaos drill, the benchmark,
//! the operator's controls (`admin`), or the small commands (`placement`, `secret`) — with
//! the agent kinds you give it.
//!
//! The `liege` binary is [`run`] with the built-in kinds. Your own binary serves your kinds
//! with the whole CLI:
//!
//! ```no_run
//! use liege::Agents;
//!
//! fn main() -> std::process::ExitCode {
//!     // Agents::with_builtins().register(MyAgent) in a real program.
//!     liege_cli::run(Agents::with_builtins())
//! }
//! ```
//!
//! `my-binary node ...` then serves those kinds; `my-binary drill` and `my-binary bench` start
//! their nodes from the same executable, so they run your kinds too.

mod admin;
mod bench;
mod drill;
mod node;
mod placement;

use clap::{Parser, Subcommand};
use liege::Agents;

/// Keyed singleton agents that survive the loss of a region.
#[derive(Parser, Debug)]
#[command(name = "liege", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Node(Box<node::NodeArgs>),
    /// Run the multi-region chaos drill: real nodes, a fault, a pass/fail verdict.
    Drill(Box<drill::DrillArgs>),
    /// The operator's controls against a running cluster: status, drain, undrain, down,
    /// rebalance pause|resume.
    Admin(admin::AdminArgs),
    /// Show the cluster's placement policy, or change it while no node runs.
    Placement(placement::PlacementArgs),
    /// Print a new random cluster secret (32 bytes, hex) for --secret, LIEGE_SECRET or
    /// --secret-file.
    Secret,
    /// Closed-loop HTTP benchmark of a cluster it starts: throughput, latency, CPU.
    Bench(Box<bench::BenchArgs>),
    /// The no-op HTTP counter `liege bench --noop` measures (internal).
    #[command(hide = true)]
    BenchNoop {
        /// Address to serve on.
        #[arg(long)]
        http: std::net::SocketAddr,
    },
}

/// Parses the command line and runs the command, serving `agents` in `node` (every node of
/// a cluster must register the same kinds). Exit codes: 0 success, 1 a failed drill or
/// refused admin command, 2 usage or setup errors.
pub fn run(agents: Agents) -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node::run(*args, agents).await,
            Command::Drill(args) => drill::run(*args).await,
            Command::Placement(args) => placement::run(args).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::Secret => node::new_secret().map(|s| {
                println!("{s}");
                std::process::ExitCode::SUCCESS
            }),
            Command::BenchNoop { http } => bench::noop::serve(http)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
