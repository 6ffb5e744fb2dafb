//! `[intercept]`: what interception attaches to and what the intercepted
//! processes may reach. The types live here, below `config`, so that
//! interception takes its inputs without knowing the rest of the agent's
//! configuration (`config` reads the table and builds a [`Plan`]).
use std::path::PathBuf;

use super::rules::Pattern;

#[derive(Clone, Debug)]
pub struct InterceptConfig {
    /// cgroup v2 paths relative to the cgroup2 mount.
    pub cgroups: Vec<String>,
    /// Intercepted connects go to 127.0.0.1 and [::1] at this port, which
    /// the kernel steers to the agent's own listeners alone.
    pub listen_port: u16,
    /// Directory under bpffs where programs' links and maps are pinned.
    pub pin_dir: PathBuf,
    /// What intercepted processes may reach besides the targets.
    pub egress: Egress,
    /// Refused destinations (`deny-listed` and `deny`).
    pub deny: Vec<Pattern>,
    /// Reachable destinations (`deny`, or exceptions to `deny`).
    pub allow: Vec<Pattern>,
    /// Unix socket paths refused (`unix:/path` entries of `deny`).
    pub deny_unix: Vec<String>,
    /// Unix socket paths reachable (`unix:/path` entries of `allow`).
    pub allow_unix: Vec<String>,
    /// Connections to targets that intercepted processes opened before the
    /// programs were attached.
    pub on_attach: OnAttach,
}

/// `[intercept] egress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Anything that is not a target is reached directly.
    Allow,
    /// Everything except the `deny` list (by default every target's port on
    /// any address: the same server's other addresses).
    DenyListed,
    /// Only the targets and the `allow` list.
    Deny,
}

impl Egress {
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Allow => "allow",
            Egress::DenyListed => "deny-listed",
            Egress::Deny => "deny",
        }
    }
}

/// `[intercept] on_attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAttach {
    /// Closed (the process gets ECONNABORTED) and recorded.
    Kill,
    /// Recorded and left open.
    Record,
}

/// What a target contributes to the kernel's rules: its addresses and
/// unix socket paths, by its index in the configuration.
#[derive(Clone, Debug)]
pub struct TargetMatch {
    pub name: String,
    pub addresses: Vec<Pattern>,
    pub unix: Vec<String>,
}

/// Everything interception needs: its settings and the targets in
/// configuration order (a rule's id is the index of its target).
#[derive(Clone, Debug)]
pub struct Plan {
    pub settings: InterceptConfig,
    pub targets: Vec<TargetMatch>,
}
