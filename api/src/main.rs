//! The `memtide` binary: see [`memtide_api::cli`].

fn main() -> std::process::ExitCode {
    memtide_api::cli::run()
}
