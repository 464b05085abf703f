//! `liege-sim`: run many seeds of the ownership simulation; exit 1 with a replayable seed
//! when an invariant breaks.

use std::process::ExitCode;

use clap::Parser;
use liege::sabotage::Sabotage;
use liege_sim::SimConfig;

/// Seeded deterministic simulation of liege's ownership protocol.
#[derive(Parser, Debug)]
#[command(name = "liege-sim", version, about)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = liege_sim::DEFAULT_SEEDS)]
    seeds: u64,
    /// The first seed (seeds S, S+1, … are run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Nodes per simulated cluster.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Switch a guard off on purpose (skip-fencing, skip-lease-check, claim-unexpired,
    /// mixed-placement, stale-claim-snapshot): the run must then fail.
    #[arg(long)]
    sabotage: Option<String>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the whole trace of a failing seed instead of its last lines.
    #[arg(long)]
    full_trace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sabotage = match args.sabotage.as_deref().map(str::parse::<Sabotage>) {
        None => Sabotage::none(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.nodes < 2 || args.seeds == 0 {
        eprintln!("error: --nodes must be at least 2 and --seeds at least 1");
        return ExitCode::from(2);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut template = SimConfig::new(args.seed);
    template.nodes = args.nodes;
    template.sabotage = sabotage;
    let seeds = args.seed..args.seed.saturating_add(args.seeds);
    let summary = liege_sim::run_seeds(&template, seeds, threads);
    let Some(outcome) = summary.failure.clone() else {
        println!("PASS  {}; sabotage {sabotage}", summary.line());
        return ExitCode::SUCCESS;
    };
    let v = outcome.violation.expect("only failures are kept");
    let lines = &outcome.trace;
    let tail = if args.full_trace {
        &lines[..]
    } else {
        &lines[lines.len().saturating_sub(80)..]
    };
    println!("FAIL  seed {}: {}", outcome.seed, v.invariant);
    println!("      {}", v.detail);
    println!("trace ({} of {} lines):", tail.len(), lines.len());
    for line in tail {
        println!("  {line}");
    }
    let sabotage_flag = if sabotage.is_none() {
        String::new()
    } else {
        format!(" --sabotage {sabotage}")
    };
    println!(
        "replay: cargo run --release -p liege-sim -- --seeds 1 --seed {} --nodes {}{sabotage_flag} --full-trace",
        outcome.seed, args.nodes
    );
    println!("({})", summary.line());
    ExitCode::from(1)
}
