//! Cases for the dedupe records written with checkpoints and their pruning.

use super::{init, join, key, put, LONG_TTL_MS};
use crate::core::ids::{AgentKey, Epoch, PartitionId, Rev};
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

/// A write's records keyed the legacy way are found by lookup, as older builds find them,
/// and not listed by a key's read; a record written both ways is found once, per key first.
pub async fn records_keyed_the_legacy_way_are_found_by_lookup_and_not_listed(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    let k = key("legacy");
    let mut first = with(
        put(&k, 0, Epoch(1), &a, 0, Some(b"1")),
        vec![record(1, b"old", 9_000)],
    );
    first.legacy_records = true;
    let second = with(
        put(&k, 0, Epoch(1), &a, 1, Some(b"2")),
        vec![record(2, b"new", 9_000), record(1, b"per-key", 9_000)],
    );
    assert_eq!(
        store.write(&[first]).await.expect("write"),
        vec![Ok(Rev(1))]
    );
    assert_eq!(
        store.dedupe(&k, 1).await.expect("lookup"),
        Some(record(1, b"old", 9_000))
    );
    let listed = store
        .read_with_records(std::slice::from_ref(&k), 0, 10)
        .await
        .expect("read");
    assert_eq!(
        listed[0].records,
        Some(Vec::new()),
        "legacy rows are not listed"
    );

    assert_eq!(
        store.write(&[second]).await.expect("write"),
        vec![Ok(Rev(2))]
    );
    assert_eq!(
        store.dedupe(&k, 1).await.expect("lookup"),
        Some(record(1, b"per-key", 9_000)),
        "the per-key row first"
    );
    let mut listed = store.read_with_records(&[k], 0, 10).await.expect("read");
    let mut records = listed.remove(0).records.expect("within the limit");
    records.sort_by_key(|r| r.signal);
    assert_eq!(
        records,
        vec![record(1, b"per-key", 9_000), record(2, b"new", 9_000)]
    );
}

/// A read lists exactly each key's records that expire at or after the given time, with
/// its checkpoint, or none at all (`None`) when there are more than the limit; one result
/// per key asked, in order, repeats included.
pub async fn a_keys_live_records_are_read_with_its_checkpoint(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    let (k, other, empty) = (key("k"), key("k2"), key("never-written"));
    let records: Vec<_> = (1..=3)
        .map(|i| record(i, format!("{i}").as_bytes(), 1_000 * i as i64))
        .collect();
    let r = store
        .write(&[
            with(put(&k, 0, Epoch(1), &a, 0, Some(b"one")), records.clone()),
            with(
                put(&other, 0, Epoch(1), &a, 0, Some(b"other")),
                vec![record(9, b"9", 5_000)],
            ),
        ])
        .await;
    assert_eq!(r.expect("write"), vec![Ok(Rev(1)), Ok(Rev(1))]);

    let read = |keys: Vec<AgentKey>, now_ms: i64, limit: u32| {
        let store = store.clone();
        async move {
            let loaded = store
                .read_with_records(&keys, now_ms, limit)
                .await
                .expect("read");
            assert_eq!(loaded.len(), keys.len(), "one result per key");
            loaded
                .into_iter()
                .map(|l| {
                    let records = l.records.map(|mut r| {
                        r.sort_by_key(|r| r.signal);
                        r
                    });
                    (l.checkpoint.map(|c| (c.rev, c.data)), records)
                })
                .collect::<Vec<_>>()
        }
    };
    let one = Some((Rev(1), b"one".to_vec()));
    // At 1,500, record 1 has expired; 2 and 3 are live (2 fits a limit of exactly 2).
    for limit in [10, 2] {
        assert_eq!(
            read(vec![k.clone()], 1_500, limit).await,
            vec![(one.clone(), Some(records[1..].to_vec()))],
            "limit {limit}"
        );
    }
    // An expiry equal to the time is still live.
    assert_eq!(
        read(vec![k.clone()], 3_000, 10).await,
        vec![(one.clone(), Some(records[2..].to_vec()))]
    );
    // More live records than the limit: the checkpoint, and no list.
    assert_eq!(read(vec![k.clone()], 0, 2).await, vec![(one.clone(), None)]);
    // Several keys at once: each gets its own, in the order asked; a key never written has
    // nothing.
    assert_eq!(
        read(
            vec![empty.clone(), other.clone(), k.clone(), empty, k],
            0,
            10
        )
        .await,
        vec![
            (None, Some(Vec::new())),
            (
                Some((Rev(1), b"other".to_vec())),
                Some(vec![record(9, b"9", 5_000)])
            ),
            (one.clone(), Some(records.clone())),
            (None, Some(Vec::new())),
            (one, Some(records)),
        ]
    );
    assert!(read(Vec::new(), 0, 10).await.is_empty());
}
