//! The engine on explicit time: every decision checked without a runtime, a store or a clock.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{Directory, Lease, Membership, NodeLease, PartitionRow};

const TTL: u64 = 1000;

fn config(name: &str, partitions: u32) -> EngineConfig {
    EngineConfig {
        name: name.into(),
        region: "r".into(),
        cluster_addr: format!("{name}:7070"),
        http_addr: String::new(),
        partitions,
        lease_ttl: Duration::from_millis(TTL),
        placement: PlacementPolicy::none(),
        rebalance: RebalanceConfig::default(),
        seed: 42,
        sabotage: Sabotage::none(),
    }
}

/// An engine plus a clock, collecting commands.
struct Bench {
    e: Engine,
    now: LocalMs,
}

impl Bench {
    fn new(name: &str, partitions: u32) -> Self {
        Self {
            e: Engine::new(config(name, partitions), 0),
            now: 0,
        }
    }

    fn step(&mut self, input: Input) -> Vec<Command> {
        let mut out = Vec::new();
        self.e.step(input, self.now, &mut out);
        out
    }

    fn at(&mut self, now: LocalMs, input: Input) -> Vec<Command> {
        self.now = now;
        self.step(input)
    }

    /// Starts and answers the join successfully.
    fn joined(&mut self) -> NodeId {
        let out = self.step(Input::Tick);
        let Some(Command::Join {
            record, sent_at, ..
        }) = out.first().cloned()
        else {
            panic!("expected a join, got {out:?}");
        };
        let out = self.step(Input::Joined {
            node: record.id.clone(),
            sent_at,
            result: Ok(Lease {
                now: 0,
                expires_at: TTL as i64,
            }),
        });
        assert!(has_emit(&out, "node_joined"), "{out:?}");
        record.id
    }

    /// Moves the clock to `now` with a renewal just answered, so the lease is valid.
    fn live_at(&mut self, now: LocalMs) {
        self.now = now;
        let me = self.e.me().clone();
        self.step(Input::Renewed {
            node: me,
            sent_at: now,
            result: Ok(Lease {
                now: 0,
                expires_at: 0,
            }),
        });
    }

    fn table(&self) -> &ServingTable {
        &self.e.published().table
    }

    fn read(&mut self, sent_at: LocalMs, snapshot: Snapshot) -> Vec<Command> {
        self.step(Input::Read {
            sent_at,
            result: Ok(snapshot),
        })
    }
}

fn has_emit(out: &[Command], name: &str) -> bool {
    out.iter()
        .any(|c| matches!(c, Command::Emit(e) if e.name() == name))
}

fn claim_of(out: &[Command]) -> Option<Vec<PartitionId>> {
    out.iter().find_map(|c| match c {
        Command::Claim { partitions, .. } => Some(partitions.clone()),
        _ => None,
    })
}

fn node(id: &NodeId, expires: i64) -> NodeLease {
    NodeLease {
        record: NodeRecord {
            id: id.clone(),
            region: "r".into(),
            cluster_addr: format!("{}:7070", id.name),
            http_addr: String::new(),
            compat: crate::store::COMPAT_LEVEL,
        },
        lease_expires_at: expires,
        left: false,
    }
}

fn snapshot(now: i64, nodes: &[(&NodeId, i64)], owners: &[(Option<&NodeId>, u64)]) -> Snapshot {
    Snapshot {
        membership: Membership {
            now,
            nodes: nodes.iter().map(|(id, exp)| node(id, *exp)).collect(),
        },
        directory: Directory {
            now,
            partitions: owners
                .iter()
                .enumerate()
                .map(|(i, (o, e))| PartitionRow {
                    id: PartitionId(i as u32),
                    owner: o.cloned(),
                    epoch: Epoch(*e),
                })
                .collect(),
        },
        settings: Settings::default(),
    }
}

#[test]
fn a_node_serves_only_until_sent_plus_ttl_minus_margin_then_fences_and_rejoins() {
    let mut b = Bench::new("a", 4);
    let me = b.joined();
    assert!(b.table().lease_valid_at(899));
    assert!(!b.table().lease_valid_at(900));
    // A renewal is due every TTL/4.
    let out = b.at(250, Input::Tick);
    assert!(
        matches!(out[..], [Command::Renew { sent_at: 250, .. }]),
        "{out:?}"
    );
    // It never comes back: at the deadline the node fences itself.
    let out = b.at(900, Input::Tick);
    assert!(out.iter().any(|c| matches!(c, Command::DropAll)));
    assert!(has_emit(&out, "self_fenced"));
    let Some(Command::Join { record, .. }) = out.iter().find(|c| matches!(c, Command::Join { .. }))
    else {
        panic!("rejoin expected: {out:?}");
    };
    assert_ne!(record.id, me, "rejoins under a new incarnation");
    assert_eq!(
        b.table().check(PartitionId(0), 900),
        Err(NotServing::NoLease)
    );
}

#[test]
fn a_join_the_store_could_not_take_is_retried_within_a_quarter_of_a_renewal_period() {
    let mut b = Bench::new("a", 4);
    let out = b.step(Input::Tick);
    let Some(Command::Join {
        record, sent_at, ..
    }) = out.first().cloned()
    else {
        panic!("expected a join, got {out:?}");
    };
    // The store is down: the join is refused at once.
    b.at(
        5,
        Input::Joined {
            node: record.id.clone(),
            sent_at,
            result: Err(StoreError::Unavailable("connection refused".into())),
        },
    );
    // TTL/4 is the renewal period; a failed join waits a quarter of it, not all of it.
    let retry = 5 + TTL / 16;
    let early = b.at(retry - 1, Input::Tick);
    assert!(
        !early.iter().any(|c| matches!(c, Command::Join { .. })),
        "{early:?}"
    );
    let due = b.at(retry, Input::Tick);
    assert!(
        due.iter().any(|c| matches!(c, Command::Join { .. })),
        "a node must try again soon after the store returns: {due:?}"
    );
}

#[test]
fn a_renewal_extends_the_deadline_and_an_older_answer_never_shortens_it() {
    let mut b = Bench::new("a", 1);
    let me = b.joined();
    b.at(250, Input::Tick);
    b.at(500, Input::Tick);
    let ok = || {
        Ok(Lease {
            now: 0,
            expires_at: 0,
        })
    };
    b.at(
        510,
        Input::Renewed {
            node: me.clone(),
            sent_at: 500,
            result: ok(),
        },
    );
    assert_eq!(b.table().lease_deadline(), Some(1400));
    b.at(
        520,
        Input::Renewed {
            node: me.clone(),
            sent_at: 250,
            result: ok(),
        },
    );
    assert_eq!(b.table().lease_deadline(), Some(1400));
    // An answer for another incarnation changes nothing.
    b.at(
        530,
        Input::Renewed {
            node: NodeId::new("a", me.incarnation ^ 1),
            sent_at: 520,
            result: ok(),
        },
    );
    assert_eq!(b.table().lease_deadline(), Some(1400));
}

#[test]
fn a_lost_lease_fences_at_once() {
    let mut b = Bench::new("a", 1);
    let me = b.joined();
    b.at(250, Input::Tick);
    let out = b.at(
        260,
        Input::Renewed {
            node: me.clone(),
            sent_at: 250,
            result: Err(StoreError::LeaseLost { node: me }),
        },
    );
    assert!(has_emit(&out, "self_fenced"));
    assert!(!b.table().lease_valid_at(260));
}

#[test]
fn orphans_of_an_expired_node_are_claimed_in_one_batch_and_announced_once() {
    let mut b = Bench::new("a", 8);
    let me = b.joined();
    let dead = NodeId::new("b", 9);
    // Old enough that the settle rule does not apply.
    b.live_at(2 * TTL);
    let owners: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&dead), 3)).collect();
    let out = b.read(2000, snapshot(5000, &[(&me, 6000), (&dead, 4000)], &owners));
    let claimed = claim_of(&out).expect("a claim");
    assert_eq!(
        claimed.len(),
        8,
        "every orphan desired by the only live node"
    );
    assert!(has_emit(&out, "failover_started"));
    let out = b.step(Input::Claimed {
        node: me.clone(),
        partitions: claimed.clone(),
        result: Ok(claimed.iter().map(|p| (*p, Epoch(4))).collect()),
    });
    assert_eq!(b.table().count(), 8);
    assert_eq!(b.table().check(PartitionId(3), b.now), Ok(Epoch(4)));
    let succeeded: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::Emit(Event::FailoverSucceeded {
                partitions,
                since_expiry_ms,
                ..
            }) => Some((*partitions, *since_expiry_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(succeeded, vec![(8, 1000)]);
    // The next read claims nothing and announces nothing again.
    let owners: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&me), 4)).collect();
    let out = b.read(2100, snapshot(5100, &[(&me, 6000)], &owners));
    assert!(claim_of(&out).is_none() && !has_emit(&out, "failover_started"));
}

#[test]
fn a_failover_claim_adopted_from_a_read_before_its_answer_still_counts_as_a_recovery() {
    let mut b = Bench::new("a", 2);
    let me = b.joined();
    let dead = NodeId::new("b", 9);
    b.live_at(2 * TTL);
    let owners = [(Some(&dead), 3), (Some(&dead), 3)];
    let out = b.read(2000, snapshot(5000, &[(&me, 6000), (&dead, 4000)], &owners));
    let claimed = claim_of(&out).expect("a claim");
    // The claim commits; a read sent after it comes back before the claim's own answer.
    let mine = [(Some(&me), 4), (Some(&me), 4)];
    b.read(2050, snapshot(5050, &[(&me, 6000), (&dead, 4000)], &mine));
    assert_eq!(b.table().held(PartitionId(0)), Held::Serving(Epoch(4)));
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: claimed.clone(),
        result: Ok(claimed.iter().map(|p| (*p, Epoch(4))).collect()),
    });
    for p in [PartitionId(0), PartitionId(1)] {
        let r = b.e.published().recovery(p, Epoch(4), b.now);
        assert!(r.is_some(), "{p}: taken from a failed owner, so a recovery");
    }
}

#[test]
fn a_partition_owned_at_a_newer_epoch_is_dropped_and_a_stale_read_undoes_nothing() {
    let mut b = Bench::new("a", 1);
    let me = b.joined();
    b.live_at(2 * TTL);
    let out = b.read(2000, snapshot(0, &[(&me, 9000)], &[(None, 0)]));
    let claimed = claim_of(&out).expect("claims the unowned partition");
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: claimed,
        result: Ok(vec![(PartitionId(0), Epoch(1))]),
    });
    // A read sent before the claim committed shows the old row: nothing changes.
    let out = b.read(1990, snapshot(0, &[(&me, 9000)], &[(None, 0)]));
    assert!(!has_emit(&out, "partition_lost"));
    assert_eq!(b.table().held(PartitionId(0)), Held::Serving(Epoch(1)));
    // Someone took it over at epoch 2 (our lease must have lapsed in the store).
    let other = NodeId::new("z", 1);
    let out = b.read(
        2100,
        snapshot(0, &[(&me, 9000), (&other, 9000)], &[(Some(&other), 2)]),
    );
    assert!(has_emit(&out, "partition_lost"));
    assert!(out
        .iter()
        .any(|c| matches!(c, Command::Drop(l) if l == &[(PartitionId(0), Epoch(1))])));
    assert_eq!(b.table().held(PartitionId(0)), Held::No);
}

#[test]
fn a_claim_whose_answer_was_lost_is_adopted_from_the_next_read() {
    let mut b = Bench::new("a", 1);
    let me = b.joined();
    b.live_at(2 * TTL);
    let out = b.read(2000, snapshot(0, &[(&me, 9000)], &[(None, 0)]));
    let claimed = claim_of(&out).expect("claim");
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: claimed,
        result: Err(StoreError::Unavailable("timeout".into())),
    });
    assert_eq!(b.table().held(PartitionId(0)), Held::No);
    b.read(2100, snapshot(0, &[(&me, 9000)], &[(Some(&me), 1)]));
    assert_eq!(b.table().held(PartitionId(0)), Held::Serving(Epoch(1)));
}

#[test]
fn a_young_node_takes_back_its_own_partitions_first_and_the_others_after_a_ttl() {
    let mut b = Bench::new("a", 2);
    let me = b.joined();
    let old_me = NodeId::new("a", 1);
    let other = NodeId::new("b", 2);
    // Both previous owners expired (a store outage); only this node is back.
    let snap = || {
        snapshot(
            5000,
            &[(&me, 6000), (&NodeId::new("b", 2), 4000)],
            &[(Some(&old_me), 3), (Some(&other), 3)],
        )
    };
    let out = b.at(
        10,
        Input::Read {
            sent_at: 10,
            result: Ok(snap()),
        },
    );
    assert_eq!(claim_of(&out), Some(vec![PartitionId(0)]), "only its own");
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: vec![PartitionId(0)],
        result: Ok(vec![(PartitionId(0), Epoch(4))]),
    });
    let out = b.at(
        TTL + 20,
        Input::Read {
            sent_at: TTL + 20,
            result: Ok(snap()),
        },
    );
    assert_eq!(
        claim_of(&out),
        Some(vec![PartitionId(1)]),
        "settled: the rest"
    );
}

#[test]
fn a_young_node_takes_the_partitions_of_a_node_that_left_at_once() {
    let mut b = Bench::new("a", 2);
    let me = b.joined();
    let other = NodeId::new("b", 2);
    // b left (declared down by an operator, or a graceful leave): it will not come back as
    // this incarnation, so the young-node wait does not apply to its partitions.
    let mut snap = snapshot(
        5000,
        &[(&me, 6000), (&other, 4000)],
        &[(None, 3), (Some(&other), 3)],
    );
    for n in &mut snap.membership.nodes {
        if n.record.id == other {
            n.left = true;
        }
    }
    let out = b.at(
        10,
        Input::Read {
            sent_at: 10,
            result: Ok(snap),
        },
    );
    assert_eq!(
        claim_of(&out),
        Some(vec![PartitionId(0), PartitionId(1)]),
        "the unowned one and the one of the node that left"
    );
}

#[test]
fn a_paused_rebalance_reports_each_held_back_move_once_then_makes_it_on_resume() {
    let mut b = Bench::new("a", 8);
    let me = b.joined();
    serving_everything(&mut b, &me, 8);
    let newcomer = NodeId::new("b", 1);
    let owners: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&me), 1)).collect();
    let snap = |t, paused: bool| {
        let mut s = snapshot(t, &[(&me, 99_000), (&newcomer, 99_000)], &owners);
        s.settings.rebalance_paused = paused;
        s
    };
    let named = |out: &[Command], name: &str| {
        out.iter()
            .filter(|c| matches!(c, Command::Emit(e) if e.name() == name))
            .count()
    };
    b.read(2000, snap(0, true));
    b.live_at(2000 + TTL);
    let out = b.read(b.now, snap(1000, true));
    let skipped = named(&out, "migration_skipped");
    assert!(skipped > 0, "the moves the pause holds back are reported");
    assert!(!out.iter().any(|c| matches!(c, Command::Handoff(_))));
    assert!(out.iter().all(|c| match c {
        Command::Emit(Event::MigrationSkipped { region, reason, .. }) =>
            region == "r" && reason.contains("paused"),
        _ => true,
    }));
    let out = b.read(b.now, snap(1000, true));
    assert_eq!(named(&out, "migration_skipped"), 0, "once per partition");
    let out = b.read(b.now, snap(1000, false));
    assert!(
        named(&out, "migration_started") > 0,
        "resumed: the moves start"
    );
    assert_eq!(named(&out, "migration_skipped"), 0);
}

fn serving_everything(b: &mut Bench, me: &NodeId, n: u32) {
    b.live_at(2 * TTL);
    let owners: Vec<(Option<&NodeId>, u64)> = (0..n).map(|_| (Some(me), 1)).collect();
    b.read(2000, snapshot(0, &[(me, 99_000)], &owners));
    assert_eq!(b.table().count(), n as usize);
}

#[test]
fn partitions_move_to_a_settled_desired_owner_in_paced_batches() {
    let mut b = Bench::new("a", 64);
    b.e.cfg.rebalance.max_per_tick = 5; // test-only access
    let me = b.joined();
    serving_everything(&mut b, &me, 64);
    let newcomer = NodeId::new("b", 1);
    let owners: Vec<(Option<&NodeId>, u64)> = (0..64).map(|_| (Some(&me), 1)).collect();
    let snap = |t| snapshot(t, &[(&me, 99_000), (&newcomer, 99_000)], &owners);
    // Seen for the first time: not settled yet, nothing moves.
    let out = b.read(2000, snap(0));
    assert!(!out.iter().any(|c| matches!(c, Command::Handoff(_))));
    b.live_at(2000 + TTL);
    let out = b.read(b.now, snap(1000));
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("a handoff batch");
    assert_eq!(moves.len(), 5, "paced by max_per_tick");
    assert!(moves.iter().all(|m| &*m.to == "b"));
    let started = out
        .iter()
        .filter(|c| matches!(c, Command::Emit(Event::MigrationStarted { .. })))
        .count();
    assert_eq!(started, 5);
    let p = moves[0].partition;
    assert_eq!(b.table().check(p, b.now), Err(NotServing::Draining));
    // One batch at a time: another read starts nothing.
    let out = b.read(b.now, snap(1000));
    assert!(!out.iter().any(|c| matches!(c, Command::Handoff(_))));
    // The first move fails to flush and stays; the others are released.
    let mut results: Vec<(Move, Result<(), String>)> =
        moves.iter().cloned().map(|m| (m, Ok(()))).collect();
    results[0].1 = Err("store down".into());
    let out = b.step(Input::Flushed { moves: results });
    assert!(has_emit(&out, "migration_failed"));
    assert_eq!(b.table().held(p), Held::Serving(Epoch(1)));
    let release = out
        .iter()
        .find_map(|c| match c {
            Command::Release { moves, .. } => Some(moves.clone()),
            _ => None,
        })
        .expect("release");
    assert_eq!(release.len(), 4);
    let out = b.step(Input::Released {
        node: me.clone(),
        moves: release.clone(),
        result: Ok(release.iter().map(|m| m.partition).collect()),
    });
    let succeeded = out
        .iter()
        .filter(|c| matches!(c, Command::Emit(Event::MigrationSucceeded { .. })))
        .count();
    assert_eq!(succeeded, 4);
    assert_eq!(b.table().held(release[0].partition), Held::No);
    // A stale read that still shows it as ours does not bring it back.
    b.live_at(b.now + 300);
    b.read(b.now, snap(1300));
    assert_eq!(b.table().held(release[0].partition), Held::No);
}

#[test]
fn shutdown_hands_off_everything_then_leaves_and_stops() {
    let mut b = Bench::new("a", 4);
    let me = b.joined();
    serving_everything(&mut b, &me, 4);
    let out = b.step(Input::Shutdown);
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("hands off every partition");
    assert_eq!(moves.len(), 4);
    assert_eq!(
        b.table().check(PartitionId(0), b.now),
        Err(NotServing::Stopping)
    );
    let out = b.step(Input::Flushed {
        moves: moves.iter().cloned().map(|m| (m, Ok(()))).collect(),
    });
    assert!(out.iter().any(|c| matches!(c, Command::Release { .. })));
    let out = b.step(Input::Released {
        node: me.clone(),
        moves: moves.clone(),
        result: Ok(moves.iter().map(|m| m.partition).collect()),
    });
    assert!(out
        .iter()
        .any(|c| matches!(c, Command::Leave(n) if *n == me)));
    let out = b.step(Input::Left { result: Ok(()) });
    assert!(out.iter().any(|c| matches!(c, Command::Stopped)));
    assert!(b.e.is_stopped());
}

#[test]
fn a_call_for_an_orphan_claims_it_on_demand_but_not_twice_within_20_ms() {
    let mut b = Bench::new("a", 1);
    let me = b.joined();
    b.live_at(2 * TTL);
    let dead = NodeId::new("b", 1);
    // The read sees b live: no claim yet.
    let out = b.read(
        2000,
        snapshot(2000, &[(&me, 99_000), (&dead, 2500)], &[(Some(&dead), 1)]),
    );
    assert!(claim_of(&out).is_none());
    // Later b has expired by the estimate and a call arrives.
    b.live_at(2600);
    let out = b.step(Input::Wanted(PartitionId(0)));
    assert_eq!(claim_of(&out), Some(vec![PartitionId(0)]));
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: vec![PartitionId(0)],
        result: Ok(vec![]),
    });
    b.live_at(2610);
    let out = b.step(Input::Wanted(PartitionId(0)));
    assert!(claim_of(&out).is_none(), "throttled");
}

#[test]
fn the_published_view_routes_to_the_live_owner_else_the_desired_one() {
    let mut b = Bench::new("a", 2);
    let me = b.joined();
    let other = NodeId::new("b", 1);
    b.live_at(2 * TTL);
    b.read(
        2000,
        snapshot(
            0,
            &[(&me, 99_000), (&other, 99_000)],
            &[(Some(&other), 1), (None, 0)],
        ),
    );
    let view = b.e.published().view();
    assert_eq!(
        view.route_target(PartitionId(0), "a", b.now)
            .map(|n| &n.record.id),
        Some(&other)
    );
    let desired = view.desired(PartitionId(1)).cloned();
    assert_eq!(
        view.route_target(PartitionId(1), "a", b.now)
            .map(|n| n.record.id.name.clone()),
        desired
    );
    let _ = Arc::strong_count(&view);
}

#[test]
fn a_late_claim_answer_does_not_bring_back_a_partition_released_since() {
    // Found by the simulator (seed 7596): the claim committed, a read adopted it, the node
    // served it and handed it off — and then the claim's answer arrived.
    let mut b = Bench::new("a", 8);
    let me = b.joined();
    let other = NodeId::new("b", 1);
    b.live_at(2 * TTL);
    let unowned: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (None, 2)).collect();
    let out = b.read(2000, snapshot(0, &[(&me, 99_000)], &unowned));
    let asked = claim_of(&out).expect("claims every unowned partition");
    // The claim committed; its answer is slow. Reads adopt the partitions, and `b` settles.
    let ours: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&me), 3)).collect();
    let both = |t| snapshot(t, &[(&me, 99_000), (&other, 99_000)], &ours);
    b.read(2010, both(10));
    b.live_at(2010 + TTL);
    let out = b.read(b.now, both(1010));
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("some partitions move to b");
    b.step(Input::Flushed {
        moves: moves.iter().cloned().map(|m| (m, Ok(()))).collect(),
    });
    b.step(Input::Released {
        node: me.clone(),
        moves: moves.clone(),
        result: Ok(moves.iter().map(|m| m.partition).collect()),
    });
    let gone = moves[0].partition;
    assert_eq!(b.table().held(gone), Held::No);
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: asked.clone(),
        result: Ok(asked.iter().map(|p| (*p, Epoch(3))).collect()),
    });
    assert_eq!(
        b.table().held(gone),
        Held::No,
        "the stale answer is ignored"
    );
    let kept = asked
        .iter()
        .find(|p| !moves.iter().any(|m| m.partition == **p))
        .expect("b does not get every partition");
    assert_eq!(b.table().held(*kept), Held::Serving(Epoch(3)));
}

#[test]
fn a_late_claim_answer_does_not_undo_a_handoff_in_progress() {
    // Found by the simulator (seed 21180): the claim committed, a read adopted the partition,
    // a handoff began (draining), the release committed — and before its answer, the claim's
    // answer arrived and made the partition serving again.
    let mut b = Bench::new("a", 8);
    let me = b.joined();
    let other = NodeId::new("b", 1);
    b.live_at(2 * TTL);
    let unowned: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (None, 2)).collect();
    let out = b.read(2000, snapshot(0, &[(&me, 99_000)], &unowned));
    let asked = claim_of(&out).expect("claims");
    let ours: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&me), 3)).collect();
    let both = |t| snapshot(t, &[(&me, 99_000), (&other, 99_000)], &ours);
    b.read(2010, both(10));
    b.live_at(2010 + TTL);
    let out = b.read(b.now, both(1010));
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("a handoff to b");
    let draining = moves[0].partition;
    assert_eq!(b.table().held(draining), Held::Draining(Epoch(3)));
    b.step(Input::Claimed {
        node: me.clone(),
        partitions: asked.clone(),
        result: Ok(asked.iter().map(|p| (*p, Epoch(3))).collect()),
    });
    assert_eq!(
        b.table().held(draining),
        Held::Draining(Epoch(3)),
        "still draining: no signal is admitted for a partition being released"
    );
}

#[test]
fn after_a_release_of_unknown_outcome_only_a_later_read_may_adopt_the_partition() {
    // Found by the simulator (seed 85021): the release committed, its answer was lost, and a
    // read sent before the release re-adopted the partition another node had claimed since.
    let mut b = Bench::new("a", 8);
    let me = b.joined();
    let other = NodeId::new("b", 1);
    b.live_at(2 * TTL);
    let ours: Vec<(Option<&NodeId>, u64)> = (0..8).map(|_| (Some(&me), 3)).collect();
    let both = |t| snapshot(t, &[(&me, 99_000), (&other, 99_000)], &ours);
    b.read(2000, both(0));
    b.live_at(2000 + TTL);
    let out = b.read(b.now, both(1000));
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("a handoff to b");
    let p = moves[0].partition;
    let stale_read_sent_at = b.now;
    b.step(Input::Flushed {
        moves: moves.iter().cloned().map(|m| (m, Ok(()))).collect(),
    });
    b.live_at(b.now + 10);
    b.step(Input::Released {
        node: me.clone(),
        moves: moves.clone(),
        result: Err(StoreError::Unavailable("reply lost".into())),
    });
    assert_eq!(b.table().held(p), Held::No);
    b.read(stale_read_sent_at, both(1000));
    assert_eq!(
        b.table().held(p),
        Held::No,
        "a read older than the answer proves nothing"
    );
    b.live_at(b.now + 10);
    b.read(b.now, both(1020));
    assert_eq!(
        b.table().held(p),
        Held::Serving(Epoch(3)),
        "a later read shows the release did not commit"
    );
}

/// Per partition, the names of the migration events in `out`, in order.
fn migration_events(out: &[Command], seen: &mut BTreeMap<u32, Vec<&'static str>>) {
    for c in out {
        if let Command::Emit(
            e @ (Event::MigrationStarted { partition, .. }
            | Event::MigrationSucceeded { partition, .. }
            | Event::MigrationFailed { partition, .. }
            | Event::MigrationSkipped { partition, .. }),
        ) = c
        {
            seen.entry(*partition).or_default().push(e.name());
        }
    }
}

#[test]
fn every_planned_move_reports_started_then_exactly_one_outcome() {
    // Four moves: one fails to flush, one's release fails, one's release is refused by the
    // store (no longer ours at that epoch), one succeeds.
    let mut b = Bench::new("a", 16);
    let me = b.joined();
    serving_everything(&mut b, &me, 16);
    let newcomer = NodeId::new("b", 1);
    let owners: Vec<(Option<&NodeId>, u64)> = (0..16).map(|_| (Some(&me), 1)).collect();
    let snap = |t| snapshot(t, &[(&me, 99_000), (&newcomer, 99_000)], &owners);
    let mut seen = BTreeMap::new();
    migration_events(&b.read(2000, snap(0)), &mut seen);
    b.live_at(2000 + TTL);
    let out = b.read(b.now, snap(1000));
    migration_events(&out, &mut seen);
    let moves = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("a handoff batch");
    assert!(moves.len() >= 2, "{moves:?}");
    let mut results: Vec<(Move, Result<(), String>)> =
        moves.iter().cloned().map(|m| (m, Ok(()))).collect();
    results[0].1 = Err("disk full".into());
    let failed_flush = moves[0].partition.0;
    let out = b.step(Input::Flushed { moves: results });
    migration_events(&out, &mut seen);
    let release = out
        .iter()
        .find_map(|c| match c {
            Command::Release { moves, .. } => Some(moves.clone()),
            _ => None,
        })
        .expect("the flushed one is released");
    let out = b.step(Input::Released {
        node: me.clone(),
        moves: release.clone(),
        result: Err(StoreError::Unavailable("connection reset".into())),
    });
    migration_events(&out, &mut seen);
    let failed_release = release[0].partition.0;
    let reason = |out: &[Command]| {
        out.iter().find_map(|c| match c {
            Command::Emit(Event::MigrationFailed { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
    };
    assert!(
        reason(&out).is_some_and(|r| r.contains("connection reset")),
        "{out:?}"
    );
    assert_eq!(seen.len(), moves.len(), "{seen:?}");
    assert_ne!(failed_flush, failed_release);
    for p in seen.keys() {
        assert_eq!(
            seen[p],
            vec!["migration_started", "migration_failed"],
            "p{p}"
        );
    }
    // The failed flush kept serving here; the next batch moves it again and the store refuses
    // the release (another node took it at a newer epoch meanwhile), then once more with success.
    let mut later = BTreeMap::new();
    b.live_at(b.now + 1000);
    let out = b.read(b.now, snap(2000));
    migration_events(&out, &mut later);
    let retry = out
        .iter()
        .find_map(|c| match c {
            Command::Handoff(m) => Some(m.clone()),
            _ => None,
        })
        .expect("the failed move is planned again");
    assert!(
        retry.iter().any(|m| m.partition.0 == failed_flush),
        "{retry:?}"
    );
    let out = b.step(Input::Flushed {
        moves: retry.iter().cloned().map(|m| (m, Ok(()))).collect(),
    });
    migration_events(&out, &mut later);
    let out = b.step(Input::Released {
        node: me.clone(),
        moves: retry.clone(),
        result: Ok(vec![]),
    });
    migration_events(&out, &mut later);
    assert!(
        reason(&out).is_some_and(|r| r.contains("no longer")),
        "{out:?}"
    );
    assert_eq!(
        later[&failed_flush],
        vec!["migration_started", "migration_failed"]
    );
    for names in later.values() {
        assert_eq!(names.len(), 2, "one start, one outcome: {later:?}");
    }
}
