//! Temporary entry point for the audit store branch: only `loopgate audit`.
//! The agent's real main.rs replaces this at merge and wires the same
//! subcommand.
use clap::{Parser, Subcommand};
use loopgate::audit::cli::{self, AuditCommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "loopgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Audit(cmd) => cli::run(cmd),
    }
}
