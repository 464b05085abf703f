//! The store conformance suite, run against every backend (placeholder).
