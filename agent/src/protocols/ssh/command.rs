//! What an SSH request is, in the policy's and the audit's terms: the
//! `policy::Action` it is decided as and the `CommandInfo` it is recorded
//! with (command text with detector-found values masked, never raw).
use russh::Pty;

use crate::{
    audit::{CommandInfo, Decision, Event, EventKind, Verdict},
    mask::Masker,
    policy::Action,
    session::Session,
};

/// The rule id a typed shell line is recorded under: it was not decided.
pub const TYPED_LINE_RULE: &str = "loopgate.ssh_shell_line";

/// A line typed into a shell (`text` masked) as a `command` event: allowed
/// by the shell's decision, recorded as an audit aid — loopgate reads it
/// back from keystrokes and does not decide it.
pub fn typed_line_event(session: &Session, text: String, approximate: bool) -> Event {
    let mut e = session.event(EventKind::Command);
    e.command = Some(CommandInfo {
        text: Some(text),
        kind: Some("ssh_shell_line".to_owned()),
        parameters: if approximate {
            vec!["approximate".to_owned()]
        } else {
            Vec::new()
        },
        ..CommandInfo::default()
    });
    e.decision = Some(
        Decision::new(Verdict::Allow)
            .rule(TYPED_LINE_RULE)
            .reason("typed into an allowed shell: recorded from the keystrokes, not decided"),
    );
    e
}

/// What a session channel asks the server to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `ssh host command`, scp/rsync/git's remote side.
    Exec(String),
    /// An interactive shell.
    Shell,
    /// A subsystem (`sftp`).
    Subsystem(String),
}

/// The terminal the client asked for before its request.
#[derive(Clone, Debug)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(Pty, u32)>,
}

/// Remote commands whose output is a file-transfer or VCS protocol, not
/// text: masking would corrupt them (file content is governed by the
/// policy's decision on the command, as SFTP is).
const BINARY_PROTOCOLS: &[&str] = &[
    "scp",
    "rsync",
    "git-upload-pack",
    "git-receive-pack",
    "git-upload-archive",
    "internal-sftp",
];

impl Request {
    /// The policy's view of it; `None` for a subsystem loopgate does not
    /// know (refused: it cannot be described to the policy).
    pub fn action<'a>(&'a self, pty: Option<&'a PtyRequest>) -> Option<Action<'a>> {
        match self {
            Request::Exec(command) => Some(Action::SshExec { command }),
            Request::Shell => Some(Action::SshShell {
                pty: pty.is_some(),
                term: pty.map(|p| p.term.as_str()),
            }),
            Request::Subsystem(name) if name == "sftp" => Some(Action::SshSftp {
                operation: "session",
                path: "",
                to: None,
            }),
            Request::Subsystem(_) => None,
        }
    }

    /// The `kind` recorded in the audit.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "ssh_exec",
            Request::Shell => "ssh_shell",
            Request::Subsystem(name) if name == "sftp" => "ssh_sftp",
            Request::Subsystem(_) => "ssh_subsystem",
        }
    }

    /// What the audit records.
    pub fn info(&self, masker: &Masker, pty: Option<&PtyRequest>) -> CommandInfo {
        let text = match self {
            Request::Exec(command) => masker.mask_free_text(command).into_owned(),
            Request::Shell => match pty {
                Some(p) => format!("shell (pty {})", masker.mask_free_text(&p.term)),
                None => "shell".to_owned(),
            },
            Request::Subsystem(name) => format!("subsystem {}", masker.mask_free_text(name)),
        };
        CommandInfo {
            text: Some(text),
            kind: Some(self.kind().to_owned()),
            ..CommandInfo::default()
        }
    }

    /// Whether the output is text to mask (a shell, a command) rather than
    /// a binary protocol (sftp, scp, rsync, git).
    pub fn output_is_text(&self) -> bool {
        match self {
            Request::Exec(command) => {
                // Only a single transfer program is left unmasked: anything
                // a shell could chain after it (`scp -f x; cat phi`) is text.
                const SHELL: &[char] = &[';', '&', '|', '`', '$', '(', ')', '<', '>', '\n', '\r'];
                let program = command.split_whitespace().next().unwrap_or("");
                let program = program.rsplit('/').next().unwrap_or(program);
                command.contains(SHELL) || !BINARY_PROTOCOLS.contains(&program)
            }
            Request::Shell => true,
            Request::Subsystem(_) => false,
        }
    }
}

/// What the audit records of a forward (`channel` as in `Action::SshForward`).
pub fn forward_info(masker: &Masker, channel: &str, host: &str, port: u16) -> CommandInfo {
    let host = masker.mask_free_text(host);
    let text = if port == 0 {
        format!("{channel} {host}")
    } else {
        format!("{channel} {host}:{port}")
    };
    CommandInfo {
        text: Some(text),
        kind: Some("ssh_forward".to_owned()),
        ..CommandInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    #[test]
    fn requests_map_to_actions_and_recorded_text() {
        let exec = Request::Exec("grep 123-45-6789 /srv/phi/list".into());
        let info = exec.info(&masker(), None);
        assert_eq!(info.kind.as_deref(), Some("ssh_exec"));
        assert!(!info.text.unwrap().contains("123-45-6789"));
        let json = serde_json::to_value(exec.action(None).unwrap()).unwrap();
        assert_eq!(json["kind"], "ssh_exec");
        let pty = PtyRequest {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
            pix_width: 0,
            pix_height: 0,
            modes: Vec::new(),
        };
        let shell = serde_json::to_value(Request::Shell.action(Some(&pty)).unwrap()).unwrap();
        assert_eq!(
            shell,
            serde_json::json!({"kind": "ssh_shell", "pty": true, "term": "xterm"})
        );
        let sftp = serde_json::to_value(Request::Subsystem("sftp".into()).action(None).unwrap()).unwrap();
        assert_eq!(sftp["operation"], "session");
        assert!(Request::Subsystem("netconf".into()).action(None).is_none());
        let fwd = forward_info(&masker(), "direct-tcpip", "db", 5432);
        assert_eq!(fwd.text.as_deref(), Some("direct-tcpip db:5432"));
    }

    #[test]
    fn transfer_protocols_are_not_masked() {
        assert!(Request::Exec("cat /srv/phi/list".into()).output_is_text());
        assert!(Request::Shell.output_is_text());
        assert!(!Request::Exec("scp -f /srv/x".into()).output_is_text());
        assert!(!Request::Exec("/usr/bin/rsync --server -e.Lsfx . /x".into()).output_is_text());
        assert!(!Request::Exec("git-upload-pack '/srv/repo.git'".into()).output_is_text());
        assert!(!Request::Subsystem("sftp".into()).output_is_text());
        // A transfer program with anything chained after it is masked.
        for chained in [
            "scp -f /dev/null; cat /srv/phi/list",
            "rsync --server . /x && cat p",
            "scp -f $(cat p)",
        ] {
            assert!(Request::Exec(chained.into()).output_is_text(), "{chained}");
        }
    }
}
