//! The guide's cart (`docs/AGENTS.md`, section 1, verbatim between the markers): a shopping
//! cart per user, served by one embedded node.
//!
//! `cargo run -p liege --example cart [-- DIR]` adds two items to `user-42`'s cart and
//! prints how many it holds; run it again over the same directory and the cart still has
//! them (plus two more).

// GUIDE:begin
use liege::{Agent, AgentError, Context};
use serde::{Deserialize, Serialize};

/// A shopping cart per user.
struct Cart;

#[derive(Clone, Default, Serialize, Deserialize)]
struct CartState {
    items: Vec<(String, u32)>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum CartMsg {
    Add { sku: String, qty: u32 },
    Remove { sku: String },
    Count,
}

impl Agent for Cart {
    const KIND: &'static str = "cart";
    type State = CartState;
    type Msg = CartMsg;
    type Reply = u32;

    async fn handle(
        &self,
        cart: &mut CartState,
        msg: CartMsg,
        ctx: &mut Context<'_>,
    ) -> Result<u32, AgentError> {
        match msg {
            CartMsg::Add { sku, qty } => {
                if qty == 0 {
                    return Err(AgentError::new("bad_request", "qty must be positive"));
                }
                cart.items.push((sku, qty));
            }
            CartMsg::Remove { sku } => cart.items.retain(|(s, _)| *s != sku),
            CartMsg::Count => ctx.read_only(),
        }
        Ok(cart.items.iter().map(|(_, q)| q).sum())
    }
}
// GUIDE:end

use std::time::Duration;

use liege::cluster::{Node, NodeConfig};
use liege::store::StoreUrl;
use liege::Agents;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or("liege-example".into());
    std::fs::create_dir_all(&dir)?;
    let url: StoreUrl = format!("sqlite:{dir}/cart.db").parse()?;
    let store = liege::store::open(&url, Default::default()).await?;
    let agents = Agents::with_builtins().register(Cart);
    let node = Node::start(NodeConfig::new("iad-1", "iad"), store, agents).await?;
    node.wait_ready(Duration::from_secs(10)).await;
    let cart = node.agent::<Cart>("user-42");
    cart.call(CartMsg::Add {
        sku: "tea".into(),
        qty: 2,
    })
    .await?;
    // Refused (and nothing changes): a quantity of zero.
    let refused = cart
        .call(CartMsg::Add {
            sku: "air".into(),
            qty: 0,
        })
        .await;
    assert!(refused.is_err());
    cart.call(CartMsg::Remove { sku: "none".into() }).await?;
    println!("user-42 has {} items", cart.call(CartMsg::Count).await?);
    node.shutdown().await;
    Ok(())
}
