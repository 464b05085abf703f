//! Cases for durable alarms: set, moved and cleared only by committed fenced writes, found by
//! partition and due time.

use super::{init, join, key, put, LONG_TTL_MS};
use crate::core::ids::{Epoch, PartitionId, Rev};
use crate::store::{AlarmUpdate, CheckpointWrite, SharedStore, WriteError};

fn with(mut w: CheckpointWrite, alarm: AlarmUpdate) -> CheckpointWrite {
    w.alarm = alarm;
    w
}

/// Alarms follow committed writes (set, moved, kept, cleared; a deleted checkpoint loses
/// its alarm); a fenced or conflicting write changes none; `due_alarms` returns the due
/// alarms of the partitions asked, earliest first, at most `limit`.
pub async fn alarms_change_only_with_committed_writes_and_are_found_by_due_time(
    store: SharedStore,
) {
    init(&*store).await;
    let (a, _) = join(&*store, "a", 1, LONG_TTL_MS).await;
    let parts = [PartitionId(0), PartitionId(1), PartitionId(2)];
    store.claim(&a, &parts).await.expect("claim");
    let due = |parts: &[PartitionId], by: i64, limit: u32| {
        let store = store.clone();
        let parts = parts.to_vec();
        async move {
            store
                .due_alarms(&parts, by, limit)
                .await
                .expect("due alarms")
                .into_iter()
                .map(|d| (d.key.id.to_string(), d.partition.0, d.due_ms))
                .collect::<Vec<_>>()
        }
    };
    let (x, y, z) = (key("x"), key("y"), key("z"));
    let r = store
        .write(&[
            with(
                put(&x, 0, Epoch(1), &a, 0, Some(b"x")),
                AlarmUpdate::Set(300),
            ),
            with(
                put(&y, 1, Epoch(1), &a, 0, Some(b"y")),
                AlarmUpdate::Set(100),
            ),
            with(
                put(&z, 2, Epoch(1), &a, 0, Some(b"z")),
                AlarmUpdate::Set(200),
            ),
        ])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(1)), Ok(Rev(1)), Ok(Rev(1))]);
    assert_eq!(
        due(&parts, 1_000, 10).await,
        vec![
            ("y".to_string(), 1, 100),
            ("z".to_string(), 2, 200),
            ("x".to_string(), 0, 300)
        ],
        "earliest first"
    );
    assert_eq!(due(&parts, 250, 10).await.len(), 2, "only the due ones");
    assert_eq!(due(&parts, 1_000, 1).await, vec![("y".to_string(), 1, 100)]);
    assert_eq!(
        due(&[PartitionId(0)], 1_000, 10).await,
        vec![("x".to_string(), 0, 300)],
        "only the partitions asked"
    );
    assert!(due(&[PartitionId(3)], 1_000, 10).await.is_empty());

    // A write that keeps the alarm keeps it; one that moves it moves it.
    let r = store
        .write(&[
            with(put(&x, 0, Epoch(1), &a, 1, Some(b"x2")), AlarmUpdate::Keep),
            with(
                put(&y, 1, Epoch(1), &a, 1, Some(b"y2")),
                AlarmUpdate::Set(900),
            ),
        ])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(2)), Ok(Rev(2))]);
    assert_eq!(
        due(&parts, 1_000, 10).await,
        vec![
            ("z".to_string(), 2, 200),
            ("x".to_string(), 0, 300),
            ("y".to_string(), 1, 900)
        ]
    );

    // A revision conflict and a fenced write change no alarm.
    let r = store
        .write(&[
            with(
                put(&x, 0, Epoch(1), &a, 0, Some(b"stale")),
                AlarmUpdate::Clear,
            ),
            with(
                put(&z, 2, Epoch(9), &a, 1, Some(b"fenced")),
                AlarmUpdate::Set(1),
            ),
        ])
        .await
        .expect("write");
    assert!(matches!(r[0], Err(WriteError::Conflict { .. })), "{r:?}");
    assert!(matches!(r[1], Err(WriteError::Fenced { .. })), "{r:?}");
    assert_eq!(due(&parts, 1_000, 10).await.len(), 3, "unchanged");

    // Cleared by a committed write; gone with a deleted checkpoint.
    let r = store
        .write(&[
            with(put(&x, 0, Epoch(1), &a, 2, Some(b"x3")), AlarmUpdate::Clear),
            with(put(&z, 2, Epoch(1), &a, 1, None), AlarmUpdate::Keep),
        ])
        .await
        .expect("write");
    assert_eq!(r, vec![Ok(Rev(3)), Ok(Rev(0))]);
    assert_eq!(
        due(&parts, 1_000, 10).await,
        vec![("y".to_string(), 1, 900)]
    );
}
