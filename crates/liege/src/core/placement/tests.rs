//! Unit tests: pinned hashes, validation and the text format's edges.

use xxhash_rust::xxh3::xxh3_64;

use super::rendezvous::Best;
use super::*;

fn key(id: &str) -> AgentKey {
    AgentKey::new("counter", id).unwrap()
}

fn three_regions() -> PlacementPolicy {
    "regions=iad>ord>lax,ord>iad>lax,lax>ord>iad; prefix tenant-7/=iad; prefix tenant-9/=lax"
        .parse()
        .unwrap()
}

#[test]
fn score_is_xxh3_of_the_big_endian_partition_then_the_name() {
    assert_eq!(score(PartitionId(7), "iad-1"), xxh3_64(b"\0\0\0\x07iad-1"));
    assert_eq!(
        score(PartitionId(0x0102_0304), "n"),
        xxh3_64(&[1, 2, 3, 4, b'n'])
    );
    assert_eq!(score(PartitionId(0), ""), xxh3_64(&[0, 0, 0, 0]));
}

#[test]
fn score_values_are_pinned() {
    // Changing any of these moves partitions in every running cluster.
    assert_eq!(score(PartitionId(0), "a"), PINNED_SCORES[0]);
    assert_eq!(score(PartitionId(1), "iad-1"), PINNED_SCORES[1]);
    assert_eq!(score(PartitionId(1023), "ord-2"), PINNED_SCORES[2]);
}

const PINNED_SCORES: [u64; 3] = [
    0xf2e0_7c01_79b8_b909,
    0x435e_3876_859f_2cbc,
    0xcfd7_f74f_d1d5_e0ce,
];

#[test]
fn partition_of_values_are_pinned() {
    let none = PlacementPolicy::none();
    let policy = three_regions();
    let got = [
        none.partition_of(&key("a"), 1024).0,
        none.partition_of(&key("tenant-7/a"), 1024).0,
        policy.partition_of(&key("a"), 1024).0,
        policy.partition_of(&key("tenant-7/a"), 1024).0,
        policy.partition_of(&key("tenant-9/a"), 1024).0,
        policy.partition_of(&key("tenant-7/workflow-3"), 1024).0,
    ];
    // Homed keys: 861 and 636 are iad partitions (0 mod 3), 137 a lax one (2 mod 3).
    assert_eq!(got, [1015, 175, 1015, 861, 137, 636]);
}

#[test]
fn partition_of_without_a_home_region_is_the_keys_own_partition() {
    let policy = three_regions();
    for id in ["a", "tenant-8/x", "tenant-7", "TENANT-7/x"] {
        assert_eq!(policy.home_region_of_key(&key(id)), None);
        assert_eq!(policy.partition_of(&key(id), 1024), key(id).partition(1024));
    }
}

#[test]
fn homed_keys_spread_over_every_partition_of_their_region_and_no_other() {
    let policy = three_regions();
    let mut hit = [false; 16];
    for i in 0..500 {
        let p = policy.partition_of(&key(&format!("tenant-9/{i}")), 16);
        assert_eq!(p.0 % 3, 2, "{p} is not a lax partition");
        hit[p.0 as usize] = true;
    }
    let lax: Vec<usize> = (0..16).filter(|&p| hit[p]).collect();
    assert_eq!(lax, [2, 5, 8, 11, 14]);
}

#[test]
fn the_longest_matching_prefix_wins_and_the_first_among_equals() {
    // Equal prefixes are refused by `validate`, but must still resolve deterministically.
    let policy = PlacementPolicy {
        regions: ["a", "b", "c"]
            .map(|r| RegionPolicy::new(r, Vec::<String>::new()))
            .into(),
        prefixes: [("t/", "a"), ("t/x/", "b"), ("t/x/", "c")]
            .map(|(p, r)| (p.to_owned(), r.to_owned()))
            .into(),
    };
    assert_eq!(policy.home_region_of_key(&key("t/1")), Some("a"));
    assert_eq!(policy.home_region_of_key(&key("t/x/1")), Some("b"));
    assert_eq!(policy.home_region_of_key(&key("u/1")), None);
}

#[test]
fn partitions_take_their_home_region_round_robin() {
    let policy = three_regions();
    let homes: Vec<_> = (0..5)
        .map(|p| policy.home_region_of_partition(PartitionId(p)))
        .collect();
    assert_eq!(
        homes,
        [
            Some("iad"),
            Some("ord"),
            Some("lax"),
            Some("iad"),
            Some("ord")
        ]
    );
    assert_eq!(
        PlacementPolicy::none().home_region_of_partition(PartitionId(3)),
        None
    );
}

#[test]
fn an_invalid_policy_never_panics_and_ignores_unknown_home_regions() {
    let policy = PlacementPolicy {
        regions: vec![
            RegionPolicy::new("a", ["nowhere"]),
            RegionPolicy::new("b", ["a"]),
        ],
        prefixes: vec![("x".into(), "nowhere".into()), ("y".into(), "b".into())],
    };
    assert!(policy.validate(1024).is_err());
    assert_eq!(
        policy.partition_of(&key("x1"), 1024),
        key("x1").partition(1024)
    );
    // More regions than partitions: region b (index 1) has no partition, so no home.
    assert_eq!(policy.partition_of(&key("y1"), 1), PartitionId(0));
    assert_eq!(policy.partition_of(&key("y1"), 0), PartitionId(0));
    let live = [Candidate::new("n1", "z")];
    assert_eq!(desired_owner(&policy, PartitionId(0), &live), Some("n1"));
    assert_eq!(assignment(&policy, 2, &live), [Some("n1"), Some("n1")]);
}

#[test]
fn no_live_nodes_means_no_owner() {
    let policy = three_regions();
    assert_eq!(desired_owner(&policy, PartitionId(0), &[]), None);
    assert_eq!(assignment(&policy, 3, &[]), [None, None, None]);
    assert!(assignment(&policy, 0, &[]).is_empty());
}

#[test]
fn equal_scores_go_to_the_smaller_name() {
    let mut best = Best(None);
    best.offer(5, "b");
    best.offer(5, "a");
    best.offer(5, "c");
    best.offer(4, "0");
    assert_eq!(best.name(), Some("a"));
    best.offer(6, "z");
    assert_eq!(best.name(), Some("z"));
}

#[test]
fn validation_names_the_first_mistake() {
    let region = |name: &str, fallbacks: &[&str]| RegionPolicy::new(name, fallbacks.to_vec());
    let prefix = |p: &str, r: &str| (p.to_owned(), r.to_owned());
    let cases: Vec<(PlacementPolicy, u32, PlacementError)> = vec![
        (PlacementPolicy::none(), 0, PlacementError::NoPartitions),
        (
            PlacementPolicy {
                regions: vec![region("a", &[]), region("b", &[])],
                prefixes: vec![],
            },
            1,
            PlacementError::TooManyRegions {
                regions: 2,
                partitions: 1,
            },
        ),
        (
            PlacementPolicy {
                regions: vec![region("", &[])],
                prefixes: vec![],
            },
            8,
            PlacementError::BadRegionName { region: "".into() },
        ),
        (
            PlacementPolicy {
                regions: vec![region(&"r".repeat(MAX_REGION_BYTES + 1), &[])],
                prefixes: vec![],
            },
            8,
            PlacementError::BadRegionName {
                region: "r".repeat(MAX_REGION_BYTES + 1),
            },
        ),
        (
            PlacementPolicy {
                regions: vec![region("a>b", &[])],
                prefixes: vec![],
            },
            8,
            PlacementError::BadRegionName {
                region: "a>b".into(),
            },
        ),
    ];
    for (policy, partitions, expected) in cases {
        assert_eq!(policy.validate(partitions), Err(expected), "{policy:?}");
    }
    let ok = PlacementPolicy {
        regions: vec![region("us-east.1", &["EU_2"]), region("EU_2", &[])],
        prefixes: vec![prefix("", "EU_2")],
    };
    assert_eq!(ok.validate(2), Ok(()));
}

#[test]
fn policy_text_round_trips_through_display() {
    for text in [
        "none",
        "regions=iad>ord>lax,ord>iad>lax,lax>ord>iad; prefix tenant-7/=iad",
        "regions=a; prefix =a; prefix x=y=a",
    ] {
        let policy: PlacementPolicy = text.parse().unwrap();
        assert_eq!(policy.to_string(), text);
        assert_eq!(
            policy.to_string().parse::<PlacementPolicy>().unwrap(),
            policy
        );
    }
}

#[test]
fn parse_errors_carry_the_line_and_statement() {
    let err = "regions=a\n\n  prefix x = a ; bogus statement # note"
        .parse::<PlacementPolicy>()
        .unwrap_err();
    assert_eq!(
        err,
        ParsePolicyError::UnknownStatement {
            line: 3,
            statement: "bogus statement".into()
        }
    );
}

#[test]
fn a_policy_survives_serde() {
    let policy = three_regions();
    let json = serde_json::to_string(&policy).unwrap();
    assert_eq!(
        serde_json::from_str::<PlacementPolicy>(&json).unwrap(),
        policy
    );
}
