//! The `loopgate` command line.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use loopgate::{
    agent,
    audit::cli::{self as audit_cli, AuditCommand},
    config::{Config, DEFAULT_PATH},
    control::approvals_cli::{self, ApprovalsArgs},
    control::{self, Request, Response},
    exec, intercept,
    policy::cli::{self as policy_cli, PolicyCommand},
};

/// Exit status for a configuration or usage error.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "loopgate",
    version,
    about = "Audit, mask, block and approve what automations do to PHI services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach interception and serve the proxy.
    Run {
        /// Configuration file [default: /etc/loopgate/agent.toml, else built-in]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Run CMD inside the first intercepted cgroup; exits with its status.
    Exec {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Run CMD as this user (name or uid).
        #[arg(long, short)]
        user: Option<String>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Show the running agent's cgroups, targets, live sessions and counters.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Control socket [default: from the config]
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove interception: detach and unpin every program and map.
    Detach {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Pin directory [default: from the config]
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Inspect the audit trail: verify the hash chain, tail, replay a session.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List, show, approve or deny commands held for approval.
    Approvals(ApprovalsArgs),
    /// Work with the Rego policy pack.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// loopgate's SSH host CA.
    #[command(subcommand)]
    Ssh(SshCommand),
    /// loopgate's local CA, which issues the certificates HTTPS (and
    /// PostgreSQL TLS) targets show clients.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Validate a configuration file (and the policy pack it names).
    Check {
        #[arg(long, short, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SshCommand {
    /// Print the `@cert-authority` line for /etc/ssh/ssh_known_hosts that
    /// makes OpenSSH clients trust the host certificates of SSH targets
    /// (creates the CA on first use).
    KnownHosts {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The hosts the line covers (a known_hosts pattern list).
        #[arg(long, default_value = "*")]
        hosts: String,
        /// Put the line into this known_hosts file (e.g.
        /// /etc/ssh/ssh_known_hosts) in place of loopgate's earlier one,
        /// keeping the file's other lines, instead of printing it.
        #[arg(long, value_name = "FILE")]
        install: Option<PathBuf>,
    },
    /// Print loopgate's SSH user CA public key, for the servers'
    /// `TrustedUserCAKeys` file: targets with `user_certificate = true` log
    /// in with a certificate of it, per session (creates the CA on first use).
    UserCa {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM) for clients' trust stores; creates
    /// the CA if the agent has not yet.
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The CA directory [default: from the config, tls.ca_dir]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `loopgate ca export`.
fn ca_export(config: Option<&std::path::Path>, dir: Option<PathBuf>) -> ExitCode {
    let dir = match dir {
        Some(d) => d,
        None => match load(config) {
            Ok(c) => c.tls.ca_dir,
            Err(code) => return code,
        },
    };
    match loopgate::tls::LocalCa::load_or_create(&dir).and_then(|ca| {
        std::fs::read_to_string(ca.cert_path()).map_err(|source| loopgate::tls::TlsError::Io {
            what: "cannot read",
            path: ca.cert_path(),
            source,
        })
    }) {
        Ok(pem) => {
            print!("{pem}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(anyhow::anyhow!(e)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_json } => {
            init_logs(log_json);
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(anyhow::anyhow!("starting the runtime: {e}")),
            };
            match runtime.block_on(agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Exec { config, user, command } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Returns only when the command could not be started.
            let e = exec::exec(&config, user.as_deref(), &command).unwrap_err();
            eprintln!("loopgate exec: {e:#}");
            ExitCode::from(127)
        }
        Command::Status { config, socket, json } => {
            let socket = match socket {
                Some(s) => s,
                None => match load(config.as_deref()) {
                    Ok(c) => c.control.socket,
                    Err(code) => return code,
                },
            };
            match control::request(&socket, &Request::Status) {
                Ok(Response::Status(report)) if json => {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(Response::Status(report)) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Ok(Response::Error { message }) => fail(anyhow::anyhow!(message)),
                Ok(other) => fail(anyhow::anyhow!("unexpected answer from the agent: {other:?}")),
                Err(e) => fail(e),
            }
        }
        Command::Detach { config, pin_dir } => {
            let pin_dir = match pin_dir {
                Some(p) => p,
                None => match load(config.as_deref()) {
                    Ok(c) => c.intercept.pin_dir,
                    Err(code) => return code,
                },
            };
            match intercept::detach(&pin_dir) {
                Ok(links) => {
                    println!(
                        "detached: removed {links} links and the maps under {}",
                        pin_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Audit(cmd) => audit_cli::run(cmd),
        Command::Policy(cmd) => policy_cli::run(cmd),
        Command::Approvals(args) => approvals_cli::run(args),
        Command::Ssh(SshCommand::KnownHosts { config, hosts, install }) => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            use loopgate::protocols::ssh::hostca;
            let line = match hostca::HostCa::load_or_create(&config.tls.ca_dir) {
                Ok(ca) => ca.known_hosts_line(&hosts),
                Err(e) => return fail(e.into()),
            };
            let Some(file) = install else {
                println!("{line}");
                return ExitCode::SUCCESS;
            };
            match hostca::install_known_hosts(&file, &line) {
                Ok(changed) => {
                    let done = if changed { "installed in" } else { "already in" };
                    eprintln!("loopgate: the SSH host CA line is {done} {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.into()),
            }
        }
        Command::Ca(CaCommand::Export { config, dir }) => ca_export(config.as_deref(), dir),
        Command::Ssh(SshCommand::UserCa { config }) => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match loopgate::protocols::ssh::userca::UserCa::load_or_create(&config.tls.ca_dir) {
                Ok(ca) => {
                    println!("{}", ca.trusted_line());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.into()),
            }
        }
        Command::Check { config } => check(&config),
    }
}

/// `loopgate check`: the config, then the policy pack it names.
fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loopgate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let policy = match &config.policy_dir {
        Some(dir) => match loopgate::policy::check(dir) {
            Ok(summary) => format!(", policy pack {} ({summary:?})", dir.display()),
            Err(e) => {
                eprintln!("loopgate: policy pack {}: {e}", dir.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => match &config.policy_bundle {
            Some(b) => format!(", policy bundle {} (fetched and verified at start)", b.url),
            None => ", built-in policy".to_owned(),
        },
    };
    let remote = match &config.audit.remote {
        Some(r) => format!(", audit shipped to {}", r.url),
        None => String::new(),
    };
    println!(
        "{}: ok ({} cgroups, {} targets{policy}{remote})",
        path.display(),
        config.intercept.cgroups.len(),
        config.targets.len()
    );
    ExitCode::SUCCESS
}

/// Loads the config, printing the error and giving exit status 2 on failure.
fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("loopgate: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn fail(e: anyhow::Error) -> ExitCode {
    tracing::error!("{e:#}");
    eprintln!("loopgate: {e:#}");
    ExitCode::FAILURE
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LOOPGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info,aya=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
