//! Test support for liege and for users' own tests: an in-process multi-node
//! [`TestCluster`] with fault injection, and the store conformance suite.

mod cluster;
pub mod conformance;
/// Decoders of untrusted bytes, for the fuzz targets (not a stable API).
#[doc(hidden)]
pub mod decoders;

pub mod postgres;

pub use cluster::{
    check_audit, AuditViolation, TestCluster, TestClusterBuilder, TestNode, TestStore,
};
