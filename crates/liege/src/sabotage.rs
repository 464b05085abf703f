//! Deliberate sabotage, to prove that the drill and the tests can fail.
//!
//! In **debug builds only**, `LIEGE_UNSAFE_SKIP_FENCING=1` turns off every guard of the
//! singleton promise: the stores (memory and SQLite) accept writes without the fence and
//! revision checks, and nodes keep serving after their lease deadline and after losing a
//! partition. A `pause` drill against such nodes must FAIL. Release builds ignore the
//! variable: the check compiles to `false`.

/// True when fencing is deliberately disabled (debug builds with the variable set).
pub(crate) fn skip_fencing() -> bool {
    #[cfg(debug_assertions)]
    {
        static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FLAG.get_or_init(|| {
            let on = std::env::var("LIEGE_UNSAFE_SKIP_FENCING").as_deref() == Ok("1");
            if on {
                tracing::error!(
                    "LIEGE_UNSAFE_SKIP_FENCING=1: fencing is OFF; this node can lose data"
                );
            }
            on
        })
    }
    #[cfg(not(debug_assertions))]
    {
        false
    }
}
