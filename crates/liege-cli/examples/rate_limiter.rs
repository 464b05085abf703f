//! A per-tenant rate limiter served by the whole `liege` CLI: your own kind, your own binary,
//! and still `node`, `drill`, `bench` and `admin`.
//!
//! ```bash
//! cargo run --release -p liege-cli --example rate_limiter -- node --name local-1
//! curl -s -XPOST localhost:8080/v1/agents/limiter/tenant-7 \
//!   -H 'content-type: application/json' \
//!   -d '{"specversion":"1.0","id":"r1","source":"/api","type":"take"}'
//! # {"allowed":true,"remaining":9.0,"retry_after_ms":0}
//! ```
//!
//! Each tenant is one keyed singleton: one token bucket per tenant in the whole cluster, so
//! the limit holds across every node and region, and survives failover (the bucket is the
//! agent's durable state).

use liege::{Agent, AgentError, Agents, Context};
use serde::{Deserialize, Serialize};

/// Token bucket per tenant: `capacity` tokens, refilled at `per_second`.
struct RateLimiter {
    capacity: f64,
    per_second: f64,
}

/// What a limiter handles (CloudEvent types `take` and `peek`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum LimiterMsg {
    /// Take `n` tokens (default 1) if there are enough.
    Take {
        #[serde(default = "one")]
        n: u32,
    },
    /// How many tokens are left, taking nothing.
    Peek,
}

fn one() -> u32 {
    1
}

/// The bucket: tokens left as of `at_ms` (Unix milliseconds); `None` before the first use.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Bucket {
    tokens: f64,
    at_ms: Option<i64>,
}

/// A limiter's answer.
#[derive(Serialize, Deserialize)]
struct Decision {
    allowed: bool,
    remaining: f64,
    /// When to retry if not allowed.
    retry_after_ms: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Agent for RateLimiter {
    const KIND: &'static str = "limiter";
    type State = Bucket;
    type Msg = LimiterMsg;
    type Reply = Decision;

    async fn handle(
        &self,
        bucket: &mut Bucket,
        msg: LimiterMsg,
        ctx: &mut Context<'_>,
    ) -> Result<Decision, AgentError> {
        let now = now_ms();
        let elapsed = bucket
            .at_ms
            .map_or(f64::INFINITY, |t| (now - t).max(0) as f64);
        bucket.tokens = (bucket.tokens + elapsed / 1000.0 * self.per_second).min(self.capacity);
        bucket.at_ms = Some(now);
        let want = match msg {
            LimiterMsg::Take { n } if f64::from(n) > self.capacity => {
                return Err(AgentError::new(
                    "bad_request",
                    format!("cannot take {n} tokens from a bucket of {}", self.capacity),
                ))
            }
            LimiterMsg::Take { n } => f64::from(n),
            LimiterMsg::Peek => {
                ctx.read_only();
                0.0
            }
        };
        let allowed = bucket.tokens >= want;
        if allowed {
            bucket.tokens -= want;
        }
        let missing = (want - bucket.tokens).max(0.0);
        Ok(Decision {
            allowed,
            remaining: bucket.tokens.floor(),
            retry_after_ms: if allowed {
                0
            } else {
                (missing / self.per_second * 1000.0).ceil() as u64
            },
        })
    }
}

fn main() -> std::process::ExitCode {
    let limiter = RateLimiter {
        capacity: 10.0,
        per_second: 1.0,
    };
    liege_cli::run(Agents::with_builtins().register(limiter))
}
