//! `cargo xtask`: set up a machine, build, run, test, benchmark and install
//! loopgate. Every step is idempotent and safe to repeat.
mod install;
mod layers;
mod package;
mod setup;
mod util;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need: nightly rust-src, bpf-linker,
    /// and (as root on Debian/Ubuntu) the test servers, clients and a Python
    /// venv. Idempotent.
    Setup {
        /// Only the build toolchain, not the test dependencies.
        #[arg(long)]
        build_only: bool,
    },
    /// Build the eBPF programs alone (the agent's build does this too).
    BuildEbpf,
    /// Build the agent (release).
    Build,
    /// Build, then run `loopgate ARGS` as root (default: `run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every test: unit, integration and end-to-end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Show loopgate at work (as root): a throwaway PostgreSQL with
    /// synthetic patients, the agent with the HIPAA pack, an automation's
    /// queries masked, blocked, held and approved, the auditor's query and
    /// the chain verified; everything it starts is removed at the end.
    Demo,
    /// Format check and clippy with warnings as errors.
    Lint,
    /// Run the benchmarks (see BENCHMARKS.md).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Fuzz the parsers (nightly + cargo-fuzz, installed if missing) for
    /// SECONDS each.
    Fuzz {
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Build a Debian package (target/package/loopgate_VERSION_ARCH.deb):
    /// binary, units, default config, the policy pack, and maintainer
    /// scripts that create the `loopgate` group and never attach on install.
    Package {
        /// Package this binary as it is instead of building a release one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Where the package goes [default: target/package].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install the binary, systemd units, default config and policies.
    Install {
        /// Stage into this directory instead of / (for packaging).
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Skip the build and install target/release/loopgate as it is.
        #[arg(long)]
        no_build: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup { build_only } => setup::setup(!build_only),
        Command::BuildEbpf => build_ebpf(),
        Command::Build => setup::setup(false).and_then(|()| build_release()),
        Command::Run { args } => setup::setup(false)
            .and_then(|()| build_release())
            .and_then(|()| run(args)),
        Command::Test { args } => setup::setup(true).and_then(|()| test(args)),
        Command::Demo => setup::setup(true).and_then(|()| demo()),
        Command::Lint => lint(),
        Command::Bench { args } => setup::setup(true).and_then(|()| bench(args)),
        Command::Fuzz { seconds } => setup::setup(false).and_then(|()| fuzz(seconds)),
        Command::Package { binary, out } => {
            let root = util::workspace_root();
            let built = match binary {
                Some(b) => Ok(b),
                None => setup::setup(false)
                    .and_then(|()| build_release())
                    .map(|()| root.join("target/release/loopgate")),
            };
            let out = out.unwrap_or_else(|| root.join("target/package"));
            built.and_then(|b| package::package(&b, &out).map(drop))
        }
        Command::Install { destdir, no_build } => {
            let built = if no_build {
                Ok(())
            } else {
                setup::setup(false).and_then(|()| build_release())
            };
            built.and_then(|()| install::install(destdir.as_deref()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_release() -> anyhow::Result<()> {
    util::cargo(&["build", "--release", "--package", "loopgate"], &[])
}

fn build_ebpf() -> anyhow::Result<()> {
    let dir = util::workspace_root().join("agent-ebpf");
    util::run_in(
        &dir,
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ],
        &[],
    )
}

fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let binary = util::workspace_root().join("target/release/loopgate");
    let args = if args.is_empty() {
        vec![OsString::from("run")]
    } else {
        args
    };
    util::exec_as_root(&binary, &args)
}

/// The demo binary (tests/demo), with the agent and the venv it drives.
fn demo() -> anyhow::Result<()> {
    util::cargo(&["build", "--package", "loopgate"], &[])?;
    let env = agent_env();
    let args = ["run", "--quiet", "--package", "loopgate-e2e", "--bin", "loopgate-demo"];
    util::cargo_os(&args.map(OsString::from), &env)
}

/// Where the end-to-end tests and the demo find the agent and Python.
fn agent_env() -> [(&'static str, OsString); 2] {
    let root = util::workspace_root();
    [
        ("LOOPGATE_BIN", root.join("target/debug/loopgate").into_os_string()),
        ("LOOPGATE_PYTHON", root.join("target/venv/bin/python3").into_os_string()),
    ]
}

/// Unit and integration tests of every crate, then the end-to-end tests,
/// which find the agent binary and the Python venv through the environment.
fn test(args: Vec<OsString>) -> anyhow::Result<()> {
    util::cargo(&["build", "--package", "loopgate"], &[])?;
    let root = util::workspace_root();
    let binary = root.join("target/debug/loopgate");
    let env = agent_env();
    let mut cargo_args: Vec<OsString> = ["test", "--workspace", "--exclude", "agent-ebpf"]
        .iter()
        .map(OsString::from)
        .collect();
    let filtered = !args.is_empty();
    cargo_args.extend(args);
    util::cargo_os(&cargo_args, &env)?;
    if filtered {
        return Ok(());
    }
    // The policy pack's own Rego unit tests.
    let policies = root.join("policies");
    util::run_in(
        &root,
        &binary.to_string_lossy(),
        &["policy", "test", &policies.to_string_lossy()],
        &[],
    )
}

fn lint() -> anyhow::Result<()> {
    util::cargo(&["fmt", "--all", "--check"], &[])?;
    layers::check(&util::workspace_root().join("agent/src"))?;
    util::cargo(
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

/// The parsers that take untrusted bytes, each fuzzed in turn.
const FUZZ_TARGETS: &[&str] = &[
    "pg_server_message",
    "pg_bind",
    "pg_extended",
    "sql_analyze",
    "mask_free_text",
    "ssh_sftp",
    "http_json_mask",
    "http_exec_frames",
];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    // Through rustup's `cargo` (not $CARGO), so `+nightly` selects the toolchain.
    if util::output("cargo", &["+nightly", "fuzz", "--version"]).is_none() {
        util::run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    let dir = util::workspace_root().join("agent");
    for target in FUZZ_TARGETS {
        let time = format!("-max_total_time={seconds}");
        util::run_in(&dir, "cargo", &["+nightly", "fuzz", "run", target, "--", &time], &[])?;
    }
    Ok(())
}

fn bench(args: Vec<OsString>) -> anyhow::Result<()> {
    util::cargo(&["build", "--release", "--package", "loopgate"], &[])?;
    let root = util::workspace_root();
    let env = [("LOOPGATE_BIN", root.join("target/release/loopgate").into_os_string())];
    let mut cargo_args: Vec<OsString> = ["bench", "--workspace", "--exclude", "agent-ebpf"]
        .iter()
        .map(OsString::from)
        .collect();
    cargo_args.extend(args);
    util::cargo_os(&cargo_args, &env)
}
