//! Placement: which live node should own a partition (rendezvous hashing, region-aware).
//! (Being written; see the interface notes in the session plan.)
