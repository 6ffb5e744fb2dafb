//! `loopgate audit verify|tail|replay`.
use super::config::DEFAULT_DIR;
use super::layout::rfc3339;
use super::row::{SESSION_ID, row_to_event, str_at};
use super::{Event, reader, verify};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain across every Parquet file and the WAL; exit 1
    /// and name the first broken file, row and event when it does not hold.
    Verify {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Print events, oldest first, including those still only in the WAL.
    Tail {
        /// Keep printing new events as they are recorded.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N events (default: all).
        #[arg(short = 'n', long = "lines")]
        lines: Option<usize>,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// One JSON object (the event) per line.
        #[arg(long)]
        json: bool,
    },
    /// A readable timeline of one session.
    Replay {
        session_id: Uuid,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

const EXIT_BROKEN: u8 = 1;
const EXIT_USAGE: u8 = 2;

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { dir } => run_verify(&dir),
        AuditCommand::Tail {
            follow,
            lines,
            dir,
            json,
        } => run_tail(&dir, follow, lines, json),
        AuditCommand::Replay { session_id, dir } => run_replay(&dir, session_id),
    }
}

fn run_verify(dir: &Path) -> ExitCode {
    match verify::verify(dir) {
        Ok(v) => {
            let start = match v.anchored_at {
                Some(seq) => format!("from retention anchor at seq {seq}"),
                None => "from genesis".to_owned(),
            };
            println!(
                "ok: {} events in {} files and {} WAL segments, chain {start} to seq {} hash {}",
                v.events, v.files, v.segments, v.last_seq, v.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(Ok(broken)) => {
            println!("BROKEN: {broken}");
            ExitCode::from(EXIT_BROKEN)
        }
        Err(Err(e)) => {
            eprintln!("error: cannot read the audit store: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// One event as a line of text: JSON or a short human summary.
fn render(event: &Event, json: bool) -> String {
    if json {
        return serde_json::to_string(event).unwrap_or_default();
    }
    let mut line = format!("{} #{} {}", rfc3339(event.time_us), event.seq, event.kind.as_str());
    if let Some(s) = event.session_id {
        line.push_str(&format!(" session={s}"));
    }
    line.push_str(&details(event));
    line
}

fn details(event: &Event) -> String {
    let mut s = String::new();
    if let Some(t) = &event.target {
        s.push_str(&format!(" target={}", t.name));
    }
    if let Some(p) = event.principal.as_ref().and_then(|p| p.subject.as_ref()) {
        s.push_str(&format!(" principal={p}"));
    }
    if let Some(d) = &event.decision {
        s.push_str(&format!(" decision={}", d.verdict.as_str()));
        if let Some(r) = &d.rule_id {
            s.push_str(&format!(" rule={r}"));
        }
        if let Some(id) = &d.approval_id {
            s.push_str(&format!(" approval={id}"));
        }
        if let Some(a) = &d.approver {
            s.push_str(&format!(" approver={a}"));
        }
    }
    if let Some(o) = &event.outcome {
        if let Some(st) = &o.status {
            s.push_str(&format!(" status={st}"));
        }
        if let Some(r) = o.rows {
            s.push_str(&format!(" rows={r}"));
        }
        if let Some(m) = o.masked_count {
            s.push_str(&format!(" masked={m}"));
        }
        if let Some(c) = &o.error_code {
            s.push_str(&format!(" error={c}"));
        }
    }
    if let Some(d) = event.duration_us {
        s.push_str(&format!(" duration={:.3}ms", d as f64 / 1000.0));
    }
    if let Some(t) = event.command.as_ref().and_then(|c| c.text.as_ref()) {
        s.push_str(&format!(" {t:?}"));
    }
    s
}

fn run_tail(dir: &Path, follow: bool, lines: Option<usize>, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut last_n: VecDeque<String> = VecDeque::new();
    let mut failed = None;
    let write = |line: String, out: &mut std::io::StdoutLock<'_>| writeln!(out, "{line}");
    // With -n, start near the head instead of reading the whole store.
    let start = match lines {
        Some(n) => match reader::head_seq(dir) {
            Ok(head) => head.saturating_sub(n as u64),
            Err(e) => {
                eprintln!("error: reading {}: {e}", dir.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => 0,
    };
    let first = reader::read_after(dir, start, |row| match row_to_event(row) {
        Ok(e) => {
            last_n.push_back(render(&e, json));
            if lines.is_some_and(|n| last_n.len() > n) {
                last_n.pop_front();
            }
        }
        Err(e) => failed = Some(e.to_string()),
    });
    let mut last = match first {
        Ok(seq) => seq,
        Err(e) => {
            eprintln!("error: reading {}: {e}", dir.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(e) = failed.take() {
        eprintln!("error: undecodable event: {e}");
        return ExitCode::from(EXIT_BROKEN);
    }
    for line in last_n {
        if write(line, &mut out).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    let _ = out.flush();
    if !follow {
        return ExitCode::SUCCESS;
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut pipe_closed = false;
        let result = reader::read_after(dir, last, |row| {
            if let Ok(e) = row_to_event(row) {
                pipe_closed |= write(render(&e, json), &mut out).is_err();
            }
        });
        if pipe_closed || out.flush().is_err() {
            return ExitCode::SUCCESS;
        }
        match result {
            Ok(seq) => last = seq,
            Err(e) => eprintln!("warning: reading {}: {e}", dir.display()),
        }
    }
}

fn run_replay(dir: &Path, session: Uuid) -> ExitCode {
    let wanted = session.to_string();
    let mut events = Vec::new();
    let mut failed = None;
    let result = reader::read_after(dir, 0, |row| {
        if str_at(row, SESSION_ID) == Some(wanted.as_str()) {
            match row_to_event(row) {
                Ok(e) => events.push(e),
                Err(e) => failed = Some(e.to_string()),
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: reading {}: {e}", dir.display());
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(e) = failed {
        eprintln!("error: undecodable event: {e}");
        return ExitCode::from(EXIT_BROKEN);
    }
    let Some(first) = events.first() else {
        eprintln!("no events for session {session}");
        return ExitCode::from(EXIT_BROKEN);
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", replay_header(first, session));
    for e in &events {
        let offset = (e.time_us - first.time_us) as f64 / 1e6;
        let line = format!("+{offset:>10.6}s  #{:<8} {:<15}{}", e.seq, e.kind.as_str(), details(e));
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn replay_header(first: &Event, session: Uuid) -> String {
    let mut h = format!("session {session} started {}", rfc3339(first.time_us));
    if let Some(t) = &first.target {
        h.push_str(&format!("\n  target:    {} ({} {})", t.name, t.protocol, t.address));
    }
    if let Some(p) = &first.principal {
        h.push_str(&format!(
            "\n  principal: {} (issuer {}, groups {})",
            p.subject.as_deref().unwrap_or("?"),
            p.issuer.as_deref().unwrap_or("?"),
            p.groups.join(",")
        ));
    }
    if let Some(p) = &first.process {
        h.push_str(&format!(
            "\n  process:   {} pid {} uid {} unit {}",
            p.exe.as_deref().or(p.comm.as_deref()).unwrap_or("?"),
            p.tgid.or(p.pid).map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            p.uid.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            p.unit.as_deref().unwrap_or("-"),
        ));
    }
    h
}
