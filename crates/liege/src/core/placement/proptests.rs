//! Property tests: the invariants the rebalancer and the router rely on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// Region names nodes may report; `d` is never in a policy.
const REGIONS: [&str; 4] = ["a", "b", "c", "d"];

/// Policies over regions a, b, c with random fallback lists, or no policy.
fn policies() -> impl Strategy<Value = PlacementPolicy> {
    (0usize..=3)
        .prop_flat_map(|n| {
            let names: Vec<&'static str> = REGIONS[..n].to_vec();
            let fallbacks: Vec<_> = names
                .iter()
                .map(|&home| {
                    let others: Vec<&'static str> =
                        names.iter().copied().filter(|&r| r != home).collect();
                    let len = others.len();
                    (Just(others).prop_shuffle(), 0..=len)
                })
                .collect();
            (Just(names), fallbacks)
        })
        .prop_map(|(names, fallbacks)| PlacementPolicy {
            regions: names
                .iter()
                .zip(fallbacks)
                .map(|(name, (others, len))| RegionPolicy::new(*name, others[..len].to_vec()))
                .collect(),
            prefixes: Vec::new(),
        })
}

/// Live sets of up to `max` nodes with unique names, as (name, region) pairs in name order.
fn live_sets(max: usize) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(0u32..40, 0..REGIONS.len(), 0..=max).prop_map(|nodes| {
        nodes
            .into_iter()
            .map(|(n, r)| (format!("node-{n}"), REGIONS[r].to_owned()))
            .collect()
    })
}

fn candidates(live: &[(String, String)]) -> Vec<Candidate<'_>> {
    live.iter().map(|(n, r)| Candidate::new(n, r)).collect()
}

fn owned(owners: Vec<Option<&str>>) -> Vec<Option<String>> {
    owners.into_iter().map(|o| o.map(str::to_owned)).collect()
}

/// The specification, written as plainly as possible: the tier, then the best by
/// (score descending, name ascending).
fn reference(policy: &PlacementPolicy, p: PartitionId, live: &[Candidate<'_>]) -> Option<String> {
    let mut tier: Vec<&Candidate<'_>> = Vec::new();
    if let Some(name) = policy.home_region_of_partition(p) {
        let home = policy.regions.iter().find(|r| r.name == name).unwrap();
        for region in std::iter::once(&home.name).chain(&home.fallbacks) {
            tier = live
                .iter()
                .filter(|c| c.region == region.as_str())
                .collect();
            if !tier.is_empty() {
                break;
            }
        }
    }
    if tier.is_empty() {
        tier = live.iter().collect();
    }
    tier.sort_by_key(|c| (Reverse(score(p, c.name)), c.name));
    tier.first().map(|c| c.name.to_owned())
}

const P: u32 = 128;

proptest! {
    #[test]
    fn assignment_matches_desired_owner_and_the_plain_reference(
        policy in policies(),
        live in live_sets(12),
    ) {
        let live = candidates(&live);
        let all = assignment(&policy, P, &live);
        prop_assert_eq!(all.len(), P as usize);
        for (p, owner) in all.iter().enumerate() {
            let p = PartitionId(p as u32);
            prop_assert_eq!(*owner, desired_owner(&policy, p, &live));
            prop_assert_eq!(owner.map(str::to_owned), reference(&policy, p, &live));
        }
    }

    #[test]
    fn the_order_of_the_live_list_does_not_change_any_owner(
        policy in policies(),
        (live, shuffled) in live_sets(12).prop_flat_map(|live| {
            (Just(live.clone()), Just(live).prop_shuffle())
        }),
    ) {
        let a = owned(assignment(&policy, P, &candidates(&live)));
        let b = owned(assignment(&policy, P, &candidates(&shuffled)));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn the_owner_is_always_live_and_in_the_first_tier_with_a_live_node(
        policy in policies(),
        live in live_sets(12),
    ) {
        let live = candidates(&live);
        let region_of: BTreeMap<&str, &str> = live.iter().map(|c| (c.name, c.region)).collect();
        let live_regions: BTreeSet<&str> = live.iter().map(|c| c.region).collect();
        for (p, owner) in assignment(&policy, P, &live).into_iter().enumerate() {
            let Some(owner) = owner else {
                prop_assert!(live.is_empty());
                continue;
            };
            let region = region_of.get(owner).copied();
            prop_assert!(region.is_some(), "{} is not live", owner);
            let Some(home) = policy.home_region_of_partition(PartitionId(p as u32)) else {
                continue;
            };
            let home = policy.regions.iter().find(|r| r.name == home).unwrap();
            let wanted = std::iter::once(&home.name)
                .chain(&home.fallbacks)
                .find(|r| live_regions.contains(r.as_str()));
            if let Some(wanted) = wanted {
                prop_assert_eq!(region, Some(wanted.as_str()), "p{} home {}", p, home.name);
            }
        }
    }

    #[test]
    fn adding_a_node_only_moves_partitions_to_that_node(
        policy in policies(),
        live in live_sets(12),
        new in 40u32..50,
        region in 0..REGIONS.len(),
    ) {
        let before = owned(assignment(&policy, P, &candidates(&live)));
        let name = format!("node-{new}");
        let mut more = live.clone();
        more.push((name.clone(), REGIONS[region].to_owned()));
        let after = owned(assignment(&policy, P, &candidates(&more)));
        for (p, (old, new)) in before.iter().zip(&after).enumerate() {
            prop_assert!(
                old == new || new.as_deref() == Some(name.as_str()),
                "p{} moved from {:?} to {:?}", p, old, new
            );
        }
    }

    #[test]
    fn removing_a_node_only_moves_the_partitions_it_owned(
        policy in policies(),
        (live, gone) in live_sets(12)
            .prop_filter("needs a node", |l| !l.is_empty())
            .prop_flat_map(|l| { let n = l.len(); (Just(l), 0..n) }),
    ) {
        let before = owned(assignment(&policy, P, &candidates(&live)));
        let mut fewer = live.clone();
        let (name, _) = fewer.remove(gone);
        let after = owned(assignment(&policy, P, &candidates(&fewer)));
        for (p, (old, new)) in before.iter().zip(&after).enumerate() {
            prop_assert!(
                old == new || old.as_deref() == Some(name.as_str()),
                "p{} moved from {:?} to {:?}", p, old, new
            );
            prop_assert_ne!(new.as_deref(), Some(name.as_str()));
        }
    }

    #[test]
    fn without_a_policy_every_node_gets_a_fair_share_of_1024_partitions(
        live in prop::collection::btree_set("[a-z0-9-]{1,12}", 3..=10),
    ) {
        let live: Vec<(String, String)> = live.into_iter().map(|n| (n, "r".to_owned())).collect();
        let owners = assignment(&PlacementPolicy::none(), 1024, &candidates(&live));
        let fair = 1024.0 / live.len() as f64;
        for (name, _) in &live {
            let share = owners.iter().filter(|o| **o == Some(name.as_str())).count() as f64;
            prop_assert!(
                (0.5 * fair..=1.5 * fair).contains(&share),
                "{} owns {} of 1024, fair is {:.0}", name, share, fair
            );
        }
    }

    #[test]
    fn with_regions_every_node_gets_a_fair_share_of_its_regions_partitions(
        per_region in prop::collection::vec(1usize..=3, 3),
        salt in "[a-z]{0,4}",
    ) {
        let policy: PlacementPolicy = "regions=a>b,b>c,c>a".parse().unwrap();
        let live: Vec<(String, String)> = per_region
            .iter()
            .zip(["a", "b", "c"])
            .flat_map(|(&n, r)| {
                let salt = &salt;
                (0..n).map(move |i| (format!("{r}-{salt}{i}"), r.to_owned()))
            })
            .collect();
        let owners = assignment(&policy, 1024, &candidates(&live));
        for (name, region) in &live {
            let region_partitions = (0..1024u32)
                .filter(|&p| policy.home_region_of_partition(PartitionId(p)) == Some(region))
                .count() as f64;
            let fair = region_partitions / live.iter().filter(|(_, r)| r == region).count() as f64;
            let share = owners.iter().filter(|o| **o == Some(name.as_str())).count() as f64;
            prop_assert!(
                (0.5 * fair..=1.5 * fair).contains(&share),
                "{} owns {}, fair is {:.0}", name, share, fair
            );
        }
    }

    #[test]
    fn partition_of_stays_in_range_and_in_the_home_regions_residue(
        policy in policies(),
        prefix_region in 0usize..4,
        id in "[a-c]{0,2}[a-z0-9/]{1,10}",
        partitions in 1u32..2048,
    ) {
        let mut policy = policy;
        if let Some(region) = policy.regions.get(prefix_region) {
            let name = region.name.clone();
            policy.prefixes.push(("a".to_owned(), name));
        }
        prop_assume!(policy.validate(partitions).is_ok());
        let key = AgentKey::new("kind", id).unwrap();
        let p = policy.partition_of(&key, partitions);
        prop_assert!(p.0 < partitions);
        match policy.home_region_of_key(&key) {
            Some(home) => {
                prop_assert_eq!(policy.home_region_of_partition(p), Some(home));
            }
            None => prop_assert_eq!(p, key.partition(partitions)),
        }
    }

    #[test]
    fn displayed_policies_parse_back_to_themselves(
        policy in policies(),
        prefixes in prop::collection::btree_map("[a-z0-9/=. -]{0,8}", 0usize..3, 0..4),
    ) {
        let mut policy = policy;
        if !policy.regions.is_empty() {
            policy.prefixes = prefixes
                .into_iter()
                .map(|(p, r)| (p.trim().to_owned(), policy.regions[r % policy.regions.len()].name.clone()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
        }
        let text = policy.to_string();
        prop_assert_eq!(text.parse::<PlacementPolicy>(), Ok(policy), "{}", text);
    }
}
