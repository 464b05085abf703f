//! Cases for the dedupe records written with checkpoints and their pruning.

use super::{init, join, key, put, LONG_TTL_MS};
use crate::core::ids::{Epoch, PartitionId, Rev};
use crate::store::{CheckpointWrite, DedupeRecord, SharedStore, WriteError};

fn record(signal: u128, reply: &[u8], expires_at_ms: i64) -> DedupeRecord {
    DedupeRecord {
        signal,
        fingerprint: u64::MAX - signal as u64,
        reply: reply.to_vec(),
        expires_at_ms,
    }
}

fn with(mut w: CheckpointWrite, records: Vec<DedupeRecord>) -> CheckpointWrite {
    w.dedupe = records;
    w
}

/// Records commit with their write and read back exactly; a write that is fenced or in
/// conflict stores none of its records.
pub async fn dedupe_records_commit_exactly_with_their_write(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    let (k, other) = (key("k"), key("other"));
    let first = record(1, b"{\"value\":1}", 1_000);
    let r = store
        .write(&[with(
            put(&k, 0, Epoch(1), &a, 0, Some(b"one")),
            vec![first.clone(), record(2, b"2", 2_000)],
        )])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);
    assert_eq!(store.dedupe(&k, 1).await.expect("lookup"), Some(first));
    assert_eq!(
        store.dedupe(&k, 2).await.expect("lookup"),
        Some(record(2, b"2", 2_000))
    );
    // Another key, another signal: nothing.
    assert_eq!(store.dedupe(&other, 1).await.expect("lookup"), None);
    assert_eq!(store.dedupe(&k, 3).await.expect("lookup"), None);

    // A revision conflict and a fenced write (wrong epoch) leave no record behind.
    let r = store
        .write(&[
            with(
                put(&k, 0, Epoch(1), &a, 0, Some(b"stale rev")),
                vec![record(3, b"3", 3_000)],
            ),
            with(
                put(&other, 0, Epoch(7), &a, 0, Some(b"wrong epoch")),
                vec![record(4, b"4", 3_000)],
            ),
        ])
        .await
        .expect("write");
    assert!(matches!(r[0], Err(WriteError::Conflict { .. })), "{r:?}");
    assert!(matches!(r[1], Err(WriteError::Fenced { .. })), "{r:?}");
    assert_eq!(store.dedupe(&k, 3).await.expect("lookup"), None);
    assert_eq!(store.dedupe(&other, 4).await.expect("lookup"), None);

    // A later write may carry a newer record of the same signal: it replaces the old one.
    let r = store
        .write(&[with(
            put(&k, 0, Epoch(1), &a, 1, Some(b"two")),
            vec![record(1, b"again", 9_000)],
        )])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(2))]);
    assert_eq!(
        store.dedupe(&k, 1).await.expect("lookup"),
        Some(record(1, b"again", 9_000))
    );
}

/// Pruning deletes only records that expired before the given time, at most `limit` at a
/// time, and never a checkpoint.
pub async fn prune_deletes_only_expired_dedupe_records(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    let k = key("k");
    let records = (0..10).map(|i| record(i, b"r", 100 + i as i64)).collect();
    let r = store
        .write(&[with(put(&k, 0, Epoch(1), &a, 0, Some(b"s")), records)])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1))]);

    // Expired before 105: records 0..=4. At most 3 per call.
    assert_eq!(store.prune_dedupe(105, 3).await.expect("prune"), 3);
    assert_eq!(store.prune_dedupe(105, 3).await.expect("prune"), 2);
    assert_eq!(store.prune_dedupe(105, 3).await.expect("prune"), 0);
    for i in 0..10 {
        let kept = store.dedupe(&k, i).await.expect("lookup").is_some();
        assert_eq!(kept, i >= 5, "record {i}");
    }
    assert_eq!(store.prune_dedupe(i64::MAX, 100).await.expect("prune"), 5);
    assert!(store.read(&k).await.expect("read").is_some());
}
