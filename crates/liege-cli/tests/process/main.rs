//! Process tests: real `liege node` processes on real ports and a real SQLite file.

mod admin;
mod api;
mod cluster;
mod dedupe;
mod examples;
mod http;
mod mitm;
mod secrets;
mod single;
mod support;
