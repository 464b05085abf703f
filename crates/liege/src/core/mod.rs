//! Pure logic without IO: identifiers, placement, and the ownership engine.

pub mod engine;
pub mod ids;
pub mod placement;
