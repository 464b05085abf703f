//! Cases for journals: appended only at the expected head and under the fence, alone or with
//! a checkpoint write; read back in revision order.

use super::{init, join, key, put, LONG_TTL_MS};
use crate::core::ids::{AgentKey, Epoch, NodeId, PartitionId, Rev};
use crate::store::{
    CheckpointWrite, JournalAppend, JournalEntries, SharedStore, Store, WriteError,
};

/// A standalone append of `entries` to `key` in partition `p`.
fn append(
    key: &AgentKey,
    p: u32,
    epoch: Epoch,
    writer: &NodeId,
    expected: u64,
    entries: &[&[u8]],
) -> JournalAppend {
    JournalAppend {
        key: key.clone(),
        partition: PartitionId(p),
        epoch,
        writer: writer.clone(),
        journal: entries_at(expected, entries),
    }
}

fn entries_at(expected: u64, entries: &[&[u8]]) -> JournalEntries {
    JournalEntries {
        expected_rev: Rev(expected),
        entries: entries.iter().map(|e| e.to_vec()).collect(),
    }
}

fn with_journal(mut w: CheckpointWrite, expected: u64, entries: &[&[u8]]) -> CheckpointWrite {
    w.journal = Some(entries_at(expected, entries));
    w
}

/// The whole journal of `key` as (revision, bytes).
async fn journal(store: &dyn Store, key: &AgentKey) -> Vec<(u64, Vec<u8>)> {
    store
        .read_journal(key, Rev(1), 1_000)
        .await
        .expect("read journal")
        .into_iter()
        .map(|e| (e.rev.0, e.data))
        .collect()
}

fn entries(list: &[(u64, &[u8])]) -> Vec<(u64, Vec<u8>)> {
    list.iter().map(|(r, d)| (*r, d.to_vec())).collect()
}

/// An append commits only at the journal's head and numbers its entries on from it; a
/// second append at the same head is a conflict and changes nothing; reads return the asked
/// range in order; journals of different keys are independent.
pub async fn journal_appends_only_at_the_expected_head_and_reads_in_order(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store.claim(&a, &[PartitionId(0)]).await.expect("claim");
    let (x, y) = (key("x"), key("y"));
    assert_eq!(store.journal_head(&x).await.expect("head"), Rev(0));
    assert!(journal(&*store, &x).await.is_empty());

    let r = store
        .append(&append(&x, 0, Epoch(1), &a, 0, &[b"e1", b"e2"]))
        .await
        .expect("append");
    assert_eq!(r, Ok(Rev(2)));
    let r = store
        .append(&append(&x, 0, Epoch(1), &a, 0, &[b"late"]))
        .await
        .expect("append");
    assert_eq!(
        r,
        Err(WriteError::JournalConflict {
            expected: Rev(0),
            actual: Rev(2)
        }),
        "a second append at the same head"
    );
    let r = store
        .append(&append(&x, 0, Epoch(1), &a, 3, &[b"ahead"]))
        .await
        .expect("append");
    assert_eq!(
        r,
        Err(WriteError::JournalConflict {
            expected: Rev(3),
            actual: Rev(2)
        }),
        "an append past the head"
    );
    let r = store
        .append(&append(&x, 0, Epoch(1), &a, 2, &[b"e3"]))
        .await
        .expect("append");
    assert_eq!(r, Ok(Rev(3)));
    assert_eq!(
        journal(&*store, &x).await,
        entries(&[(1, b"e1"), (2, b"e2"), (3, b"e3")]),
        "conflicting appends left nothing"
    );
    assert_eq!(store.journal_head(&x).await.expect("head"), Rev(3));

    let page = store.read_journal(&x, Rev(2), 1).await.expect("read");
    assert_eq!(
        page.iter()
            .map(|e| (e.rev.0, e.data.clone()))
            .collect::<Vec<_>>(),
        entries(&[(2, b"e2")]),
        "from is inclusive, limit bounds"
    );
    assert!(store
        .read_journal(&x, Rev(4), 10)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(
        store
            .read_journal(&x, Rev(0), 10)
            .await
            .expect("read")
            .len(),
        3,
        "from 0 reads from the first entry"
    );

    // Another key's journal starts at 1 and is unaffected.
    let r = store
        .append(&append(&y, 0, Epoch(1), &a, 0, &[b"y1"]))
        .await
        .expect("append");
    assert_eq!(r, Ok(Rev(1)));
    assert_eq!(journal(&*store, &y).await, entries(&[(1, b"y1")]));
    assert_eq!(journal(&*store, &x).await.len(), 3);
}

/// An append (alone or with a checkpoint write) by a writer whose epoch is no longer the
/// partition's, or who is not its owner, is fenced and changes nothing; the new owner
/// appends on from the same head.
pub async fn a_journal_append_with_a_stale_epoch_is_fenced_and_changes_nothing(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let (b, _) = join(&*store, "b", 1, LONG_TTL_MS).await;
    let p = PartitionId(0);
    store.claim(&a, &[p]).await.expect("claim by a");
    let x = key("x");
    let r = store
        .write(&[with_journal(
            put(&x, 0, Epoch(1), &a, 0, Some(b"s1")),
            0,
            &[b"a1"],
        )])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(1))]);

    // b takes the partition over at epoch 2.
    store.release(&a, &[(p, Epoch(1))]).await.expect("release");
    assert_eq!(
        store.claim(&b, &[p]).await.expect("claim by b"),
        vec![(p, Epoch(2))]
    );

    let r = store
        .append(&append(&x, 0, Epoch(1), &a, 1, &[b"stale"]))
        .await
        .expect("append");
    assert!(
        matches!(r, Err(WriteError::Fenced { partition, epoch: Epoch(2), .. }) if partition == p),
        "{r:?}"
    );
    let r = store
        .write(&[with_journal(
            put(&x, 0, Epoch(1), &a, 1, Some(b"stale")),
            1,
            &[b"stale"],
        )])
        .await
        .expect("write");
    assert!(matches!(r[0], Err(WriteError::Fenced { .. })), "{r:?}");
    // Neither the old owner at the new epoch nor a non-owner passes.
    let r = store
        .append(&append(&x, 0, Epoch(2), &a, 1, &[b"stale"]))
        .await
        .expect("append");
    assert!(matches!(r, Err(WriteError::Fenced { .. })), "{r:?}");
    assert_eq!(journal(&*store, &x).await, entries(&[(1, b"a1")]));
    assert_eq!(
        store.read(&x).await.expect("read").map(|c| c.rev),
        Some(Rev(1))
    );

    let r = store
        .append(&append(&x, 0, Epoch(2), &b, 1, &[b"b2"]))
        .await
        .expect("append");
    assert_eq!(r, Ok(Rev(2)));
    assert_eq!(
        journal(&*store, &x).await,
        entries(&[(1, b"a1"), (2, b"b2")])
    );
}

/// Entries carried by a checkpoint write are appended iff the write commits, and the write
/// commits only if the journal's head is the expected one too (else nothing changes); a key
/// written twice in one batch appends in batch order; deleting the checkpoint deletes the
/// journal.
pub async fn journal_entries_commit_exactly_with_their_checkpoint_write(store: SharedStore) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    store
        .claim(&a, &[PartitionId(0), PartitionId(1)])
        .await
        .expect("claim");
    let (x, y) = (key("x"), key("y"));
    let r = store
        .write(&[
            with_journal(put(&x, 0, Epoch(1), &a, 0, Some(b"x1")), 0, &[b"e1", b"e2"]),
            put(&y, 1, Epoch(1), &a, 0, Some(b"y1")),
        ])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(1)), Ok(Rev(1))]);
    assert_eq!(
        journal(&*store, &x).await,
        entries(&[(1, b"e1"), (2, b"e2")])
    );
    assert!(
        journal(&*store, &y).await.is_empty(),
        "no journal for a write without one"
    );

    // A checkpoint conflict appends nothing; a journal conflict writes no checkpoint.
    let r = store
        .write(&[
            with_journal(put(&x, 0, Epoch(1), &a, 7, Some(b"bad")), 2, &[b"no"]),
            with_journal(put(&y, 1, Epoch(1), &a, 1, Some(b"y2")), 5, &[b"no"]),
        ])
        .await
        .expect("write");
    assert_eq!(
        r,
        vec![
            Err(WriteError::Conflict {
                expected: Rev(7),
                actual: Rev(1)
            }),
            Err(WriteError::JournalConflict {
                expected: Rev(5),
                actual: Rev(0)
            }),
        ]
    );
    assert_eq!(journal(&*store, &x).await.len(), 2);
    assert!(journal(&*store, &y).await.is_empty());
    // Both wrong: every backend checks the journal head before the revision.
    let r = store
        .write(&[with_journal(
            put(&x, 0, Epoch(1), &a, 9, Some(b"bad")),
            9,
            &[b"no"],
        )])
        .await
        .expect("write");
    assert_eq!(
        r,
        vec![Err(WriteError::JournalConflict {
            expected: Rev(9),
            actual: Rev(2)
        })]
    );
    assert!(
        store
            .read_journal(&x, Rev(u64::MAX), 10)
            .await
            .expect("read")
            .is_empty(),
        "a revision past i64::MAX is past the head"
    );
    let y_now = store.read(&y).await.expect("read").expect("y exists");
    assert_eq!((y_now.rev, y_now.data), (Rev(1), b"y1".to_vec()));

    // The same key twice in one batch: the second write sees the first one's entries.
    let r = store
        .write(&[
            with_journal(put(&x, 0, Epoch(1), &a, 1, Some(b"x2")), 2, &[b"e3"]),
            with_journal(put(&x, 0, Epoch(1), &a, 2, Some(b"x3")), 3, &[b"e4", b"e5"]),
        ])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(2)), Ok(Rev(3))]);
    assert_eq!(store.journal_head(&x).await.expect("head"), Rev(5));
    assert_eq!(
        journal(&*store, &x).await,
        entries(&[(1, b"e1"), (2, b"e2"), (3, b"e3"), (4, b"e4"), (5, b"e5")])
    );

    // A delete takes the journal with it; the key starts again at 1.
    let r = store
        .write(&[put(&x, 0, Epoch(1), &a, 3, None)])
        .await
        .expect("delete");
    assert_eq!(r, vec![Ok(Rev(0))]);
    assert_eq!(store.journal_head(&x).await.expect("head"), Rev(0));
    assert!(journal(&*store, &x).await.is_empty());
    let r = store
        .write(&[with_journal(
            put(&x, 0, Epoch(1), &a, 0, Some(b"x")),
            0,
            &[b"again"],
        )])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(1))]);
    assert_eq!(journal(&*store, &x).await, entries(&[(1, b"again")]));
}
