//! The `tollgate` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tollgate::cli::main(tollgate::cli::Cli::parse())
}
