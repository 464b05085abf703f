//! [`Trace`]: what happened in one simulated run, stamped with virtual time.

use parking_lot::Mutex;
use tokio::time::Instant;

/// The readable history of one run: faults, node events, client operations.
pub struct Trace {
    origin: Instant,
    lines: Mutex<Vec<String>>,
    /// Also print every line as it happens (`LIEGE_SIM_ECHO=1`), to watch a run that hangs.
    echo: bool,
}

impl Trace {
    /// An empty trace whose time 0 is now (virtual).
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            lines: Mutex::new(Vec::new()),
            echo: std::env::var("LIEGE_SIM_ECHO").is_ok_and(|v| v == "1"),
        }
    }

    /// Virtual milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Appends a line.
    pub fn log(&self, line: impl AsRef<str>) {
        let t = self.origin.elapsed();
        let stamped = format!(
            "{:>6}.{:03}s  {}",
            t.as_secs(),
            t.subsec_millis(),
            line.as_ref()
        );
        if self.echo {
            eprintln!("{stamped}");
        }
        self.lines.lock().push(stamped);
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}
