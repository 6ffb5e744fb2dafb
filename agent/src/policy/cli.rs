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
    /// Signed policy bundles, the fleet's one policy pack.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Sign the pack in DIR into one bundle file (the pack must load);
    /// publish it where agents' `[policy.bundle] url` points.
    Build {
        dir: PathBuf,
        /// Ed25519 signing key (PKCS#8 PEM; `loopgate audit keygen` makes one).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Must grow with every bundle published [default: now, in seconds].
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Check a bundle's signature and print what it holds.
    Inspect {
        file: PathBuf,
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
    },
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Bundle(cmd) => run_bundle(cmd),
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

fn run_bundle(cmd: BundleCommand) -> ExitCode {
    let result = match cmd {
        BundleCommand::Build {
            dir,
            key,
            out,
            revision,
        } => build(&dir, &key, &out, revision),
        BundleCommand::Inspect { file, public_keys } => inspect(&file, &public_keys),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build(
    dir: &std::path::Path,
    key: &std::path::Path,
    out: &std::path::Path,
    revision: Option<u64>,
) -> Result<(), String> {
    let key = crate::signing::SigningKey::load(Some(key), None).map_err(|e| e.to_string())?;
    let now_us = crate::audit::now_us();
    let revision = revision.unwrap_or(u64::try_from(now_us / 1_000_000).unwrap_or(0));
    let created = crate::audit::rfc3339(now_us);
    let bytes = super::bundle::build(dir, &key, revision, created).map_err(|e| e.to_string())?;
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    let trusted = crate::signing::TrustedKeys::from_keys(vec![key.public().clone()]);
    let bundle = super::bundle::open(&bytes, &trusted).map_err(|e| e.to_string())?;
    println!("wrote {}: {}", out.display(), bundle.describe());
    Ok(())
}

fn inspect(file: &std::path::Path, keys: &[PathBuf]) -> Result<(), String> {
    let trusted = crate::signing::TrustedKeys::load(keys).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let bundle = super::bundle::open(&bytes, &trusted).map_err(|e| e.to_string())?;
    println!(
        "{}: {}, created {}",
        file.display(),
        bundle.describe(),
        bundle.payload.created
    );
    for (name, text) in &bundle.payload.files {
        println!("  {name} ({} bytes)", text.len());
    }
    Ok(())
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
