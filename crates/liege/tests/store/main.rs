//! Store integration tests: the conformance suite against every backend, then what is
//! specific to each backend.

mod memory;
mod postgres;
mod sqlite;
