//! The smallest program on liege as a library: one node on a SQLite file, a typed call.
//!
//! `cargo run -p liege --example typed_counter [-- DIR]` prints `tenant-7 = 2`, then 4, 6...
//! on each run over the same directory (default: `./liege-example`): the counter is durable.
//! The README's "Library" section is this file's `main`, verbatim.

// README:begin
use std::time::Duration;

use liege::cluster::{Node, NodeConfig};
use liege::store::StoreUrl;
use liege::{Agents, Counter, CounterMsg};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or("liege-example".into());
    std::fs::create_dir_all(&dir)?;
    let url: StoreUrl = format!("sqlite:{dir}/liege.db").parse()?;
    let store = liege::store::open(&url, Default::default()).await?;
    let config = NodeConfig::new("iad-1", "iad");
    let node = Node::start(config, store, Agents::with_builtins()).await?;
    node.wait_ready(Duration::from_secs(10)).await;

    let tenant = node.agent::<Counter>("tenant-7");
    let reply = tenant.call(CounterMsg::Inc { by: 2 }).await?;
    println!("tenant-7 = {}", reply.value);

    node.shutdown().await;
    Ok(())
}
// README:end
