//! The `specdec` command.

fn main() -> std::process::ExitCode {
    specdec_backend::cli::main()
}
