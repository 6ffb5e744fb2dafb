//! `loopgate audit verify|tail|replay|report|keygen|pubkey`.
use super::config::DEFAULT_DIR;
use super::layout::rfc3339;
use super::row::{Cell, SESSION_ID, row_to_event, str_at, time_at};
use super::{Event, EventKind, reader, recording, report, verify, verify_remote};
use crate::objstore::{self, S3Config, S3Url};
use crate::signing::{PublicKey, SigningKey, TrustedKeys};
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
    /// With --url, check each host's chain in object storage instead, up to
    /// its newest signed checkpoint.
    Verify {
        #[arg(long, default_value = DEFAULT_DIR, conflicts_with = "url")]
        dir: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make an Ed25519 signing key for checkpoints (PKCS#8 PEM, mode 0600)
    /// and print its public key, which verifiers need.
    Keygen {
        /// Where the private key goes (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (PEM) and key id of a signing key.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
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
    /// A readable timeline of one session, then its recordings (SSH exec
    /// and shell output, as masked) played in the terminal.
    Replay {
        session_id: Uuid,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Play recordings N times faster (0.5: slower).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print recordings at once instead of at their pace.
        #[arg(long)]
        no_wait: bool,
    },
    /// What happened over a period: per principal and target, the sessions,
    /// commands, refusals, holds and approvals, and values masked; with
    /// --html, the same as one self-contained page with charts.
    Report {
        /// How far back: 30m, 12h, 7d, 4w.
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Also write the report as an HTML page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// Where and how to read a remote copy of the trail.
#[derive(clap::Args, Debug)]
pub struct RemoteArgs {
    /// s3://bucket/prefix of the fleet's store. Credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the instance's role).
    #[arg(long)]
    pub url: Option<String>,
    /// Only this host (repeatable; default: every host under the prefix).
    #[arg(long = "host", requires = "url")]
    pub hosts: Vec<String>,
    /// A trusted checkpoint key (PEM; repeatable), for every host. Without
    /// keys the end of each chain is not vouched for: only links are checked.
    #[arg(long = "public-key", requires = "url")]
    pub public_keys: Vec<PathBuf>,
    /// A directory of per-host keys: host H's checkpoints must be signed by
    /// `H.pub` (or `H.<anything>.pub`, for rotation), so one host's key
    /// cannot vouch for another host's chain.
    #[arg(long, requires = "url")]
    pub keys_dir: Option<PathBuf>,
    /// Check every checkpoint, not only each host's newest.
    #[arg(long, requires = "url")]
    pub all_checkpoints: bool,
    /// Fail when a host's newest checkpoint is older than this.
    #[arg(long, requires = "url")]
    pub max_age_secs: Option<u64>,
    /// S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL).
    #[arg(long, requires = "url")]
    pub endpoint: Option<String>,
    #[arg(long, requires = "url")]
    pub region: Option<String>,
    /// Allow a plain http:// endpoint.
    #[arg(long, requires = "url")]
    pub allow_http: bool,
    /// PEM roots for an endpoint with a private CA.
    #[arg(long, requires = "url")]
    pub ca_file: Option<PathBuf>,
}

impl RemoteArgs {
    fn s3(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            ca_file: self.ca_file.clone(),
            ..S3Config::default()
        }
    }
}

const EXIT_BROKEN: u8 = 1;
const EXIT_USAGE: u8 = 2;

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { remote, .. } if remote.url.is_some() => run_verify_remote(&remote),
        AuditCommand::Verify { dir, .. } => run_verify(&dir),
        AuditCommand::Keygen { out } => run_keygen(&out),
        AuditCommand::Pubkey { key } => run_pubkey(&key),
        AuditCommand::Tail {
            follow,
            lines,
            dir,
            json,
        } => run_tail(&dir, follow, lines, json),
        AuditCommand::Replay {
            session_id,
            dir,
            speed,
            no_wait,
        } => {
            let pace = if no_wait { None } else { Some(speed) };
            run_replay(&dir, session_id, pace)
        }
        AuditCommand::Report { since, dir, html } => run_report(&dir, &since, html.as_deref()),
    }
}

fn run_verify(dir: &Path) -> ExitCode {
    match verify::verify(dir) {
        Ok(v) => {
            let start = match v.anchored_at {
                Some(seq) => format!("from retention anchor at seq {seq}"),
                None => "from genesis".to_owned(),
            };
            // The chain holds each recording's hash: check the files.
            let checked = match recording::check_all(dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: cannot read the audit store: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            if !checked.problems.is_empty() {
                for p in &checked.problems {
                    println!("BROKEN: {p}");
                }
                return ExitCode::from(EXIT_BROKEN);
            }
            let expired = match checked.expired {
                0 => String::new(),
                n => format!(" ({n} more deleted by retention with their partitions)"),
            };
            println!(
                "ok: {} events in {} files and {} WAL segments, chain {start} to seq {} hash {}; {} recordings match their hashes{expired}",
                v.events, v.files, v.segments, v.last_seq, v.last_hash, checked.recordings
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

fn run_verify_remote(args: &RemoteArgs) -> ExitCode {
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_USAGE)
    };
    let url = match S3Url::parse(args.url.as_deref().unwrap_or_default()) {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    let trusted = match TrustedKeys::load(&args.public_keys) {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    if let Some(dir) = &args.keys_dir
        && !dir.is_dir()
    {
        return usage(format!("--keys-dir {} is not a directory", dir.display()));
    }
    let store = match objstore::open(
        &url,
        &args.s3(),
        objstore::Open {
            from_env: true,
            max_retries: 3,
        },
    ) {
        Ok(s) => s,
        Err(e) => return usage(format!("{url}: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return usage(format!("starting the runtime: {e}")),
    };
    let mut options = verify_remote::Options {
        trusted,
        all_checkpoints: args.all_checkpoints,
        max_age: args.max_age_secs.map(Duration::from_secs),
    };
    runtime.block_on(async {
        let hosts = if args.hosts.is_empty() {
            match verify_remote::hosts(&store, &url).await {
                Ok(h) if h.is_empty() => return usage(format!("no audit files under {url}")),
                Ok(h) => h,
                Err(e) => return usage(e),
            }
        } else {
            args.hosts.clone()
        };
        if options.trusted.is_empty() && args.keys_dir.is_none() {
            eprintln!(
                "warning: no --public-key: checkpoints are not checked, so a cut or rewritten end would not show"
            );
        }
        let mut code = ExitCode::SUCCESS;
        for host in &hosts {
            if let Some(dir) = &args.keys_dir {
                match host_keys(dir, host) {
                    Ok(keys) => options.trusted = keys,
                    Err(e) => return usage(e),
                }
            }
            match verify_remote::verify_host(&store, &url, host, &options).await {
                Ok(r) => println!("{}", describe(&r)),
                Err(Ok(broken)) => {
                    println!("BROKEN: host {host}: {broken}");
                    code = ExitCode::from(EXIT_BROKEN);
                }
                Err(Err(e)) => {
                    eprintln!("error: host {host}: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        code
    })
}

/// `host`'s keys in `dir`: `<host>.pub` and `<host>.<anything>.pub`.
fn host_keys(dir: &Path, host: &str) -> Result<TrustedKeys, String> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pub") else {
            continue;
        };
        if stem == host || stem.strip_prefix(host).is_some_and(|rest| rest.starts_with('.')) {
            keys.push(PublicKey::load(&entry.path()).map_err(|e| e.to_string())?);
        }
    }
    if keys.is_empty() {
        return Err(format!("no key for host {host} in {} ({host}.pub)", dir.display()));
    }
    Ok(TrustedKeys::from_keys(keys))
}

fn describe(r: &verify_remote::HostReport) -> String {
    let mut line = format!(
        "ok: host {}: {} events in {} objects, chain from genesis to seq {} hash {}",
        r.host, r.events, r.objects, r.last_seq, r.last_hash
    );
    match &r.checkpoint {
        Some(c) => line.push_str(&format!(
            "; newest checkpoint seq {} signed {} by key {} ({} of {} checked); {} events after it not yet vouched for",
            c.seq,
            c.time,
            c.key_id,
            r.checkpoints_checked,
            r.checkpoints_listed,
            r.last_seq - c.seq
        )),
        None => line.push_str(&format!("; {} checkpoints not checked", r.checkpoints_listed)),
    }
    line.push_str(&format!("; {} recordings match their hashes", r.recordings));
    line
}

fn run_keygen(out: &Path) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt as _;
    let result = SigningKey::generate_pem().map_err(|e| e.to_string()).and_then(|pem| {
        let key = SigningKey::from_pem(pem.as_bytes(), "new key").map_err(|e| e.to_string())?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(key)
    });
    match result {
        Ok(key) => {
            eprintln!(
                "wrote {} (key id {}); its public key:",
                out.display(),
                key.public().id()
            );
            print!("{}", key.public().to_pem());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_pubkey(path: &Path) -> ExitCode {
    match SigningKey::load(Some(path), None) {
        Ok(key) => {
            eprintln!("key id {}", key.public().id());
            print!("{}", key.public().to_pem());
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A public key file: show its id.
            match PublicKey::load(path) {
                Ok(public) => {
                    eprintln!("key id {}", public.id());
                    print!("{}", public.to_pem());
                    ExitCode::SUCCESS
                }
                Err(_) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
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

fn run_report(dir: &Path, since: &str, html: Option<&Path>) -> ExitCode {
    let span = match report::parse_since(since) {
        Ok(us) => us,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let until = super::now_us();
    let mut report = report::Report::new(until.saturating_sub(span), until);
    let since = report.since_us;
    if let Err(code) = each_event(dir, |row| time_at(row).is_some_and(|t| t >= since), |e| report.add(&e)) {
        return code;
    }
    print!("{}", report.text());
    if let Some(path) = html {
        if let Err(e) = std::fs::write(path, report.html()) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
        println!("\nwrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// Every event of the store whose row `keep` accepts, in chain order; on
/// failure, says why and returns the exit code to end with.
fn each_event(dir: &Path, keep: impl Fn(&[Cell]) -> bool, mut each: impl FnMut(Event)) -> Result<(), ExitCode> {
    let mut failed = None;
    let result = reader::read_after(dir, 0, |row| {
        if keep(row) {
            match row_to_event(row) {
                Ok(e) => each(e),
                Err(e) => failed = Some(e.to_string()),
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: reading {}: {e}", dir.display());
        return Err(ExitCode::from(EXIT_USAGE));
    }
    match failed {
        Some(e) => {
            eprintln!("error: undecodable event: {e}");
            Err(ExitCode::from(EXIT_BROKEN))
        }
        None => Ok(()),
    }
}

/// `pace`: how much faster than real time recordings play; `None`: at once.
fn run_replay(dir: &Path, session: Uuid, pace: Option<f64>) -> ExitCode {
    let wanted = session.to_string();
    let mut events = Vec::new();
    let of_session = |row: &[Cell]| str_at(row, SESSION_ID) == Some(wanted.as_str());
    if let Err(code) = each_event(dir, of_session, |e| events.push(e)) {
        return code;
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
    let recordings: Vec<_> = events
        .iter()
        .filter_map(|e| {
            let r = recording::RecordingRef::from_parameters(&e.command.as_ref()?.parameters)?;
            Some((e.command_id, r))
        })
        .collect();
    let mut code = ExitCode::SUCCESS;
    for (i, (command, r)) in recordings.iter().enumerate() {
        let of = events
            .iter()
            .find(|e| e.kind == EventKind::Command && e.event_id == command.unwrap_or_default());
        let text = of.and_then(|e| e.command.as_ref()?.text.as_deref()).unwrap_or("?");
        let _ = writeln!(
            out,
            "\n-- recording {} of {}: {text} ({})",
            i + 1,
            recordings.len(),
            r.path
        );
        if let Err(e) = r.check(dir) {
            let _ = writeln!(out, "-- not played: {e}");
            code = ExitCode::from(EXIT_BROKEN);
            continue;
        }
        let _ = out.flush();
        if let Err(e) = play(&r.file(dir).unwrap_or_default(), pace, &mut out) {
            let _ = writeln!(out, "\n-- cannot play it: {e}");
            code = ExitCode::from(EXIT_BROKEN);
            continue;
        }
        let cut = r.cut_at.map(|b| format!(" (cut at {b} bytes)")).unwrap_or_default();
        let _ = writeln!(out, "\n-- end of recording {}{cut}", i + 1);
    }
    code
}

/// Writes an asciicast v2 file's output events to `out`, waiting between
/// them (scaled by `pace`) unless `pace` is `None`; markers are shown as
/// lines of their own.
fn play(file: &Path, pace: Option<f64>, out: &mut impl Write) -> Result<(), String> {
    use std::io::BufRead as _;
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| e.to_string())?);
    let mut lines = reader.lines();
    let _header = lines.next().ok_or("empty recording")?.map_err(|e| e.to_string())?;
    let mut at = 0.0_f64;
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let event: (f64, String, String) = serde_json::from_str(&line).map_err(|e| format!("event {}: {e}", n + 1))?;
        let (time, code, data) = event;
        if let Some(speed) = pace.filter(|s| *s > 0.0)
            && time > at
        {
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs_f64(((time - at) / speed).min(60.0)));
        }
        at = at.max(time);
        let written = match code.as_str() {
            "o" => out.write_all(data.as_bytes()),
            "m" => writeln!(out, "\n-- {data}"),
            _ => Ok(()),
        };
        written.map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
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
