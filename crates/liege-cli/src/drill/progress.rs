//! Progress on stderr: a redrawn bar on a terminal, plain lines otherwise (CI logs).

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where phase lines and load bars go.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    live: bool,
    t0: Instant,
}

/// A running load bar; [`Bar::finish`] prints its last state.
#[derive(Debug)]
pub(crate) struct Bar {
    task: JoinHandle<()>,
    render: Render,
}

#[derive(Clone, Debug)]
struct Render {
    label: String,
    total: Option<u64>,
    span: Option<Duration>,
    started: Instant,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    live: bool,
}

impl Render {
    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let frac = match (self.total, self.span) {
            (Some(t), _) if t > 0 => done as f64 / t as f64,
            (_, Some(s)) if !s.is_zero() => elapsed.as_secs_f64() / s.as_secs_f64(),
            _ => 0.0,
        }
        .clamp(0.0, 1.0);
        let width = 28;
        let filled = (frac * width as f64).round() as usize;
        let bar = format!("{}{}", "█".repeat(filled), "░".repeat(width - filled));
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        let bar = if self.live {
            format!("[{bar}] ")
        } else {
            String::new()
        };
        format!(
            "  {:<9} {bar}{done} done, {failed} failed, {rate:.0}/s, {:.1}s",
            self.label,
            elapsed.as_secs_f64()
        )
    }
}

impl Progress {
    /// Live bars iff stderr is a terminal and `plain` is false.
    pub(crate) fn new(plain: bool, t0: Instant) -> Self {
        Self {
            live: !plain && std::io::stderr().is_terminal(),
            t0,
        }
    }

    /// Prints one line, stamped with the time since the drill started.
    pub(crate) fn say(&self, msg: impl std::fmt::Display) {
        eprintln!("[{:>6.2}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    /// Starts a bar over `done` / `failed` counters; `total` items or `span` of time.
    pub(crate) fn bar(
        &self,
        label: &str,
        total: Option<u64>,
        span: Option<Duration>,
        done: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
    ) -> Bar {
        let render = Render {
            label: label.to_string(),
            total,
            span,
            started: Instant::now(),
            done,
            failed,
            live: self.live,
        };
        let r = render.clone();
        let period = if self.live {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                if r.live {
                    eprint!("\r\x1b[2K{}", r.line());
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{}", r.line());
                }
            }
        });
        Bar { task, render }
    }
}

impl Bar {
    /// Stops redrawing and prints the final line.
    pub(crate) fn finish(self) {
        self.task.abort();
        if self.render.live {
            eprintln!("\r\x1b[2K{}", self.render.line());
        } else {
            eprintln!("{}", self.render.line());
        }
    }
}
