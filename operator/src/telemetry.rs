//! Logging: `tracing` to stderr, filtered by `SPECDEC_OPERATOR_LOG` (default
//! `info`), as text or JSON.

/// Install the global subscriber.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPECDEC_OPERATOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only on a terminal: log collectors and files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
