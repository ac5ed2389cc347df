//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! coloured only on a terminal. Key values never reach a log line: requests
//! are logged by key id only.

use std::io::IsTerminal;

/// Installs the subscriber once; later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
