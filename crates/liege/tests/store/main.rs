//! Store integration tests: the conformance suite against every backend, then what is
//! specific to each backend.

mod memory;
mod postgres;
mod sqlite;

/// What a dedupe record written before checkpoint format 4 must still do, once the caller
/// has inserted it raw under `liege::store::legacy_dedupe_record_key(key, LEGACY.0)` with
/// fingerprint `LEGACY.1`, reply `LEGACY.2` and no expiry: a lookup finds it, and a key's
/// read does not list it.
async fn a_legacy_record_is_found_and_not_listed(
    store: &dyn liege::store::Store,
    key: &liege::AgentKey,
) {
    let (signal, fingerprint, reply) = LEGACY;
    assert_eq!(
        store.dedupe(key, signal).await.expect("lookup"),
        Some(liege::store::DedupeRecord {
            signal,
            fingerprint,
            reply: reply.to_vec(),
            expires_at_ms: i64::MAX,
        })
    );
    assert_eq!(store.dedupe(key, signal + 1).await.expect("lookup"), None);
    let loaded = store
        .read_with_records(std::slice::from_ref(key), 0, 10)
        .await
        .expect("read");
    assert_eq!(
        loaded[0].records,
        Some(Vec::new()),
        "legacy records are not listed"
    );
}

/// The legacy record of [`a_legacy_record_is_found_and_not_listed`]: signal, fingerprint,
/// reply.
const LEGACY: (u128, u64, &[u8]) = (42, 7, b"{\"value\":1}");
