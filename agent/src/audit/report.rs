//! `loopgate audit report`: the periodic evidence an auditor asks for —
//! who did what against which target, what was refused, what was held and
//! who approved it — summarised from the trail itself, as text and as one
//! self-contained HTML page (inline SVG charts, no scripts, nothing fetched).
//!
//! The report holds only what the trail holds: command texts are the
//! recorded (normalized) texts, so no PHI reaches it.
use super::Event;
use super::event::{EventKind, Verdict};
use super::layout::rfc3339;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Refusals and approvals listed one by one, newest first; older ones are
/// counted in the tallies only.
const LISTED: usize = 50;
/// Recorded command texts are cut to this many characters in the listings.
const TEXT_CHARS: usize = 160;
const DAY_US: i64 = 86_400_000_000;

/// `7d`, `12h`, `30m`, `2w`, `90s`: how far back a report reaches.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("--since {text:?}: expected a number and a unit, e.g. 7d"))?;
    let unit_us: i64 = match unit {
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" | "" => DAY_US,
        "w" => 7 * DAY_US,
        _ => return Err(format!("--since {text:?}: the unit is one of s, m, h, d, w")),
    };
    n.checked_mul(unit_us)
        .filter(|us| *us > 0)
        .ok_or_else(|| format!("--since {text:?}: out of range"))
}

/// What one principal did against one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub sessions: u64,
    pub commands: u64,
    pub allowed: u64,
    pub blocked: u64,
    pub held: u64,
    pub approved: u64,
    pub denied: u64,
    /// Holds that timed out or were cancelled undecided.
    pub unresolved: u64,
    /// Connections refused before any command (kernel or proxy).
    pub refused_connections: u64,
    pub masked_values: u64,
}

/// The per-principal table's columns, in both renderings.
const COLUMNS: [&str; 10] = [
    "principal",
    "target",
    "sessions",
    "commands",
    "blocked",
    "held",
    "approved",
    "denied",
    "refused",
    "masked",
];
/// Text widths of the count columns.
const WIDTHS: [usize; 8] = [8, 8, 7, 5, 8, 6, 7, 8];

impl Tally {
    /// The counts in [`COLUMNS`] order.
    fn counts(&self) -> [u64; 8] {
        [
            self.sessions,
            self.commands,
            self.blocked,
            self.held,
            self.approved,
            self.denied,
            self.refused_connections,
            self.masked_values,
        ]
    }

    fn add(&mut self, other: &Tally) {
        self.sessions += other.sessions;
        self.commands += other.commands;
        self.allowed += other.allowed;
        self.blocked += other.blocked;
        self.held += other.held;
        self.approved += other.approved;
        self.denied += other.denied;
        self.unresolved += other.unresolved;
        self.refused_connections += other.refused_connections;
        self.masked_values += other.masked_values;
    }
}

/// One refused command or connection, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub time_us: i64,
    pub actor: String,
    pub target: String,
    pub rule: String,
    pub what: String,
}

/// One ended approval request, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub time_us: i64,
    pub approval_id: String,
    pub requester: String,
    pub target: String,
    pub verdict: Verdict,
    pub approver: String,
    pub wait_us: Option<u64>,
}

/// The report over a window of the trail; build it with [`Report::new`] and
/// feed it events in chain order.
#[derive(Debug)]
pub struct Report {
    pub since_us: i64,
    pub until_us: i64,
    pub events: u64,
    /// By (principal, target).
    pub tallies: BTreeMap<(String, String), Tally>,
    /// By day (UTC, `YYYY-MM-DD`): commands and refusals.
    pub days: BTreeMap<String, (u64, u64)>,
    pub refusals: Vec<Refusal>,
    pub resolutions: Vec<Resolution>,
}

impl Report {
    pub fn new(since_us: i64, until_us: i64) -> Self {
        Report {
            since_us,
            until_us,
            events: 0,
            tallies: BTreeMap::new(),
            days: BTreeMap::new(),
            refusals: Vec::new(),
            resolutions: Vec::new(),
        }
    }

    /// Counts one event if it falls in the window.
    pub fn add(&mut self, e: &Event) {
        if e.time_us < self.since_us || e.time_us > self.until_us {
            return;
        }
        self.events += 1;
        // The agent's own events (start, stop, reloads, retention) are about
        // no one; they count as events only.
        if !matches!(
            e.kind,
            EventKind::SessionStart | EventKind::Command | EventKind::CommandResult | EventKind::Approval
        ) {
            return;
        }
        let actor = actor(e);
        let target = e
            .target
            .as_ref()
            .map(|t| t.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "(no target)".to_owned());
        let verdict = e.decision.as_ref().map(|d| d.verdict);
        let day = rfc3339(e.time_us)[..10].to_owned();
        let tally = self.tallies.entry((actor.clone(), target.clone())).or_default();
        let mut refused = false;
        match e.kind {
            EventKind::SessionStart if verdict == Some(Verdict::Block) => {
                tally.refused_connections += 1;
                refused = true;
            }
            EventKind::SessionStart => tally.sessions += 1,
            EventKind::Command => {
                tally.commands += 1;
                self.days.entry(day.clone()).or_default().0 += 1;
                match verdict {
                    Some(Verdict::Allow) => tally.allowed += 1,
                    Some(Verdict::Block) => {
                        tally.blocked += 1;
                        refused = true;
                    }
                    Some(Verdict::Hold) => tally.held += 1,
                    _ => {}
                }
            }
            EventKind::CommandResult => {
                let masked = e.outcome.as_ref().and_then(|o| o.masked_count).unwrap_or(0);
                tally.masked_values += masked;
            }
            EventKind::Approval => {
                match verdict {
                    Some(Verdict::Approved) => tally.approved += 1,
                    Some(Verdict::Denied) => tally.denied += 1,
                    Some(Verdict::TimedOut | Verdict::Cancelled) => tally.unresolved += 1,
                    _ => return,
                }
                let d = e.decision.as_ref();
                self.resolutions.push(Resolution {
                    time_us: e.time_us,
                    approval_id: d.and_then(|d| d.approval_id.clone()).unwrap_or_default(),
                    requester: actor,
                    target,
                    verdict: verdict.unwrap_or(Verdict::Error),
                    approver: d.and_then(|d| d.approver.clone()).unwrap_or_else(|| "—".to_owned()),
                    wait_us: d.and_then(|d| d.wait_us),
                });
                keep_newest(&mut self.resolutions);
                return;
            }
            _ => {}
        }
        if refused {
            self.days.entry(day).or_default().1 += 1;
            let d = e.decision.as_ref();
            let what = e
                .command
                .as_ref()
                .and_then(|c| c.text.clone())
                .or_else(|| d.and_then(|d| d.reason.clone()))
                .unwrap_or_default();
            self.refusals.push(Refusal {
                time_us: e.time_us,
                actor,
                target,
                rule: d.and_then(|d| d.rule_id.clone()).unwrap_or_default(),
                what: cut(&what),
            });
            keep_newest(&mut self.refusals);
        }
    }

    /// Every principal and target together.
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for v in self.tallies.values() {
            t.add(v);
        }
        t
    }

    /// The text summary `loopgate audit report` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let total = self.total();
        let _ = writeln!(
            s,
            "audit report {} .. {}: {} events",
            rfc3339(self.since_us),
            rfc3339(self.until_us),
            self.events
        );
        let _ = writeln!(
            s,
            "{} sessions, {} commands ({} allowed, {} blocked, {} held: {} approved, {} denied, {} unresolved), {} connections refused, {} values masked\n",
            total.sessions,
            total.commands,
            total.allowed,
            total.blocked,
            total.held,
            total.approved,
            total.denied,
            total.unresolved,
            total.refused_connections,
            total.masked_values
        );
        let _ = write!(s, "{:<28} {:<16}", COLUMNS[0], COLUMNS[1]);
        for (name, width) in COLUMNS[2..].iter().zip(WIDTHS) {
            let _ = write!(s, " {name:>width$}");
        }
        s.push('\n');
        for ((who, target), t) in &self.tallies {
            let _ = write!(s, "{who:<28} {target:<16}");
            for (n, width) in t.counts().iter().zip(WIDTHS) {
                let _ = write!(s, " {n:>width$}");
            }
            s.push('\n');
        }
        if !self.refusals.is_empty() {
            let _ = writeln!(s, "\nrefusals (newest first, at most {LISTED}):");
            for r in self.refusals.iter().rev() {
                let _ = writeln!(
                    s,
                    "  {} {} on {} [{}] {}",
                    rfc3339(r.time_us),
                    r.actor,
                    r.target,
                    r.rule,
                    r.what
                );
            }
        }
        if !self.resolutions.is_empty() {
            let _ = writeln!(s, "\napprovals (newest first, at most {LISTED}):");
            for a in self.resolutions.iter().rev() {
                let _ = writeln!(
                    s,
                    "  {} {} {} by {} for {} on {}{}",
                    rfc3339(a.time_us),
                    a.approval_id,
                    a.verdict.as_str(),
                    a.approver,
                    a.requester,
                    a.target,
                    a.wait_us.map(|w| format!(" after {}", seconds(w))).unwrap_or_default()
                );
            }
        }
        s
    }

    /// One HTML page: the totals, a chart per day, the table and the lists.
    pub fn html(&self) -> String {
        let total = self.total();
        let mut s = String::with_capacity(16 * 1024);
        s.push_str(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>loopgate audit report</title><style>\
             body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
             table{border-collapse:collapse;margin:1em 0}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}\
             th,td:first-child,td.l{text-align:left}.cards{display:flex;gap:1em;flex-wrap:wrap}\
             .card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}.card b{display:block;font-size:1.6em}\
             code{font-size:12px}</style></head><body>",
        );
        let _ = write!(
            s,
            "<h1>Audit report</h1><p>{} to {} — {} events from the hash-chained trail.</p><div class=\"cards\">",
            rfc3339(self.since_us),
            rfc3339(self.until_us),
            self.events
        );
        for (label, n) in [
            ("sessions", total.sessions),
            ("commands", total.commands),
            ("blocked", total.blocked),
            ("held", total.held),
            ("approved", total.approved),
            ("denied", total.denied),
            ("connections refused", total.refused_connections),
            ("values masked", total.masked_values),
        ] {
            let _ = write!(s, "<div class=\"card\"><b>{n}</b>{label}</div>");
        }
        s.push_str("</div><h2>Commands and refusals per day</h2><p>Grey: commands; red: refused commands and connections (UTC days).</p>");
        s.push_str(&self.chart());
        s.push_str("<h2>By principal and target</h2><table><tr>");
        for name in COLUMNS {
            let _ = write!(s, "<th>{name}</th>");
        }
        s.push_str("</tr>");
        for ((who, target), t) in &self.tallies {
            let _ = write!(s, "<tr><td>{}</td><td class=\"l\">{}</td>", escape(who), escape(target));
            for n in t.counts() {
                let _ = write!(s, "<td>{n}</td>");
            }
            s.push_str("</tr>");
        }
        s.push_str("</table><h2>Refusals</h2><table><tr><th>time</th><th>principal</th><th>target</th><th>rule</th><th>command or reason</th></tr>");
        for r in self.refusals.iter().rev() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\"><code>{}</code></td></tr>",
                rfc3339(r.time_us),
                escape(&r.actor),
                escape(&r.target),
                escape(&r.rule),
                escape(&r.what)
            );
        }
        s.push_str("</table><h2>Approvals</h2><table><tr><th>time</th><th>request</th><th>outcome</th><th>approver</th><th>requester</th><th>target</th><th>waited</th></tr>");
        for a in self.resolutions.iter().rev() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td></tr>",
                rfc3339(a.time_us),
                escape(&a.approval_id),
                a.verdict.as_str(),
                escape(&a.approver),
                escape(&a.requester),
                escape(&a.target),
                a.wait_us.map(seconds).unwrap_or_default()
            );
        }
        s.push_str("</table></body></html>\n");
        s
    }

    /// Bars per day: commands (grey) and refusals (red), scaled to the
    /// busiest day.
    fn chart(&self) -> String {
        const BAR: usize = 28;
        const HEIGHT: u64 = 120;
        let max = self.days.values().map(|(c, r)| (*c).max(*r)).max().unwrap_or(0).max(1);
        let width = (self.days.len() * BAR).max(BAR) + 20;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"commands and refusals per day\">",
            HEIGHT + 40
        );
        for (i, (day, (commands, refusals))) in self.days.iter().enumerate() {
            let x = 10 + i * BAR;
            for (offset, n, colour) in [(0, *commands, "#999"), (12, *refusals, "#c33")] {
                let h = n * HEIGHT / max;
                let _ = write!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"11\" height=\"{h}\" fill=\"{colour}\"><title>{day}: {n}</title></rect>",
                    x + offset,
                    10 + HEIGHT - h
                );
            }
            let _ = write!(
                s,
                "<text x=\"{x}\" y=\"{}\" font-size=\"9\">{}</text>",
                HEIGHT + 28,
                &day[5..]
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// Who an event is about: the authenticated principal, else the kernel's
/// word for the process (a refused connection has no principal).
fn actor(e: &Event) -> String {
    if let Some(subject) = e.principal.as_ref().and_then(|p| p.subject.clone()) {
        return subject;
    }
    match e.process.as_deref() {
        Some(p) => match (&p.user, p.uid) {
            (Some(user), _) => format!("unix:{user}"),
            (None, Some(uid)) => format!("unix:{uid}"),
            (None, None) => "unknown".to_owned(),
        },
        None => "unknown".to_owned(),
    }
}

fn seconds(us: u64) -> String {
    format!("{:.1}s", us as f64 / 1e6)
}

fn keep_newest<T>(list: &mut Vec<T>) {
    if list.len() > LISTED {
        list.remove(0);
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(TEXT_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{CommandInfo, Decision, Outcome, Principal, TargetRef};
    use std::sync::Arc;

    fn event(kind: EventKind, who: &str, time_us: i64, verdict: Option<Verdict>) -> Event {
        let mut e = Event::new(kind);
        e.time_us = time_us;
        e.principal = Some(Arc::new(Principal {
            subject: Some(who.to_owned()),
            ..Principal::default()
        }));
        e.target = Some(Arc::new(TargetRef {
            name: "clinic".into(),
            protocol: "postgres".into(),
            address: "127.0.0.1:5432".into(),
        }));
        e.decision = verdict.map(|v| Decision::new(v).rule("hipaa.drop"));
        e
    }

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("7d"), Ok(7 * DAY_US));
        assert_eq!(parse_since("12h"), Ok(12 * 3_600_000_000));
        assert_eq!(parse_since("2w"), Ok(14 * DAY_US));
        assert!(parse_since("d").is_err());
        assert!(parse_since("7y").unwrap_err().contains("s, m, h, d, w"));
        assert!(parse_since("0d").is_err());
        assert!(parse_since("99999999999999999w").is_err());
    }

    #[test]
    fn counts_commands_refusals_and_approvals_per_principal_and_target() {
        let day = 20_000 * DAY_US;
        let mut r = Report::new(day, day + DAY_US);
        r.add(&event(
            EventKind::SessionStart,
            "unix:etl",
            day + 1,
            Some(Verdict::Allow),
        ));
        r.add(&event(EventKind::Command, "unix:etl", day + 2, Some(Verdict::Allow)));
        let mut result = event(EventKind::CommandResult, "unix:etl", day + 3, None);
        result.outcome = Some(Outcome {
            masked_count: Some(12),
            ..Outcome::default()
        });
        r.add(&result);
        let mut drop = event(EventKind::Command, "unix:etl", day + 4, Some(Verdict::Block));
        drop.command = Some(CommandInfo {
            text: Some("DROP TABLE <patients>".into()),
            ..CommandInfo::default()
        });
        r.add(&drop);
        r.add(&event(EventKind::Command, "unix:etl", day + 5, Some(Verdict::Hold)));
        let mut approved = event(EventKind::Approval, "unix:etl", day + 6, Some(Verdict::Approved));
        if let Some(d) = approved.decision.as_mut() {
            d.approver = Some("unix:alice".into());
            d.approval_id = Some("a1".into());
            d.wait_us = Some(5_000_000);
        }
        r.add(&approved);
        r.add(&event(EventKind::Approval, "unix:etl", day + 7, Some(Verdict::Hold)));
        // Outside the window: not counted.
        r.add(&event(EventKind::Command, "unix:etl", day - 1, Some(Verdict::Block)));

        let t = &r.tallies[&("unix:etl".to_owned(), "clinic".to_owned())];
        assert_eq!(
            (t.sessions, t.commands, t.allowed, t.blocked, t.held, t.approved),
            (1, 3, 1, 1, 1, 1)
        );
        assert_eq!(t.masked_values, 12);
        assert_eq!(r.refusals.len(), 1);
        assert_eq!(r.refusals[0].what, "DROP TABLE <patients>");
        assert_eq!(r.resolutions[0].approver, "unix:alice");
        let text = r.text();
        assert!(
            text.contains("3 commands (1 allowed, 1 blocked, 1 held: 1 approved"),
            "{text}"
        );
        assert!(
            text.contains("a1 approved by unix:alice for unix:etl on clinic after 5.0s"),
            "{text}"
        );
        assert_eq!(r.days.values().next(), Some(&(3, 1)));
    }

    #[test]
    fn the_page_escapes_what_the_trail_holds() {
        let mut r = Report::new(0, i64::MAX);
        let mut e = event(EventKind::Command, "<script>x</script>", 1, Some(Verdict::Block));
        e.command = Some(CommandInfo {
            text: Some("SELECT '<img src=x>'".into()),
            ..CommandInfo::default()
        });
        r.add(&e);
        let page = r.html();
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("<svg"));
    }

    #[test]
    fn refused_connections_are_attributed_to_the_process() {
        let mut r = Report::new(0, i64::MAX);
        let mut e = Event::new(EventKind::SessionStart);
        e.time_us = 5;
        e.process = Some(Arc::new(crate::audit::event::ProcessInfo {
            uid: Some(65534),
            user: Some("nobody".into()),
            ..Default::default()
        }));
        e.decision = Some(
            Decision::new(Verdict::Block)
                .rule("intercept.egress")
                .reason("not a target"),
        );
        r.add(&e);
        let t = &r.tallies[&("unix:nobody".to_owned(), "(no target)".to_owned())];
        assert_eq!(t.refused_connections, 1);
        assert_eq!(r.refusals[0].what, "not a target");
    }
}
