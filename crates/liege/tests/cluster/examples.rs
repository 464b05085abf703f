//! The examples of this crate: they build (`cargo test` builds them), run, and the README
//! shows the library example as it is.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/debug/deps/cluster-… → target/debug/examples/NAME
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example {name} not built at {}: a whole `cargo test` builds the examples, a run \
         filtered to one test target does not (`cargo build --examples` first)",
        path.display()
    );
    path
}

#[test]
fn the_readme_library_snippet_is_the_typed_counter_example() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).expect("README");
    let example =
        std::fs::read_to_string(root.join("examples/typed_counter.rs")).expect("the example");
    let body = example
        .split("// README:begin\n")
        .nth(1)
        .and_then(|rest| rest.split("// README:end").next())
        .expect("README markers in the example");
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README's Library block differs from examples/typed_counter.rs"
    );
}

/// The text of `file` between `// {marker}:begin` and `// {marker}:end`.
fn between(file: &str, marker: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(file)).expect(file);
    text.split(&format!("// {marker}:begin\n"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("// {marker}:end")).next())
        .unwrap_or_else(|| panic!("{marker} markers in {file}"))
        .to_string()
}

#[test]
fn the_guide_shows_the_cart_example_and_the_example_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/AGENTS.md")).expect("guide");
    let body = between("examples/cart.rs", "GUIDE");
    assert!(
        guide.contains(&format!("```rust\n{body}```")),
        "docs/AGENTS.md section 1 differs from examples/cart.rs"
    );
    runs_twice_over_one_directory("cart", |n| format!("user-42 has {n} items"));
}

#[test]
fn the_event_sourced_cart_rebuilds_from_its_snapshot_and_journal_across_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/AGENTS.md")).expect("guide");
    let body = between("examples/event_sourced_cart.rs", "GUIDE");
    assert!(
        guide.contains(&format!("```rust\n{body}```")),
        "docs/AGENTS.md differs from examples/event_sourced_cart.rs"
    );
    let dir = tempfile_dir();
    // Three events a run, a snapshot every four: the second run's reactivation replays only
    // the two events after the snapshot taken at revision 4.
    for expected in [
        "user-42: tea x2, journal at 3, snapshot at 0, replayed 3",
        "user-42: tea x4, journal at 6, snapshot at 4, replayed 2",
    ] {
        let stdout = run_example("event_sourced_cart", &dir);
        assert!(stdout.contains(expected), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_order_workflow_retries_payment_with_alarms_and_cancels_on_timeout() {
    let dir = tempfile_dir();
    let stdout = run_example("order_workflow", &dir);
    for line in [
        // Declined twice, paid by the third alarm turn, shipped before its deadline.
        "shipped: Shipped { attempts: 3 }",
        // Declined by every attempt: gave up after the fourth.
        "over the limit: Cancelled { reason: \"payment declined 4 times\" }",
        // Paid, then its shipping deadline (an alarm) cancelled and refunded it.
        "never shipped: Cancelled { reason: \"not shipped within 1500 ms (Refunded(40))\" }",
    ] {
        assert!(stdout.contains(line), "{line} not in:\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_typed_counter_example_runs_and_its_counter_is_durable() {
    runs_twice_over_one_directory("typed_counter", |n| format!("tenant-7 = {n}"));
}

/// Runs example `name` once over `dir` and returns its standard output (it must succeed).
fn run_example(name: &str, dir: &std::path::Path) -> String {
    let out = Command::new(example(name))
        .arg(dir)
        .env("LIEGE_LOG", "warn")
        .output()
        .expect("the example runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs example `name` twice over one fresh directory: the second run must see the first
/// run's writes (the example adds 2 each time and prints `line(total)`).
fn runs_twice_over_one_directory(name: &str, line: impl Fn(u32) -> String) {
    let dir = tempfile_dir();
    for expected in [2, 4] {
        let stdout = run_example(name, &dir);
        assert!(stdout.contains(&line(expected)), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "liege-typed-counter-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
