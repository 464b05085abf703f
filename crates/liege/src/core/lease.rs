//! The lease state machine of one node.
