//! Test support for liege and for users' own tests.

pub mod conformance;

pub mod postgres;
