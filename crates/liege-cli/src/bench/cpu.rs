//! CPU time of processes, from `/proc/<pid>/stat` (Linux): user + system, in seconds.

/// Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(utime + stime, ppid)` of one process, if it exists.
fn stat(pid: u32) -> Option<(u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing ')' do not.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), so index = field − 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// CPU seconds used so far by `pid`.
pub(crate) fn process_seconds(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |(t, _)| t as f64 / ticks_per_second())
}

/// CPU seconds used so far by `pid` and every live child of it (a PostgreSQL server and its
/// backends). Children that exited meanwhile are not counted.
pub(crate) fn tree_seconds(pid: u32) -> f64 {
    let mut ticks = stat(pid).map_or(0, |(t, _)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((t, ppid)) = stat(child) {
                if ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    ticks as f64 / ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let start = process_seconds(std::process::id());
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_seconds(std::process::id()) >= start);
        assert!(stat(std::process::id()).is_some());
        assert!(stat(u32::MAX).is_none());
    }
}
