//! PostgreSQL store (placeholder until the backend lands).
use super::{SharedStore, StoreError, StoreOptions, StoreResult};
/// Connects to PostgreSQL and migrates.
pub async fn open(_url: &str, _options: StoreOptions) -> StoreResult<SharedStore> {
    Err(StoreError::Other("postgres store not built yet".into()))
}
