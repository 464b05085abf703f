//! `liege`: the command line with the built-in agent kinds (see the `liege_cli` library to
//! serve your own).

fn main() -> std::process::ExitCode {
    liege_cli::run(liege::Agents::with_builtins())
}
