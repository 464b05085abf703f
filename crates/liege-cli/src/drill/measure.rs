//! Pure arithmetic of the verdict: recovery percentiles, continuity accounting, timeline
//! buckets and the recovery histogram.

use super::load::{Attempt, KeyState, Logical};

/// Recovery-time percentiles in ms (nearest rank), over the affected keys that recovered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: u64,
    /// 95th percentile.
    pub(crate) p95: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// Worst.
    pub(crate) max: u64,
}

/// Nearest-rank percentiles of `values` (sorted in place). All zero when empty.
pub(crate) fn percentiles(values: &mut [u64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_unstable();
    let rank = |q: f64| {
        let r = (q * values.len() as f64).ceil() as usize;
        values[r.clamp(1, values.len()) - 1]
    };
    Percentiles {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: values[values.len() - 1],
    }
}

/// Per-key recovery after a fault at `fault_us`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Recovery time in ms of every affected key that succeeded after the fault.
    pub(crate) times_ms: Vec<u64>,
    /// Affected keys with no success after the fault at all.
    pub(crate) unrecovered: usize,
}

/// A key is affected if `owned_by_target[key]`, or if one of its logical increments ending
/// after the fault failed or needed a retry (some attempt failed). Its recovery time is from the fault to the end of its first successful logical
/// increment ending after the fault.
pub(crate) fn recovery(fault_us: u64, owned_by_target: &[bool], logical: &[Logical]) -> Recovery {
    let n = owned_by_target.len();
    let mut affected = owned_by_target.to_vec();
    let mut first_ok: Vec<Option<u64>> = vec![None; n];
    // A key with no request ending after the fault cannot be measured (the load never came
    // back to it); it is neither recovered nor "never recovered".
    let mut measured = vec![false; n];
    for l in logical {
        let k = l.key as usize;
        if k >= n || l.end_us <= fault_us {
            continue;
        }
        measured[k] = true;
        if !l.ok || l.retried {
            affected[k] = true;
        }
        if l.ok {
            let t = l.end_us - fault_us;
            first_ok[k] = Some(first_ok[k].map_or(t, |f| f.min(t)));
        }
    }
    let mut out = Recovery::default();
    for k in 0..n {
        if !affected[k] || !measured[k] {
            continue;
        }
        match first_ok[k] {
            Some(us) => out.times_ms.push(us.div_ceil(1000)),
            None => out.unrecovered += 1,
        }
    }
    out
}

/// Latency of the logical requests after the fault that needed a retry (rolling restarts:
/// the delay a drain imposes on clients). Failed requests count as unrecovered.
pub(crate) fn retried_latency(fault_us: u64, logical: &[Logical]) -> Recovery {
    let mut out = Recovery::default();
    for l in logical
        .iter()
        .filter(|l| l.end_us > fault_us && (l.retried || !l.ok))
    {
        if l.ok {
            out.times_ms.push(
                l.end_us
                    .saturating_sub(l.start_us.max(fault_us))
                    .div_ceil(1000),
            );
        } else {
            out.unrecovered += 1;
        }
    }
    out
}

/// Nothing lost, nothing applied twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Continuity {
    /// Acknowledged increments missing from the final values.
    pub(crate) lost_acked: u64,
    /// Increments applied more often than they were sent.
    pub(crate) double_applied: u64,
    /// Increments still unresolved after reconciling (applied or not: unknown).
    pub(crate) unresolved: u64,
    /// Keys whose final value could not be read.
    pub(crate) unreadable: u64,
    /// Acknowledged values that went backwards over time.
    pub(crate) regressions: u64,
}

/// Compares each key's final value with its acknowledged increments. An unresolved increment
/// may or may not have been applied, so it widens the accepted range by one.
pub(crate) fn continuity(states: &[KeyState], finals: &[Option<i64>]) -> Continuity {
    let mut c = Continuity::default();
    for (s, f) in states.iter().zip(finals) {
        let unresolved = u64::from(s.pending.is_some());
        c.unresolved += unresolved;
        c.regressions += u64::from(s.regressions);
        let Some(v) = *f else {
            c.unreadable += 1;
            continue;
        };
        let acked = i64::from(s.acked);
        let high = acked + unresolved as i64;
        c.lost_acked += (acked - v).max(0) as u64;
        c.double_applied += (v - high).max(0) as u64;
    }
    c
}

/// Ok and error attempt counts per region per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timeline {
    /// Bucket width in ms.
    pub(crate) bucket_ms: u32,
    /// `counts[region][bucket] = (ok, error)`.
    pub(crate) counts: Vec<Vec<(u32, u32)>>,
}

/// Buckets attempts by end time; `regions` regions, `bucket_ms` wide buckets from time 0.
pub(crate) fn timeline(attempts: &[Attempt], regions: usize, bucket_ms: u32) -> Timeline {
    let width = bucket_ms.max(1);
    let buckets = attempts
        .iter()
        .map(|a| a.end_ms / width + 1)
        .max()
        .unwrap_or(0) as usize;
    let mut counts = vec![vec![(0u32, 0u32); buckets]; regions];
    for a in attempts {
        let Some(row) = counts.get_mut(a.region as usize) else {
            continue;
        };
        let cell = &mut row[(a.end_ms / width) as usize];
        if a.ok {
            cell.0 += 1;
        } else {
            cell.1 += 1;
        }
    }
    Timeline {
        bucket_ms: width,
        counts,
    }
}

/// A histogram of `values` in `bins` equal bins from 0 to the max: `(upper bound, count)`.
pub(crate) fn histogram(values: &[u64], bins: usize) -> Vec<(u64, usize)> {
    let Some(&max) = values.iter().max() else {
        return Vec::new();
    };
    let bins = bins.max(1);
    let width = (max / bins as u64 + 1).max(1);
    let mut out: Vec<(u64, usize)> = (1..=bins as u64).map(|i| (i * width, 0)).collect();
    for v in values {
        let i = ((v / width) as usize).min(bins - 1);
        out[i].1 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::load::Phase;

    fn logical(key: u32, end_ms: u64, ok: bool, retried: bool) -> Logical {
        Logical {
            phase: Phase::Continue,
            key,
            start_us: end_ms * 1000 - 500,
            end_us: end_ms * 1000,
            region: 0,
            ok,
            retried,
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50, 95, 99, 100));
        assert_eq!(percentiles(&mut []), Percentiles::default());
        let p = percentiles(&mut [7]);
        assert_eq!((p.p50, p.p99, p.max), (7, 7, 7));
    }

    #[test]
    fn recovery_counts_owned_and_failed_keys_from_the_fault() {
        // Fault at 1 s. Key 0 owned by the target, recovers at 2.2 s. Key 1 untouched.
        // Key 2 fails once after the fault, then succeeds at 1.5 s. Key 3 owned, fails after
        // the fault and never succeeds. Key 4 owned, but no request reached it after the fault:
        // not measured.
        let logs = [
            logical(3, 1800, false, true),
            logical(0, 900, true, false),
            logical(0, 2200, true, true),
            logical(0, 2400, true, false),
            logical(1, 1100, true, false),
            logical(2, 1200, false, true),
            logical(2, 1500, true, false),
        ];
        let r = recovery(1_000_000, &[true, false, false, true, true], &logs);
        let mut t = r.times_ms.clone();
        t.sort_unstable();
        assert_eq!(t, vec![500, 1200]);
        assert_eq!(r.unrecovered, 1);
    }

    #[test]
    fn reconcile_accounting_separates_lost_double_and_unknown() {
        let s = |acked, pending: Option<u32>| KeyState {
            issued: acked + u32::from(pending.is_some()),
            acked,
            pending,
            ..KeyState::default()
        };
        let states = [
            s(5, None),
            s(5, None),
            s(5, None),
            s(5, Some(5)),
            s(5, Some(5)),
            s(1, None),
        ];
        let finals = [Some(5), Some(4), Some(7), Some(6), Some(5), None];
        let c = continuity(&states, &finals);
        assert_eq!(c.lost_acked, 1);
        assert_eq!(c.double_applied, 2);
        assert_eq!(c.unresolved, 2);
        assert_eq!(c.unreadable, 1);
    }

    #[test]
    fn timeline_buckets_attempts_per_region() {
        let a = |end_ms, region, ok| Attempt { end_ms, region, ok };
        let t = timeline(
            &[
                a(0, 0, true),
                a(99, 0, false),
                a(100, 1, true),
                a(250, 1, true),
                a(5, 9, true),
            ],
            2,
            100,
        );
        assert_eq!(t.counts[0], vec![(1, 1), (0, 0), (0, 0)]);
        assert_eq!(t.counts[1], vec![(0, 0), (1, 0), (1, 0)]);
        assert_eq!(timeline(&[], 3, 100).counts, vec![Vec::new(); 3]);
    }

    #[test]
    fn histogram_bins_cover_the_maximum() {
        let h = histogram(&[0, 10, 20, 99], 4);
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().map(|b| b.1).sum::<usize>(), 4);
        assert!(h.last().expect("bins").0 > 99);
        assert!(histogram(&[], 4).is_empty());
    }
}
