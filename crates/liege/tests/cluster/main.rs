//! Cluster integration tests: in-process nodes over a shared store (and, for the process
//! tests, real `liege` processes).

mod admin;
mod alarms;
mod backends;
mod calls;
mod common;
mod coordination;
mod examples;
mod failover;
mod journal;
mod lossy;
mod outage;
mod single_node;
mod upgrade;
