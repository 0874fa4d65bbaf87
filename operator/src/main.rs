fn main() -> std::process::ExitCode {
    specdec_operator::cli::main()
}
