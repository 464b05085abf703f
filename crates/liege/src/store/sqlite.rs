//! SQLite store (placeholder until the backend lands).
use super::{SharedStore, StoreError, StoreOptions, StoreResult};
/// Opens or creates a SQLite store file.
pub async fn open(_path: &std::path::Path, _options: StoreOptions) -> StoreResult<SharedStore> {
    Err(StoreError::Other("sqlite store not built yet".into()))
}
