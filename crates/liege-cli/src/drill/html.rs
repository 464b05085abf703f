//! The `--html` report: one self-contained page, inline SVG, no scripts or external assets.

use std::fmt::Write as _;

use super::measure::{histogram, Timeline};
use super::report::{Criterion, Findings};

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 900.0;
const ROW_H: f64 = 90.0;
const LEFT: f64 = 50.0;

/// Stacked ok (green) / error (red) bars per region, one bar per bucket, the fault marked.
fn timeline_svg(t: &Timeline, regions: &[String], fault_ms: u64) -> String {
    let buckets = t.counts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let peak = t
        .counts
        .iter()
        .flatten()
        .map(|(ok, err)| ok + err)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bw = (W - LEFT) / buckets as f64;
    let h = ROW_H * regions.len() as f64 + 30.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img">"#
    );
    for (ri, region) in regions.iter().enumerate() {
        let base = ROW_H * (ri as f64 + 1.0);
        let _ = write!(
            s,
            r#"<text x="4" y="{:.1}" class="lbl">{}</text>"#,
            base - ROW_H / 2.0,
            escape(region)
        );
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{base}" x2="{W}" y2="{base}" class="axis"/>"#
        );
        for (bi, (ok, err)) in t.counts.get(ri).into_iter().flatten().enumerate() {
            let x = LEFT + bi as f64 * bw;
            let scale = (ROW_H - 10.0) / peak;
            let (hok, herr) = (*ok as f64 * scale, *err as f64 * scale);
            if *ok > 0 {
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.2}" height="{hok:.1}" class="ok"><title>{ok} ok</title></rect>"#,
                    base - hok,
                    bw.max(1.0)
                );
            }
            if *err > 0 {
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.2}" height="{herr:.1}" class="err"><title>{err} errors</title></rect>"#,
                    base - hok - herr,
                    bw.max(1.0)
                );
            }
        }
    }
    let fx = LEFT + fault_ms as f64 / f64::from(t.bucket_ms.max(1)) * bw;
    let _ = write!(
        s,
        r#"<line x1="{fx:.1}" y1="0" x2="{fx:.1}" y2="{:.1}" class="fault"/><text x="{:.1}" y="{:.1}" class="lbl">fault</text>"#,
        h - 20.0,
        fx + 3.0,
        h - 6.0
    );
    let secs = buckets as f64 * f64::from(t.bucket_ms) / 1000.0;
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{:.1}" class="lbl">0 s</text><text x="{:.1}" y="{:.1}" class="lbl">{secs:.1} s</text></svg>"#,
        h - 6.0,
        W - 40.0,
        h - 6.0
    );
    s
}

fn histogram_svg(values: &[u64]) -> String {
    let bins = histogram(values, 30);
    let (w, h) = (W, 200.0);
    let peak = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let bw = (w - LEFT) / bins.len().max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#
    );
    for (i, (upper, n)) in bins.iter().enumerate() {
        let bh = *n as f64 / peak * (h - 40.0);
        let x = LEFT + i as f64 * bw;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" class="bar"><title>≤ {upper} ms: {n} keys</title></rect>"#,
            h - 20.0 - bh,
            (bw - 1.0).max(1.0)
        );
    }
    let max = bins.last().map_or(0, |b| b.0);
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{w}" y2="{:.1}" class="axis"/><text x="{LEFT}" y="{:.1}" class="lbl">0 ms</text><text x="{:.1}" y="{:.1}" class="lbl">{max} ms</text><text x="4" y="16" class="lbl">keys</text></svg>"#,
        h - 20.0,
        h - 20.0,
        h - 4.0,
        w - 70.0,
        h - 4.0
    );
    s
}

/// The whole page.
pub(crate) fn render(f: &Findings, verdict: &[Criterion]) -> String {
    let pass = verdict.iter().all(|c| c.pass);
    let mut rows = String::new();
    for c in verdict {
        let _ = write!(
            rows,
            r#"<tr><td class="{cls}">{v}</td><td>{}</td><td>{}</td></tr>"#,
            escape(c.name),
            escape(&c.detail),
            cls = if c.pass { "pass" } else { "fail" },
            v = if c.pass { "PASS" } else { "FAIL" },
        );
    }
    let r = &f.recovery;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>liege drill: {scenario} {verdict}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td{{padding:3px 10px;border-bottom:1px solid #ddd}} .pass{{color:#186a2e;font-weight:bold}}
.fail{{color:#b00020;font-weight:bold}} .ok{{fill:#3a9d5d}} .err{{fill:#d0342c}} .bar{{fill:#4a6fa5}}
.axis{{stroke:#888}} .fault{{stroke:#000;stroke-width:2;stroke-dasharray:4 3}} .lbl{{font-size:12px;fill:#444}}
</style></head><body>
<h1>liege drill — {scenario} — <span class="{cls}">{verdict}</span></h1>
<p>{nodes} nodes in {nregions} regions ({regions}), {store} store, {keys} keys. Fault on {targets}
({target_keys} keys) at {fault:.2} s. {requests} logical requests, {attempts} attempts, {errors} client errors.</p>
<table>{rows}</table>
<h2>Requests over time</h2>
<p>HTTP attempts per region per {bucket} ms by entry node: ok (green) and failed (red).</p>
{timeline}
<h2>Recovery</h2>
<p>Per affected key, from the fault to its first success: p50 {p50} ms, p95 {p95} ms, p99 {p99} ms, max {max} ms
({n} keys).</p>
{hist}
<p>Run directory: <code>{run_dir}</code></p>
</body></html>
"#,
        scenario = escape(&f.scenario),
        verdict = if pass { "PASS" } else { "FAIL" },
        cls = if pass { "pass" } else { "fail" },
        nodes = f.nodes,
        nregions = f.regions.len(),
        regions = escape(&f.regions.join(", ")),
        store = escape(&f.store),
        keys = f.keys,
        targets = escape(&f.targets.join(", ")),
        target_keys = f.target_keys,
        fault = f.fault_ms as f64 / 1000.0,
        requests = f.requests,
        attempts = f.attempts,
        errors = f.errors,
        bucket = f.timeline.bucket_ms,
        timeline = timeline_svg(&f.timeline, &f.regions, f.fault_ms),
        p50 = r.p50,
        p95 = r.p95,
        p99 = r.p99,
        max = r.max,
        n = f.recovery_ms.len(),
        hist = histogram_svg(&f.recovery_ms),
        run_dir = escape(&f.run_dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape("iad-1"), "iad-1");
    }

    #[test]
    fn page_is_self_contained_with_svg() {
        let f = Findings {
            scenario: "pause".into(),
            regions: vec!["iad".into(), "<ord>".into()],
            timeline: Timeline {
                bucket_ms: 100,
                counts: vec![vec![(3, 1)], vec![(0, 2)]],
            },
            recovery_ms: vec![100, 900, 1200],
            ..Findings::default()
        };
        let page = render(&f, &[]);
        assert!(page.contains("<svg"));
        assert!(page.contains("&lt;ord&gt;"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src="));
    }
}
