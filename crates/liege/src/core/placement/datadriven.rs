//! Data-driven placement tables, in the style of raft-rs's `datadriven` tests.
//!
//! Each file in `testdata/` is a list of cases:
//!
//! ```text
//! # comments and blank lines between cases are ignored
//! command arg arg
//! input line
//! input line
//! ----
//! expected output (no blank lines)
//! ```
//!
//! Commands (state carries over from case to case within a file):
//!
//! - `policy [partitions=N]`: input is policy text; prints its canonical form or the error.
//!   The partition count defaults to 1024.
//! - `live`: input is `NAME REGION` lines; replaces the live set; prints the share of each node.
//! - `add NAME REGION` / `kill NAME`: changes the live set; prints every partition that moved
//!   (with more than 64 partitions, how many moved between each pair of nodes).
//! - `owners [all | P…]`: prints `pN home -> owner` for the given partitions.
//! - `counts`: prints how many partitions each live node should own.
//! - `key`: input is `KIND ID` lines; prints home region, partition and desired owner.
//! - `score`: input is `PARTITION NAME` lines; prints the rendezvous score.
//!
//! `LIEGE_REWRITE=1 cargo test -p liege --lib placement` rewrites the expected outputs in place;
//! review the diff before committing it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::*;

struct Case {
    /// Line of the command, from 1.
    line: usize,
    command: String,
    input: Vec<String>,
    /// Lines `expected.0..expected.1` (from 0) of the file hold the expected output.
    expected: (usize, usize),
}

fn parse_cases(lines: &[&str]) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let command_line = i;
        i += 1;
        let mut input = Vec::new();
        while i < lines.len() && lines[i].trim() != "----" {
            input.push(lines[i].to_owned());
            i += 1;
        }
        assert!(
            i < lines.len(),
            "line {}: case without `----`",
            command_line + 1
        );
        i += 1;
        let start = i;
        while i < lines.len() && !lines[i].trim().is_empty() {
            i += 1;
        }
        cases.push(Case {
            line: command_line + 1,
            command: line.to_owned(),
            input,
            expected: (start, i),
        });
    }
    cases
}

struct State {
    policy: PlacementPolicy,
    partitions: u32,
    /// Live nodes: name → region.
    live: BTreeMap<String, String>,
}

impl State {
    fn owners(&self) -> Vec<Option<String>> {
        let live: Vec<Candidate<'_>> = self
            .live
            .iter()
            .map(|(name, region)| Candidate::new(name, region))
            .collect();
        let all = assignment(&self.policy, self.partitions, &live);
        for (p, owner) in all.iter().enumerate() {
            let one = desired_owner(&self.policy, PartitionId(p as u32), &live);
            assert_eq!(*owner, one, "assignment and desired_owner disagree on p{p}");
        }
        all.into_iter().map(|o| o.map(str::to_owned)).collect()
    }

    fn moves(&self, before: &[Option<String>]) -> String {
        let after = self.owners();
        let mut out = String::new();
        let mut moved = 0;
        // Few partitions: every move. Many: how many moved between each pair of nodes.
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (p, (old, new)) in before.iter().zip(&after).enumerate() {
            if old != new {
                moved += 1;
                if self.partitions <= 64 {
                    let _ = writeln!(out, "p{p} {} -> {}", show(old), show(new));
                } else {
                    *pairs.entry((show(old), show(new))).or_default() += 1;
                }
            }
        }
        for ((old, new), count) in pairs {
            let _ = writeln!(out, "{old} -> {new}: {count}");
        }
        let _ = write!(out, "moved {moved} of {}", self.partitions);
        out
    }

    fn counts(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for owner in self.owners() {
            *counts.entry(show(&owner).to_owned()).or_default() += 1;
        }
        let lines: Vec<String> = self
            .live
            .keys()
            .map(|name| format!("{name} {}", counts.get(name).copied().unwrap_or(0)))
            .collect();
        lines.join("\n")
    }

    fn run(&mut self, command: &str, input: &[String]) -> String {
        let mut words = command.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match verb {
            "policy" => {
                self.partitions = match args.first().and_then(|a| a.strip_prefix("partitions=")) {
                    Some(n) => n.parse().expect("partitions=N"),
                    None => 1024,
                };
                let text = input.join("\n");
                match text.parse::<PlacementPolicy>() {
                    Ok(policy) => match policy.validate(self.partitions) {
                        Ok(()) => {
                            let shown = policy.to_string();
                            self.policy = policy;
                            shown
                        }
                        Err(e) => format!("error: {e}"),
                    },
                    Err(e) => format!("error: {e}"),
                }
            }
            "live" => {
                self.live = input
                    .iter()
                    .map(|line| {
                        let (name, region) = line.trim().split_once(' ').expect("NAME REGION");
                        (name.to_owned(), region.trim().to_owned())
                    })
                    .collect();
                self.counts()
            }
            "add" => {
                let before = self.owners();
                self.live.insert(args[0].to_owned(), args[1].to_owned());
                self.moves(&before)
            }
            "kill" => {
                let before = self.owners();
                assert!(
                    self.live.remove(args[0]).is_some(),
                    "{} is not live",
                    args[0]
                );
                self.moves(&before)
            }
            "owners" => {
                let owners = self.owners();
                let partitions: Vec<u32> = if args == ["all"] {
                    (0..self.partitions).collect()
                } else {
                    args.iter().map(|a| a.parse().expect("partition")).collect()
                };
                let lines: Vec<String> = partitions
                    .iter()
                    .map(|&p| {
                        let home = self.policy.home_region_of_partition(PartitionId(p));
                        let owner = show(&owners[p as usize]);
                        format!("p{p} {} -> {owner}", home.unwrap_or("-"))
                    })
                    .collect();
                lines.join("\n")
            }
            "counts" => self.counts(),
            "key" => {
                let owners = self.owners();
                let lines: Vec<String> = input
                    .iter()
                    .map(|line| {
                        let (kind, id) = line.trim().split_once(' ').expect("KIND ID");
                        let key = AgentKey::new(kind, id).expect("valid key");
                        let home = self.policy.home_region_of_key(&key).unwrap_or("-");
                        let p = self.policy.partition_of(&key, self.partitions);
                        let owner = show(&owners[p.0 as usize]);
                        format!("{key} home={home} {p} -> {owner}")
                    })
                    .collect();
                lines.join("\n")
            }
            "score" => {
                let lines: Vec<String> = input
                    .iter()
                    .map(|line| {
                        let (p, name) = line.trim().split_once(' ').expect("PARTITION NAME");
                        let p = PartitionId(p.parse().expect("partition"));
                        format!("{p} {name} {:#018x}", score(p, name))
                    })
                    .collect();
                lines.join("\n")
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

fn show(owner: &Option<String>) -> &str {
    owner.as_deref().unwrap_or("none")
}

fn run_file(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/core/placement/testdata")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("test data file");
    let lines: Vec<&str> = text.lines().collect();
    let mut state = State {
        policy: PlacementPolicy::none(),
        partitions: 1024,
        live: BTreeMap::new(),
    };
    let rewrite = std::env::var_os("LIEGE_REWRITE").is_some();
    let mut rewritten: Vec<String> = Vec::new();
    let mut copied = 0;
    let mut failures = Vec::new();
    for case in parse_cases(&lines) {
        let actual = state.run(&case.command, &case.input);
        let expected = lines[case.expected.0..case.expected.1].join("\n");
        if rewrite {
            rewritten.extend(lines[copied..case.expected.0].iter().map(|l| l.to_string()));
            rewritten.extend(actual.lines().map(str::to_owned));
            copied = case.expected.1;
        } else if actual != expected {
            failures.push(format!(
                "{name}:{} `{}`\n--- expected\n{expected}\n--- actual\n{actual}\n",
                case.line, case.command
            ));
        }
    }
    if rewrite {
        rewritten.extend(lines[copied..].iter().map(|l| l.to_string()));
        std::fs::write(&path, rewritten.join("\n") + "\n").expect("rewrite test data");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn placement_without_policy_matches_the_no_policy_table() {
    run_file("no_policy.txt");
}

#[test]
fn placement_with_regions_follows_fallback_order_then_everybody() {
    run_file("regions.txt");
}

#[test]
fn keys_land_in_the_partitions_of_their_home_region_as_tabled() {
    run_file("keys.txt");
}

#[test]
fn policy_text_parses_or_fails_as_tabled() {
    run_file("policy_text.txt");
}

#[test]
fn scores_match_the_pinned_table() {
    run_file("scores.txt");
}
