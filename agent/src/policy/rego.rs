//! Rego policies evaluated in-process with regorus.
//!
//! A policy directory holds `.rego` modules and `.json` data documents (each
//! merged at the root of `data`, as `opa eval -d FILE.json` does). The
//! decision is the value of [`ENTRY_POINT`]; `policies/README.md` documents
//! its shape. `*_test.rego` files are loaded only by [`run_tests`].
//!
//! regorus engines are `Send` but not `Sync`, so [`RegoPolicy`] keeps a
//! prepared template and a pool of clones: a decision borrows an idle engine
//! (or clones the template when all are busy) and gives it back. Decisions
//! are cached by who asks, from where, to which target and the statement's
//! shape, so a repeated statement never reaches the interpreter.
use std::{
    collections::hash_map::DefaultHasher,
    fmt,
    hash::{Hash, Hasher},
    num::NonZeroUsize,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lru::LruCache;
use regorus::{Engine, Value};
use serde::Deserialize;

use super::{Hold, PolicyDecision, PolicyEngine, PolicyInput};
use crate::mask::MaskRule;

/// The rule whose value is the decision.
pub const ENTRY_POINT: &str = "data.loopgate.decision";
/// Rule id of the Deny returned when the policy cannot decide.
pub const POLICY_ERROR_RULE: &str = "policy.error";
/// Default number of cached decisions.
pub const DEFAULT_CACHE_ENTRIES: usize = 16_384;
/// Default lifetime of a cached decision: bounds how stale a time-dependent
/// decision can get even when the policy forgets `"cache": false`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// Cache shards: one lock per shard keeps threads deciding different
/// statements from queueing on one mutex.
const SHARDS: usize = 16;
/// Wall-clock bound on one evaluation; a policy that loops is an error.
/// Generous: the clock runs while the thread is preempted, and a loaded
/// 2-core host stretched debug-build evaluations past 250 ms.
const EVAL_LIMIT: Duration = Duration::from_secs(1);
/// The bound on compiling a directory (every module evaluated once, with
/// the pack's tests when they run): still an end to a policy that loops,
/// but above what a debug build on a busy 2-core host takes for the whole
/// pack (seen just over 1 s).
const COMPILE_LIMIT: Duration = Duration::from_secs(20);

fn timer(limit: Duration) -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: std::num::NonZeroU32::MIN,
    }
}

/// Why a policy directory could not be loaded. Every variant names the file
/// (and the line where the parser knows it).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A `.rego` file does not parse; regorus' message starts with
    /// `FILE:LINE:COLUMN`.
    #[error("{}: {message}", path.display())]
    Rego { path: PathBuf, message: String },
    #[error("{}:{line}:{column}: invalid JSON: {message}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The modules parse but do not compile together (unknown reference,
    /// conflicting rules); the message names file and line.
    #[error("{}: policy does not compile: {message}", dir.display())]
    Compile { dir: PathBuf, message: String },
    #[error("{}: no .rego files", dir.display())]
    Empty { dir: PathBuf },
    #[error("{}: no rule defines {ENTRY_POINT}", dir.display())]
    NoEntryPoint { dir: PathBuf },
}

/// Tuning for [`RegoPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegoPolicyConfig {
    /// Cached decisions; 0 turns the cache off.
    pub cache_entries: usize,
    pub cache_ttl: Duration,
}

impl Default for RegoPolicyConfig {
    fn default() -> Self {
        RegoPolicyConfig {
            cache_entries: DEFAULT_CACHE_ENTRIES,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }
}

/// What was loaded, for `loopgate check` and reload logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub dir: PathBuf,
    /// Modules loaded (tests only by [`run_tests`]), in load order.
    pub modules: Vec<PathBuf>,
    pub data_files: Vec<PathBuf>,
    /// Packages, `data.` prefixed, sorted and deduplicated.
    pub packages: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} modules, {} data files, packages {}",
            self.dir.display(),
            self.modules.len(),
            self.data_files.len(),
            self.packages.join(", ")
        )
    }
}

/// A policy directory's files, sorted by name so load order is stable.
struct Files {
    rego: Vec<PathBuf>,
    tests: Vec<PathBuf>,
    data: Vec<PathBuf>,
}

fn list(dir: &Path) -> Result<Files, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Files {
        rego: Vec::new(),
        tests: Vec::new(),
        data: Vec::new(),
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // Editors' temporaries and dotfiles are never policy.
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with("_test.rego") {
            files.tests.push(path);
        } else if name.ends_with(".rego") {
            files.rego.push(path);
        } else if name.ends_with(".json") {
            files.data.push(path);
        }
    }
    Ok(files)
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// An engine with the directory's modules and data, compiled (regorus
/// compiles lazily; the first evaluation surfaces reference errors, so it
/// happens here rather than on the first statement).
/// Also returns each module's package, in module order.
fn prepare(dir: &Path, with_tests: bool) -> Result<(Engine, Summary, Vec<String>), PolicyError> {
    let files = list(dir)?;
    let mut engine = Engine::new();
    engine.set_execution_timer_config(timer(COMPILE_LIMIT));
    let mut summary = Summary {
        dir: dir.to_path_buf(),
        ..Summary::default()
    };
    let modules: Vec<&PathBuf> = if with_tests {
        files.rego.iter().chain(&files.tests).collect()
    } else {
        files.rego.iter().collect()
    };
    if files.rego.is_empty() && files.tests.is_empty() {
        return Err(PolicyError::Empty { dir: dir.to_path_buf() });
    }
    for path in modules {
        let text = read(path)?;
        let package = engine
            .add_policy(path.display().to_string(), text)
            .map_err(|e| PolicyError::Rego {
                path: path.clone(),
                message: e.to_string(),
            })?;
        summary.modules.push(path.clone());
        summary.packages.push(package);
    }
    let module_packages = summary.packages.clone();
    summary.packages.sort();
    summary.packages.dedup();
    for path in &files.data {
        let text = read(path)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| PolicyError::Data {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if !json.is_object() {
            return Err(PolicyError::Data {
                path: path.clone(),
                line: 1,
                column: 1,
                message: "a data file must hold a JSON object (it is merged at the root of data)".into(),
            });
        }
        let value = Value::from_json_str(&text).map_err(|e| PolicyError::Data {
            path: path.clone(),
            line: 1,
            column: 1,
            message: e.to_string(),
        })?;
        engine.add_data(value).map_err(|e| PolicyError::Data {
            path: path.clone(),
            line: 1,
            column: 1,
            message: format!("conflicts with data already loaded: {e}"),
        })?;
        summary.data_files.push(path.clone());
    }
    // Compile everything now: an unknown reference in any module fails here.
    engine.set_input(Value::new_object());
    engine.eval_modules(false).map_err(|e| PolicyError::Compile {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    engine.set_execution_timer_config(timer(EVAL_LIMIT));
    Ok((engine, summary, module_packages))
}

/// A Rego policy pack deciding statements. Cheap to share (`Send + Sync`).
pub struct RegoPolicy {
    summary: Summary,
    template: Mutex<Engine>,
    idle: Mutex<Vec<Engine>>,
    cache: DecisionCache,
}

impl fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegoPolicy")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Locks ignoring poison: every guarded value stays consistent across a
/// panic (engines that panicked are dropped, not returned).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegoPolicy {
    /// Loads every `.rego` (except `*_test.rego`) and `.json` file of `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<RegoPolicy, PolicyError> {
        Self::load_with(dir, &RegoPolicyConfig::default())
    }

    pub fn load_with(dir: impl AsRef<Path>, config: &RegoPolicyConfig) -> Result<RegoPolicy, PolicyError> {
        let dir = dir.as_ref();
        let (engine, summary, packages) = prepare(dir, false)?;
        // Without the entry point every statement would be denied: refuse the pack.
        let declared = summary.modules.iter().zip(&packages).any(|(path, package)| {
            package == "data.loopgate"
                && engine
                    .has_declared_rule_rooted_at(&path.display().to_string(), "decision")
                    .unwrap_or(false)
        });
        if !declared {
            return Err(PolicyError::NoEntryPoint { dir: dir.to_path_buf() });
        }
        Ok(RegoPolicy {
            summary,
            template: Mutex::new(engine),
            idle: Mutex::new(Vec::new()),
            cache: DecisionCache::new(config),
        })
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Decisions served from the cache and evaluated, since load.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Evaluates without the cache; `Err` carries a message free of input values.
    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<Evaluated, String> {
        let json = serde_json::to_string(input).map_err(|e| format!("input does not serialize: {e}"))?;
        let input = Value::from_json_str(&json).map_err(|e| format!("input does not convert: {e}"))?;
        let mut engine = lock(&self.idle).pop().unwrap_or_else(|| lock(&self.template).clone());
        // A panic inside regorus must not take the session down: fail closed
        // and drop the engine (its state is unknown).
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.set_input(input);
            engine.eval_rule(ENTRY_POINT.to_string())
        }));
        let value = match result {
            Ok(Ok(value)) => {
                lock(&self.idle).push(engine);
                value
            }
            Ok(Err(e)) => {
                lock(&self.idle).push(engine);
                return Err(e.to_string());
            }
            Err(_) => return Err("the policy engine panicked".to_string()),
        };
        if value == Value::Undefined {
            return Err(format!("{ENTRY_POINT} is undefined for this input"));
        }
        let json = value
            .to_json_str()
            .map_err(|e| format!("decision does not serialize: {e}"))?;
        let raw: RawDecision = serde_json::from_str(&json).map_err(|e| format!("malformed decision: {e}"))?;
        raw.into_decision()
    }
}

impl PolicyEngine for RegoPolicy {
    fn decide(&self, input: &PolicyInput<'_>) -> PolicyDecision {
        let key = cache_key(input);
        if let Some(key) = &key
            && let Some(hit) = self.cache.get(key)
        {
            return hit;
        }
        match self.evaluate(input) {
            Ok(Evaluated { decision, cacheable }) => {
                if let (Some(key), true) = (key, cacheable) {
                    self.cache.put(key, decision.clone());
                }
                decision
            }
            Err(message) => {
                tracing::warn!(
                    rule_id = POLICY_ERROR_RULE,
                    action = %input.action.log_name(),
                    target = %input.target.name,
                    error = %redact_quoted(&message),
                    "policy evaluation failed; statement denied"
                );
                PolicyDecision::deny(POLICY_ERROR_RULE, "the policy could not decide this statement")
            }
        }
    }
}

/// First line of an error with quoted text replaced by `"?"`: regorus
/// messages can echo values from the input, which may be PHI.
fn redact_quoted(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let mut out = String::with_capacity(line.len().min(300));
    let mut quoted = false;
    for c in line.chars().take(300) {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"?\"");
                quoted = true;
            }
            ('"', true) => quoted = false,
            (c, false) => out.push(c),
            (_, true) => {}
        }
    }
    out
}

struct Evaluated {
    decision: PolicyDecision,
    cacheable: bool,
}

/// The entry point's value, as the README documents it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecision {
    decision: String,
    #[serde(default)]
    rule_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    mask: Vec<MaskRule>,
    #[serde(default)]
    approval: Option<RawApproval>,
    /// `false` for decisions that depend on something outside the cache key
    /// (`input.time`, `input.session.id`, `input.process.pid`).
    #[serde(default = "yes")]
    cache: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    group: String,
    #[serde(default = "one")]
    min_approvals: u32,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    row_threshold: Option<u64>,
}

fn one() -> u32 {
    1
}

fn default_timeout() -> u64 {
    900
}

impl RawDecision {
    fn into_decision(self) -> Result<Evaluated, String> {
        let named = |what: &str| -> Result<(String, String), String> {
            let rule_id = self.rule_id.clone().filter(|r| !r.is_empty());
            let reason = self.reason.clone().filter(|r| !r.is_empty());
            match (rule_id, reason) {
                (Some(r), Some(why)) => Ok((r, why)),
                _ => Err(format!("a {what} decision needs a rule_id and a reason")),
            }
        };
        let decision = match self.decision.as_str() {
            "allow" => PolicyDecision::Allow { mask: self.mask },
            "deny" => {
                let (rule_id, reason) = named("deny")?;
                PolicyDecision::Deny { rule_id, reason }
            }
            "hold" => {
                let (rule_id, reason) = named("hold")?;
                let Some(a) = self.approval else {
                    return Err("a hold decision needs an approval object".into());
                };
                if a.group.is_empty() || a.min_approvals == 0 || a.timeout_secs == 0 {
                    return Err("approval needs a group, min_approvals >= 1 and timeout_secs >= 1".into());
                }
                PolicyDecision::Hold(Hold {
                    rule_id,
                    reason,
                    approver_group: a.group,
                    min_approvals: a.min_approvals,
                    timeout: Duration::from_secs(a.timeout_secs),
                    row_threshold: a.row_threshold,
                    mask: self.mask,
                })
            }
            other => return Err(format!("decision must be allow, deny or hold, not {other:?}")),
        };
        Ok(Evaluated {
            decision,
            cacheable: self.cache,
        })
    }
}

/// Everything the decision may depend on, length-prefixed into one string
/// (one allocation, no ambiguity between fields): who, from which process,
/// to which target, and the action's own key ([`Action::cache_key`]).
fn cache_key(input: &PolicyInput<'_>) -> Option<String> {
    let p = input.principal;
    let proc = input.process;
    let t = input.target;
    let db = input.session.and_then(|s| s.database.as_deref());
    let mut key = String::with_capacity(
        128 + p.subject.len()
            + p.groups.iter().map(|g| g.len() + 4).sum::<usize>()
            + input.statement().map_or(0, |s| s.normalized_text.len())
            + proc.exe.as_deref().map_or(0, str::len)
            + proc.unit.as_deref().map_or(0, str::len),
    );
    let mut field = |s: &str| {
        key.push_str(&s.len().to_string());
        key.push(':');
        key.push_str(s);
    };
    field(&p.subject);
    field(&p.groups.len().to_string());
    for g in &p.groups {
        field(g);
    }
    field(&proc.uid.to_string());
    field(proc.unit.as_deref().unwrap_or("\u{0}"));
    field(proc.exe.as_deref().unwrap_or("\u{0}"));
    field(&proc.comm);
    field(&t.name);
    field(&t.protocol);
    field(&t.identity);
    field(db.unwrap_or("\u{0}"));
    input.action.cache_key(&mut field)?;
    Some(key)
}

/// Bounded, sharded LRU of decisions with a time-to-live.
struct DecisionCache {
    shards: Vec<Mutex<LruCache<String, (Instant, PolicyDecision)>>>,
    ttl: Duration,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl DecisionCache {
    fn new(config: &RegoPolicyConfig) -> Self {
        let per_shard = config.cache_entries.div_ceil(SHARDS);
        let shards = match NonZeroUsize::new(per_shard) {
            Some(n) => (0..SHARDS).map(|_| Mutex::new(LruCache::new(n))).collect(),
            None => Vec::new(),
        };
        DecisionCache {
            shards,
            ttl: config.cache_ttl,
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> Option<&Mutex<LruCache<String, (Instant, PolicyDecision)>>> {
        if self.shards.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.shards.get(h.finish() as usize % self.shards.len())
    }

    fn get(&self, key: &str) -> Option<PolicyDecision> {
        use std::sync::atomic::Ordering::Relaxed;
        let shard = self.shard(key)?;
        let mut shard = lock(shard);
        let hit = match shard.get(key) {
            Some((at, decision)) if at.elapsed() < self.ttl => Some(decision.clone()),
            Some(_) => {
                shard.pop(key);
                None
            }
            None => None,
        };
        drop(shard);
        match hit {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        hit
    }

    fn put(&self, key: String, decision: PolicyDecision) {
        if let Some(shard) = self.shard(&key) {
            lock(shard).put(key, (Instant::now(), decision));
        }
    }

    fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }
}

/// One `test_*` rule's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    /// `data.package.test_name`.
    pub name: String,
    pub passed: bool,
    /// Why it failed: `undefined`, the value, or the evaluation error.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestReport {
    pub outcomes: Vec<TestOutcome>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }
}

/// Loads `dir` for `loopgate check`: everything a running agent would load.
pub fn check(dir: impl AsRef<Path>) -> Result<Summary, PolicyError> {
    RegoPolicy::load(dir).map(|p| p.summary)
}

/// Runs every `test_*` rule of every module in `dir` (tests included). A
/// test passes when its value is `true`; each runs on a fresh clone of the
/// compiled engine, so one test's state cannot leak into another.
pub fn run_tests(dir: impl AsRef<Path>) -> Result<TestReport, PolicyError> {
    let dir = dir.as_ref();
    let (engine, summary, packages) = prepare(dir, true)?;
    let mut names = Vec::new();
    for (path, package) in summary.modules.iter().zip(packages) {
        for rule in test_rules(&read(path)?) {
            names.push(format!("{package}.{rule}"));
        }
    }
    names.sort();
    names.dedup();
    let mut report = TestReport::default();
    for name in names {
        let mut e = engine.clone();
        e.set_input(Value::new_object());
        let result = catch_unwind(AssertUnwindSafe(|| e.eval_rule(name.clone())));
        let (passed, detail) = match result {
            Ok(Ok(Value::Bool(true))) => (true, None),
            Ok(Ok(Value::Undefined)) => (false, Some("undefined".to_string())),
            Ok(Ok(v)) => (false, Some(v.to_json_str().unwrap_or_else(|_| "?".into()))),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (false, Some("the policy engine panicked".into())),
        };
        report.outcomes.push(TestOutcome { name, passed, detail });
    }
    Ok(report)
}

/// Names of rules written `test_...` at the start of a line (how `opa fmt`
/// lays them out).
fn test_rules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rest = line[name.len()..].trim_start();
            let head = rest.is_empty() || rest.starts_with("if") || rest.starts_with('{') || rest.starts_with(":=");
            (name.starts_with("test_") && head).then_some(name)
        })
        .collect()
}

#[cfg(test)]
#[path = "rego_tests.rs"]
mod tests;
