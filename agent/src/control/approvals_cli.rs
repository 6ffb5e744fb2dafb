//! `loopgate approvals ...`: the subcommands main.rs mounts. They talk to
//! the agent's approvals socket as the calling unix user (or as the OIDC
//! identity of `--token`/`--token-file`/`LOOPGATE_TOKEN`).
use std::{path::PathBuf, process::ExitCode};

use crate::control::{self, Request, Response};

#[derive(Clone, Debug, clap::Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    pub command: ApprovalsCommand,
    /// Approvals socket [default: /run/loopgate/approvals.sock]
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Decide as this OIDC token's identity (also LOOPGATE_TOKEN).
    #[arg(long, global = true, env = "LOOPGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from this file (keeps it out of `ps`).
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ApprovalsCommand {
    /// Pending requests you may decide.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One pending request.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve: the held command runs once enough approvers have.
    Approve {
        id: String,
        /// Why it may run (recorded with your approval).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny: the held command fails with your reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// A one-time link that signs you in to the approvals page (valid a
    /// minute, for one use); the agent knows you as this socket's peer.
    Web,
}

pub fn run(args: ApprovalsArgs) -> ExitCode {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => return fail(&format!("reading {}: {e}", path.display())),
        },
        (None, None) => None,
    };
    let socket = args
        .socket
        .unwrap_or_else(|| PathBuf::from(crate::approval::DEFAULT_SOCKET));
    let (request, json) = match args.command {
        ApprovalsCommand::List { json } => (Request::ApprovalsList { token }, json),
        ApprovalsCommand::Show { id, json } => (Request::ApprovalsShow { id, token }, json),
        ApprovalsCommand::Approve { id, reason } => (
            Request::ApprovalsDecide {
                id,
                approve: true,
                reason,
                token,
            },
            false,
        ),
        ApprovalsCommand::Web => (Request::ApprovalsWeb { token }, false),
        ApprovalsCommand::Deny { id, reason } => (
            Request::ApprovalsDecide {
                id,
                approve: false,
                reason,
                token,
            },
            false,
        ),
    };
    match control::request(&socket, &request) {
        Ok(Response::Approvals { approvals }) if json => print_json(&approvals),
        Ok(Response::Approvals { approvals }) => {
            if approvals.is_empty() {
                println!("no pending approvals you may decide");
            }
            for a in &approvals {
                println!(
                    "{}  {}  {}  {}/{}  {}",
                    a.id,
                    a.requester,
                    a.rule_id,
                    a.approvals.len(),
                    a.min_approvals,
                    one_line(&a.command)
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Approval { approval }) if json => print_json(&approval),
        Ok(Response::Approval { approval }) => {
            println!("{approval}");
            ExitCode::SUCCESS
        }
        Ok(Response::Decided { decision }) => {
            let id = decision["id"].as_str().unwrap_or_default();
            match decision["result"].as_str() {
                Some("released") => println!("approved {id}: the command runs"),
                Some("counted") => println!(
                    "approved {id}: {} of {} approvals; still held",
                    decision["have"], decision["need"]
                ),
                Some("denied") => println!("denied {id}: the command fails with your reason"),
                _ => println!("{decision}"),
            }
            ExitCode::SUCCESS
        }
        Ok(Response::WebLink { url }) => {
            println!("{url}");
            eprintln!("open it within a minute; it signs in once, as you");
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => fail(&message),
        Ok(other) => fail(&format!("unexpected answer from the agent: {other:?}")),
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> ExitCode {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    ExitCode::SUCCESS
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 80 {
        format!("{}…", flat.chars().take(79).collect::<String>())
    } else {
        flat
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("loopgate approvals: {message}");
    ExitCode::FAILURE
}
