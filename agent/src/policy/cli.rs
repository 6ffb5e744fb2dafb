//! `loopgate policy ...`: the subcommands main.rs mounts.
use std::{io::Write, path::PathBuf, process::ExitCode};

use super::rego::{TestReport, run_tests};

/// Where `cargo xtask install` puts the pack.
pub const DEFAULT_DIR: &str = "/etc/loopgate/policies";

#[derive(Clone, Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Run the pack's Rego unit tests (every `test_*` rule) and print
    /// `N passed, M failed`; exit status 0 only when all pass.
    Test {
        /// Policy directory [default: /etc/loopgate/policies].
        dir: Option<PathBuf>,
    },
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Test { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
            match run_tests(&dir) {
                Ok(report) => {
                    let out = std::io::stdout();
                    let ok = print_report(&report, &mut out.lock()).is_ok();
                    if ok && report.failed() == 0 && report.passed() > 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("loopgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One line per failed test, then the closing `N passed, M failed` line.
pub fn print_report(report: &TestReport, out: &mut impl Write) -> std::io::Result<()> {
    for o in report.outcomes.iter().filter(|o| !o.passed) {
        writeln!(out, "FAIL {}: {}", o.name, o.detail.as_deref().unwrap_or("not true"))?;
    }
    if report.outcomes.is_empty() {
        writeln!(out, "no test_ rules found")?;
    }
    writeln!(out, "{} passed, {} failed", report.passed(), report.failed())
}
