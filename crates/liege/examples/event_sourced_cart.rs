//! An event-sourced shopping cart (`docs/AGENTS.md`, section 8, verbatim between the
//! markers): every change is an event appended to the key's journal, in the same fenced
//! transaction as the turn's checkpoint; the checkpoint holds only a snapshot, taken every
//! few events; on activation the cart replays the events after its snapshot.
//!
//! `cargo run -p liege --example event_sourced_cart [-- DIR]` adds three events to
//! `user-42`'s cart, passivates it, reads it back (rebuilt from snapshot + journal) and prints
//! its history; run it again over the same directory and the journal goes on from there.

// GUIDE:begin
use std::collections::BTreeMap;

use liege::{Agent, AgentError, Context, Journal, Rev};
use serde::{Deserialize, Serialize};

/// A cart whose journal is the source of truth.
struct EventCart;

/// What happened to a cart: the journal's entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum CartEvent {
    Added { sku: String, qty: u32 },
    Removed { sku: String },
}

type Items = BTreeMap<String, u32>;

fn apply(items: &mut Items, event: &CartEvent) {
    match event {
        CartEvent::Added { sku, qty } => *items.entry(sku.clone()).or_default() += qty,
        CartEvent::Removed { sku } => drop(items.remove(sku)),
    }
}

/// Take a snapshot every this many events: activation replays fewer than this.
const SNAPSHOT_EVERY: u64 = 4;

#[derive(Clone, Default, Serialize, Deserialize)]
struct CartState {
    /// The cart as of journal revision `snapshot_rev` (the only part in the checkpoint).
    snapshot: Items,
    snapshot_rev: u64,
    /// The cart now: the snapshot plus the events after it (rebuilt on activation).
    #[serde(skip)]
    items: Items,
    /// Events replayed when this activation started.
    #[serde(skip)]
    replayed: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum CartMsg {
    Add { sku: String, qty: u32 },
    Remove { sku: String },
    View,
    History,
}

#[derive(Debug, Serialize, Deserialize)]
struct CartView {
    items: Items,
    journal_rev: u64,
    snapshot_rev: u64,
    replayed: usize,
    history: Vec<CartEvent>,
}

impl Agent for EventCart {
    const KIND: &'static str = "event-cart";
    const JOURNAL: bool = true;
    type State = CartState;
    type Msg = CartMsg;
    type Reply = CartView;

    async fn on_activate(
        &self,
        cart: &mut CartState,
        journal: &Journal<'_>,
    ) -> Result<(), AgentError> {
        cart.items = cart.snapshot.clone();
        let events = journal
            .read_all::<CartEvent>(Rev(cart.snapshot_rev + 1))
            .await?;
        cart.replayed = events.len();
        for (_, event) in &events {
            apply(&mut cart.items, event);
        }
        Ok(())
    }

    async fn handle(
        &self,
        cart: &mut CartState,
        msg: CartMsg,
        ctx: &mut Context<'_>,
    ) -> Result<CartView, AgentError> {
        let mut history = Vec::new();
        let event = match msg {
            CartMsg::Add { qty: 0, .. } => {
                return Err(AgentError::new("bad_request", "qty must be positive"));
            }
            CartMsg::Add { sku, qty } => Some(CartEvent::Added { sku, qty }),
            CartMsg::Remove { sku } if cart.items.contains_key(&sku) => {
                Some(CartEvent::Removed { sku })
            }
            CartMsg::Remove { sku } => {
                return Err(AgentError::new(
                    "not_found",
                    format!("no {sku} in the cart"),
                ));
            }
            CartMsg::View => None,
            CartMsg::History => {
                let journal = ctx.journal()?;
                history = journal.read_all::<CartEvent>(Rev(1)).await?;
                None
            }
        };
        let journal_rev = match event {
            // A read: nothing to persist.
            None => {
                ctx.read_only();
                ctx.journal()?.head()
            }
            Some(event) => {
                let rev = ctx.append(&event)?;
                apply(&mut cart.items, &event);
                if rev.0 - cart.snapshot_rev >= SNAPSHOT_EVERY {
                    cart.snapshot = cart.items.clone();
                    cart.snapshot_rev = rev.0;
                }
                rev
            }
        };
        Ok(CartView {
            items: cart.items.clone(),
            journal_rev: journal_rev.0,
            snapshot_rev: cart.snapshot_rev,
            replayed: cart.replayed,
            history: history.into_iter().map(|(_, e)| e).collect(),
        })
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
    let url: StoreUrl = format!("sqlite:{dir}/event-cart.db").parse()?;
    let store = liege::store::open(&url, Default::default()).await?;
    let agents = Agents::with_builtins().register(EventCart);
    let node = Node::start(NodeConfig::new("iad-1", "iad"), store, agents).await?;
    node.wait_ready(Duration::from_secs(10)).await;

    let cart = node.agent::<EventCart>("user-42");
    let first = cart.call(CartMsg::View).await?;
    println!(
        "activated: replayed {} events after the snapshot at {}",
        first.replayed, first.snapshot_rev
    );
    let add = |sku: &str, qty| CartMsg::Add {
        sku: sku.into(),
        qty,
    };
    cart.call(add("tea", 2)).await?;
    cart.call(add("milk", 1)).await?;
    // Refused, and nothing is appended: the cart has no coffee.
    assert!(cart
        .call(CartMsg::Remove {
            sku: "coffee".into()
        })
        .await
        .is_err());
    cart.call(CartMsg::Remove { sku: "milk".into() }).await?;

    // Passivate, then read: the cart is rebuilt from its snapshot and the journal.
    cart.stop().await?;
    let view = cart.call(CartMsg::History).await?;
    println!(
        "user-42: tea x{}, journal at {}, snapshot at {}, replayed {}",
        view.items.get("tea").copied().unwrap_or(0),
        view.journal_rev,
        view.snapshot_rev,
        view.replayed
    );
    println!("history: {:?}", view.history);
    node.shutdown().await;
    Ok(())
}
