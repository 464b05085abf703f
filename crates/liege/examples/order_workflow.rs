//! An order workflow driven by durable alarms: each order charges its payment provider from
//! an alarm turn, retries a declined charge with backoff (a new alarm each time) up to a limit,
//! and cancels and refunds an order that is not shipped before its deadline (another alarm).
//! Every step survives a failover: the alarm lives in the store with the order's checkpoint.
//!
//! `cargo run -p liege --example order_workflow [-- DIR]` runs three orders to their end:
//! one paid on its third attempt and shipped, one whose payment is declined until it gives
//! up, one paid but never shipped.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use liege::{Agent, AgentError, Context};
use serde::{Deserialize, Serialize};

/// Charges that fail before the provider accepts one (per order).
const DECLINES_BEFORE_SUCCESS: u32 = 2;
/// Amounts at or above this are always declined.
const LIMIT: u64 = 1_000;
/// Charge attempts before an order gives up.
const MAX_ATTEMPTS: u32 = 4;
/// First retry delay; doubled after each decline.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a paid order may wait to be shipped.
const SHIP_WITHIN: Duration = Duration::from_millis(1_500);

/// A payment provider, one key per provider: records charges and refunds.
struct Payments;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Ledger {
    attempts: BTreeMap<String, u32>,
    charged: BTreeMap<String, u64>,
    refunded: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum PaymentsMsg {
    Charge { order: String, amount: u64 },
    Refund { order: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum PaymentReply {
    Charged,
    Declined,
    Refunded(u64),
}

impl Agent for Payments {
    const KIND: &'static str = "payments";
    type State = Ledger;
    type Msg = PaymentsMsg;
    type Reply = PaymentReply;

    async fn handle(
        &self,
        ledger: &mut Ledger,
        msg: PaymentsMsg,
        _: &mut Context<'_>,
    ) -> Result<PaymentReply, AgentError> {
        match msg {
            // A decline is an answer, not an error: the attempt is recorded.
            PaymentsMsg::Charge { order, amount } => {
                let attempts = ledger.attempts.entry(order.clone()).or_default();
                *attempts += 1;
                if amount >= LIMIT || *attempts <= DECLINES_BEFORE_SUCCESS {
                    return Ok(PaymentReply::Declined);
                }
                ledger.charged.insert(order, amount);
                Ok(PaymentReply::Charged)
            }
            PaymentsMsg::Refund { order } => {
                let amount = ledger.charged.remove(&order).unwrap_or(0);
                ledger.refunded.insert(order, amount);
                Ok(PaymentReply::Refunded(amount))
            }
        }
    }
}

/// One order's workflow.
struct Order;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum Stage {
    #[default]
    New,
    /// Waiting for a charge to go through (the alarm is the next attempt).
    Charging {
        attempts: u32,
    },
    /// Paid; the alarm is the shipping deadline.
    Paid {
        attempts: u32,
    },
    Shipped {
        attempts: u32,
    },
    Cancelled {
        reason: String,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OrderState {
    amount: u64,
    stage: Stage,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum OrderMsg {
    Place { amount: u64 },
    Ship,
    Get,
}

impl Agent for Order {
    const KIND: &'static str = "order";
    type State = OrderState;
    type Msg = OrderMsg;
    type Reply = Stage;

    async fn handle(
        &self,
        order: &mut OrderState,
        msg: OrderMsg,
        ctx: &mut Context<'_>,
    ) -> Result<Stage, AgentError> {
        match (msg, &order.stage) {
            (OrderMsg::Place { amount }, Stage::New) => {
                order.amount = amount;
                order.stage = Stage::Charging { attempts: 0 };
                // Charge from an alarm turn, not from the caller's request: a retry is then
                // the same machinery as the first attempt, and survives a failover.
                ctx.set_alarm(SystemTime::now());
            }
            (OrderMsg::Ship, Stage::Paid { attempts }) => {
                order.stage = Stage::Shipped {
                    attempts: *attempts,
                };
                ctx.cancel_alarm();
            }
            (OrderMsg::Get, _) => ctx.read_only(),
            (_, stage) => {
                return Err(AgentError::new(
                    "wrong_stage",
                    format!("not possible while the order is {stage:?}"),
                ))
            }
        }
        Ok(order.stage.clone())
    }

    async fn on_alarm(
        &self,
        order: &mut OrderState,
        ctx: &mut Context<'_>,
    ) -> Result<(), AgentError> {
        let id = ctx.key().id.to_string();
        match order.stage.clone() {
            Stage::Charging { attempts } => {
                let charge = PaymentsMsg::Charge {
                    order: id,
                    amount: order.amount,
                };
                // The nested call's id derives from this alarm's: if this turn's commit is
                // lost and the alarm fires again, the provider answers the same attempt.
                let attempts = attempts + 1;
                match ctx.call::<Payments>("psp", charge).await? {
                    PaymentReply::Charged => {
                        order.stage = Stage::Paid { attempts };
                        ctx.set_alarm(SystemTime::now() + SHIP_WITHIN);
                    }
                    _ if attempts >= MAX_ATTEMPTS => {
                        order.stage = Stage::Cancelled {
                            reason: format!("payment declined {attempts} times"),
                        };
                    }
                    _ => {
                        order.stage = Stage::Charging { attempts };
                        ctx.set_alarm(SystemTime::now() + FIRST_BACKOFF * 2u32.pow(attempts - 1));
                    }
                }
            }
            Stage::Paid { .. } => {
                let refund = PaymentsMsg::Refund { order: id };
                let refunded = ctx.call::<Payments>("psp", refund).await?;
                order.stage = Stage::Cancelled {
                    reason: format!(
                        "not shipped within {} ms ({refunded:?})",
                        SHIP_WITHIN.as_millis()
                    ),
                };
            }
            // A stale alarm of a finished order: nothing to do.
            _ => {}
        }
        Ok(())
    }
}

use liege::cluster::{Node, NodeConfig};
use liege::store::StoreUrl;
use liege::Agents;

/// Polls `id` until `done` holds for its stage (10 s at most).
async fn wait_for(node: &Node, id: &str, done: impl Fn(&Stage) -> bool) -> Result<Stage, String> {
    let order = node.agent::<Order>(id);
    let mut stage = Stage::New;
    for _ in 0..200 {
        stage = order.call(OrderMsg::Get).await.map_err(|e| e.to_string())?;
        if done(&stage) {
            return Ok(stage);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{id} still {stage:?} after 10 s"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or("liege-example".into());
    std::fs::create_dir_all(&dir)?;
    let url: StoreUrl = format!("sqlite:{dir}/orders.db").parse()?;
    let store = liege::store::open(&url, Default::default()).await?;
    let agents = Agents::with_builtins().register(Order).register(Payments);
    let node = Node::start(NodeConfig::new("iad-1", "iad"), store, agents).await?;
    node.wait_ready(Duration::from_secs(10)).await;

    let run = std::process::id();
    let ids = [0, 1, 2].map(|i| format!("order-{run}-{i}"));
    for (id, amount) in ids.iter().zip([30, 5_000, 40]) {
        node.agent::<Order>(id)
            .call(OrderMsg::Place { amount })
            .await?;
    }
    // The first is shipped as soon as it is paid; the third never is.
    let paid = wait_for(&node, &ids[0], |s| matches!(s, Stage::Paid { .. })).await?;
    println!("first order paid: {paid:?}");
    node.agent::<Order>(&ids[0]).call(OrderMsg::Ship).await?;
    let cancelled = |s: &Stage| matches!(s, Stage::Cancelled { .. });
    for (label, id) in ["shipped", "over the limit", "never shipped"]
        .iter()
        .zip(&ids)
    {
        let stage = wait_for(&node, id, |s| {
            cancelled(s) || matches!(s, Stage::Shipped { .. })
        })
        .await?;
        println!("{label}: {stage:?}");
    }
    node.shutdown().await;
    Ok(())
}
