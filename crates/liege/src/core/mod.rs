//! Pure logic without IO: identifiers, placement, the lease state machine.

pub mod ids;
pub mod lease;
pub mod placement;
