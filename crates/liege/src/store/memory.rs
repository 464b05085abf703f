//! In-process store (placeholder until the backend lands).
use super::{SharedStore, StoreError, StoreOptions, StoreResult};
/// Opens a fresh in-process store.
pub async fn open(_options: StoreOptions) -> StoreResult<SharedStore> {
    Err(StoreError::Other("memory store not built yet".into()))
}
