//! The policy in force, replaceable while sessions decide with it.
//!
//! Sessions hold a [`PolicyHandle`] and call it like any engine; SIGHUP and
//! [`watch`] call [`PolicyHandle::reload`]. A pack that fails to load never
//! replaces the one in force, so a typo in production keeps the last good
//! policy deciding (fail safe, not fail open or fail shut).
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use super::{PolicyDecision, PolicyEngine, PolicyError, PolicyInput, RegoPolicy, RegoPolicyConfig, Summary};

/// A swappable [`PolicyEngine`].
pub struct PolicyHandle {
    current: RwLock<Arc<dyn PolicyEngine>>,
    config: RegoPolicyConfig,
}

impl PolicyHandle {
    pub fn new(engine: Arc<dyn PolicyEngine>) -> Self {
        Self::with_config(engine, RegoPolicyConfig::default())
    }

    /// A handle deciding with the Rego pack in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, PolicyError> {
        Ok(Self::new(Arc::new(RegoPolicy::load(dir)?)))
    }

    /// `config` applies to packs loaded by [`PolicyHandle::reload`].
    pub fn with_config(engine: Arc<dyn PolicyEngine>, config: RegoPolicyConfig) -> Self {
        PolicyHandle {
            current: RwLock::new(engine),
            config,
        }
    }

    /// The engine in force; statements of one batch can keep using it.
    pub fn current(&self) -> Arc<dyn PolicyEngine> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `engine` in force.
    pub fn replace(&self, engine: Arc<dyn PolicyEngine>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = engine;
    }

    /// Loads the pack in `dir` and puts it in force. On error the policy in
    /// force stays; the caller logs and audits the error. The new pack
    /// starts with an empty decision cache, so no decision of the old one
    /// survives.
    pub fn reload(&self, dir: impl AsRef<Path>) -> Result<Summary, PolicyError> {
        let policy = RegoPolicy::load_with(dir, &self.config)?;
        let summary = policy.summary().clone();
        self.replace(Arc::new(policy));
        tracing::info!(dir = %summary.dir.display(), modules = summary.modules.len(), "policy loaded");
        Ok(summary)
    }
}

impl PolicyEngine for PolicyHandle {
    /// The invariants first (see `policy::invariants`), then the engine in force.
    fn decide(&self, input: &PolicyInput<'_>) -> PolicyDecision {
        super::invariants::check(input).unwrap_or_else(|| self.current().decide(input))
    }
}

/// Stops the watcher thread when dropped.
pub struct PolicyWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Name, modification time and length of each policy file: a change in any
/// means the pack changed. Missing directory → empty (the reload reports it).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && (name.ends_with(".rego") || name.ends_with(".json"))
        })
        .map(|e| {
            let meta = e.metadata().ok();
            (
                e.path(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect();
    files.sort();
    files
}

/// Polls `dir` every `interval` (a second is plenty: policy edits are rare
/// and polling needs no inotify limits) and reloads `handle` when a
/// `.rego` or `.json` file is added, removed or changed. `on_reload` gets
/// every reload's result, to log and audit it.
pub fn watch(
    handle: Arc<PolicyHandle>,
    dir: PathBuf,
    interval: Duration,
    on_reload: impl Fn(Result<Summary, PolicyError>) + Send + 'static,
) -> PolicyWatcher {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            let mut last = snapshot(&dir);
            while !stopped.load(Ordering::Relaxed) {
                // Sleep in short steps so dropping the watcher is prompt.
                let mut slept = Duration::ZERO;
                while slept < interval && !stopped.load(Ordering::Relaxed) {
                    let step = (interval - slept).min(Duration::from_millis(50));
                    std::thread::sleep(step);
                    slept += step;
                }
                let now = snapshot(&dir);
                if now != last {
                    last = now;
                    on_reload(handle.reload(&dir));
                }
            }
        })
        .ok();
    PolicyWatcher { stop, thread }
}
