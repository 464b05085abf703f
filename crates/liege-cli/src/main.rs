//! `liege`: the command line with the built-in agent kinds (see the `liege_cli` library to
//! serve your own).

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// buffers across threads (headers, futures, JSON, checkpoint bytes), where glibc's malloc
/// and free took about 15 % of a node's CPU (`docs/BENCHMARKS.md`, issue 12).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    liege_cli::run(liege::Agents::with_builtins())
}
