//! Transport tests over real TCP on 127.0.0.1.
