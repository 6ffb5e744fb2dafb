//! The agent's TOML configuration (`/etc/loopgate/agent.toml`).
//!
//! Parsing is two steps: serde reads the file into `raw` structs that keep
//! each value's position, then [`Config::from_toml`] validates and resolves
//! them. Every error names the key and the line, so an operator can fix the
//! file without guessing.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{approval::ApprovalsConfig, audit::AuditConfig, identity::IdentityConfig};

use crate::{
    identity::Mode,
    intercept::{
        Plan, TargetMatch,
        rules::{Addresses, Kind, Pattern, RuleTable},
    },
    mask::MaskConfig,
    policy::BuiltinPolicyConfig,
    protocols::{
        http::config::HttpSettings,
        postgres::config::PostgresSettings,
        ssh::config::{SshConfig, SshSettings},
    },
    sql::SqlConfig,
};

// `[intercept]` is interception's own table; config reads it.
pub use crate::intercept::settings::{Egress, InterceptConfig, OnAttach};

/// Where `loopgate run` looks for its config when none is named.
pub const DEFAULT_PATH: &str = "/etc/loopgate/agent.toml";

/// More session workers than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub intercept: InterceptConfig,
    pub audit: AuditConfig,
    pub control: ControlConfig,
    /// Held commands: the approvals socket, HTTP API and webhook.
    pub approvals: ApprovalsConfig,
    pub proxy: ProxyConfig,
    /// PHI masking of results and recorded text (all targets).
    pub mask: MaskConfig,
    /// SQL analysis (PostgreSQL targets).
    pub sql: SqlConfig,
    /// The built-in policy, used when no policy directory is configured.
    pub policy: BuiltinPolicyConfig,
    /// A Rego policy pack (`[policy] dir`); replaces the built-in policy.
    pub policy_dir: Option<PathBuf>,
    /// A signed policy bundle from object storage or HTTPS (`[policy.bundle]`).
    pub policy_bundle: Option<crate::policy::bundle::BundleConfig>,
    /// OIDC token validation (`[identity.oidc]`), for targets with
    /// `identity = "oidc"`.
    pub identity: Option<IdentityConfig>,
    pub tls: TlsConfig,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Where loopgate keeps its local CA (key root-only), which signs the
    /// certificates it shows clients that ask for TLS.
    pub ca_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Root-only unix socket for `loopgate status` and friends.
    pub socket: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long SIGTERM waits for live sessions before closing them.
    pub drain_timeout: Duration,
    /// How long an upstream connect may take.
    pub connect_timeout: Duration,
    /// Session worker threads (default: one per CPU the agent may use).
    pub workers: usize,
    /// Refused connections (the kernel's refusals, and connections to the
    /// port the kernel did not redirect) recorded one by one per second;
    /// beyond, one summary event counts the rest, so a flood cannot fill
    /// the trail.
    pub refusals_per_second: u32,
}

/// The protocol a target speaks, with that protocol's own settings (each
/// protocol module defines and validates its table): it picks the handler.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// Bytes passed through unchanged, counted and recorded per session.
    Tcp,
    /// PostgreSQL wire protocol: per-statement decisions, masking, audit.
    Postgres(Box<PostgresSettings>),
    /// SSH: per-request decisions (exec, shell, sftp, forwards), output
    /// masking, audit; loopgate is the clients' host CA.
    Ssh(Box<SshSettings>),
    /// HTTP (`https` or `http`): per-request decisions, JSON masking, audit.
    Http(Box<HttpSettings>),
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres(_) => "postgres",
            Protocol::Ssh(_) => "ssh",
            Protocol::Http(h) if h.tls => "https",
            Protocol::Http(_) => "http",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protected service whose connections are intercepted.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    /// How the target establishes who the caller is (protocols with
    /// commands; `process` for the rest).
    pub identity: Mode,
    /// The first address as written in the config: the server's name for
    /// TLS.
    pub address: String,
    /// Every address pattern of the target; a connect to any of them is
    /// intercepted.
    pub addresses: Vec<Pattern>,
    /// Unix socket paths the server listens on; connects to them are refused.
    pub unix: Vec<String>,
}

impl Target {
    /// The host part of `address` (a name or an IP), which a server
    /// certificate must match.
    pub fn host(&self) -> &str {
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(h, _)| h);
        match host.trim_start_matches('[').trim_end_matches(']') {
            "local" | "*" => "localhost",
            h => h.split('/').next().unwrap_or(h),
        }
    }

    /// Names and single addresses a client may have used to reach the
    /// target, for the certificate loopgate shows it.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.host().to_owned()];
        for pattern in &self.addresses {
            match &pattern.addresses {
                Addresses::Host(h) => names.push(h.clone()),
                Addresses::Local => {
                    names.extend(["localhost", "127.0.0.1", "::1"].map(str::to_owned));
                    names.extend(crate::intercept::rules::local_addresses().iter().map(IpAddr::to_string));
                }
                Addresses::Prefixes(prefixes) => names.extend(
                    prefixes
                        .iter()
                        .filter(|p| p.len == 128)
                        .map(|p| p.ip.to_ipv4_mapped().map_or(p.ip.to_string(), |v4| v4.to_string())),
                ),
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// A configuration error, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// What interception needs of this configuration: `[intercept]` and
    /// each target's addresses and unix paths, in target order.
    pub fn interception(&self) -> Plan {
        Plan {
            settings: self.intercept.clone(),
            targets: self
                .targets
                .iter()
                .map(|t| TargetMatch {
                    name: t.name.clone(),
                    addresses: t.addresses.clone(),
                    unix: t.unix.clone(),
                })
                .collect(),
        }
    }

    /// Loads `path`; a missing file at the default path yields the built-in
    /// default, a missing file named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Config::from_toml(BUILTIN_DEFAULT, "<built-in default>")
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator { text, origin }.validate(raw)
    }
}

/// The configuration used when `/etc/loopgate/agent.toml` does not exist.
pub const BUILTIN_DEFAULT: &str = include_str!("../packaging/agent.toml");

/// Serde's view of the file: positions kept for validation errors.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub intercept: Intercept,
        pub audit: Option<Spanned<AuditConfig>>,
        #[serde(default)]
        pub control: Control,
        pub approvals: Option<Spanned<ApprovalsConfig>>,
        #[serde(default)]
        pub proxy: Proxy,
        #[serde(default)]
        pub mask: MaskConfig,
        #[serde(default)]
        pub sql: SqlConfig,
        #[serde(default)]
        pub policy: Policy,
        #[serde(default)]
        pub tls: Tls,
        pub identity: Option<Spanned<IdentityConfig>>,
        #[serde(default, rename = "target")]
        pub targets: Vec<Target>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        #[serde(default)]
        pub builtin: BuiltinPolicyConfig,
        pub dir: Option<PathBuf>,
        pub bundle: Option<Spanned<crate::policy::bundle::BundleConfig>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub ca_dir: Option<PathBuf>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Intercept {
        pub cgroups: Option<Spanned<Vec<Spanned<String>>>>,
        pub listen_port: Option<Spanned<u16>>,
        pub pin_dir: Option<Spanned<PathBuf>>,
        pub egress: Option<Spanned<String>>,
        pub deny: Option<Spanned<Vec<String>>>,
        pub allow: Option<Spanned<Vec<String>>>,
        pub on_attach: Option<Spanned<String>>,
    }

    /// One address, or several.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Addresses {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Control {
        pub socket: Option<PathBuf>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Proxy {
        pub drain_timeout_secs: Option<u64>,
        pub connect_timeout_secs: Option<Spanned<u64>>,
        pub workers: Option<Spanned<usize>>,
        pub refusals_per_second: Option<Spanned<u32>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Target {
        pub name: Spanned<String>,
        pub protocol: Spanned<String>,
        pub address: Spanned<Addresses>,
        pub unix: Option<Spanned<Vec<String>>>,
        pub identity: Option<Spanned<String>>,
        pub upstream: Option<Spanned<crate::protocols::postgres::config::UpstreamConfig>>,
        pub client_tls: Option<Spanned<bool>>,
        pub ssh: Option<Spanned<crate::protocols::ssh::config::SshConfig>>,
        pub http: Option<Spanned<crate::protocols::http::config::HttpConfig>>,
    }
}

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Validator<'_> {
    fn error<T>(&self, key: &str, span: std::ops::Range<usize>, message: impl Into<String>) -> Result<T, ConfigError> {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1;
        Err(ConfigError::Invalid {
            path: self.origin.to_owned(),
            line,
            key: key.to_owned(),
            message: message.into(),
        })
    }

    fn validate(&self, raw: raw::File) -> Result<Config, ConfigError> {
        let raw_intercept = raw.intercept;
        let listen_port = self.listen_port(&raw_intercept)?;
        let identity = match raw.identity {
            Some(i) => {
                if let Err(e) = i.get_ref().oidc.validate() {
                    return self.error("identity.oidc", i.span(), e.to_string());
                }
                Some(i.into_inner())
            }
            None => None,
        };
        let mut targets: Vec<Target> = Vec::with_capacity(raw.targets.len());
        let mut table = RuleTable::default();
        for t in raw.targets {
            let target = self.target(t, &targets, &mut table, listen_port, identity.is_some())?;
            targets.push(target);
        }
        let intercept = self.intercept(raw_intercept, listen_port, &targets)?;
        let audit = match raw.audit {
            Some(a) => {
                if let Err(e) = a.get_ref().validate() {
                    return self.error("audit", a.span(), e);
                }
                a.into_inner()
            }
            None => AuditConfig::default(),
        };
        let policy_bundle = match raw.policy.bundle {
            Some(b) if raw.policy.dir.is_some() => {
                return self.error(
                    "policy.bundle",
                    b.span(),
                    "set either [policy] dir or [policy.bundle], not both",
                );
            }
            Some(b) => {
                if let Err(e) = b.get_ref().validate() {
                    return self.error("policy.bundle", b.span(), e);
                }
                Some(b.into_inner())
            }
            None => None,
        };
        let approvals = match raw.approvals {
            Some(a) => {
                if let Err(e) = a.get_ref().validate(identity.is_some()) {
                    return self.error("approvals", a.span(), e);
                }
                a.into_inner()
            }
            None => ApprovalsConfig::default(),
        };
        let connect_timeout = match raw.proxy.connect_timeout_secs {
            Some(s) if *s.get_ref() == 0 => {
                return self.error("proxy.connect_timeout_secs", s.span(), "must be at least 1");
            }
            Some(s) => Duration::from_secs(*s.get_ref()),
            None => Duration::from_secs(10),
        };
        let workers = match raw.proxy.workers {
            Some(w) if !(1..=MAX_WORKERS).contains(w.get_ref()) => {
                return self.error(
                    "proxy.workers",
                    w.span(),
                    format!("must be between 1 and {MAX_WORKERS}"),
                );
            }
            Some(w) => *w.get_ref(),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let refusals_per_second = match raw.proxy.refusals_per_second {
            Some(n) if *n.get_ref() == 0 => {
                return self.error("proxy.refusals_per_second", n.span(), "must be at least 1");
            }
            Some(n) => *n.get_ref(),
            None => 200,
        };
        Ok(Config {
            intercept,
            audit,
            control: ControlConfig {
                socket: raw
                    .control
                    .socket
                    .unwrap_or_else(|| PathBuf::from("/run/loopgate/control.sock")),
            },
            approvals,
            proxy: ProxyConfig {
                drain_timeout: Duration::from_secs(raw.proxy.drain_timeout_secs.unwrap_or(30)),
                connect_timeout,
                workers,
                refusals_per_second,
            },
            mask: raw.mask,
            sql: raw.sql,
            policy: raw.policy.builtin,
            policy_dir: raw.policy.dir,
            policy_bundle,
            identity,
            tls: TlsConfig {
                ca_dir: raw.tls.ca_dir.unwrap_or_else(|| PathBuf::from("/var/lib/loopgate/ca")),
            },
            targets,
        })
    }

    fn listen_port(&self, raw: &raw::Intercept) -> Result<u16, ConfigError> {
        match &raw.listen_port {
            Some(p) if *p.get_ref() == 0 => self.error(
                "intercept.listen_port",
                p.span(),
                "must be a fixed port (1-65535): the kernel redirects to it",
            ),
            Some(p) => Ok(*p.get_ref()),
            None => Ok(15000),
        }
    }

    fn intercept(
        &self,
        raw: raw::Intercept,
        listen_port: u16,
        targets: &[Target],
    ) -> Result<InterceptConfig, ConfigError> {
        let cgroups = match raw.cgroups {
            None => vec!["loopgate-agents.slice".to_owned()],
            Some(list) => {
                if list.get_ref().is_empty() {
                    return self.error(
                        "intercept.cgroups",
                        list.span(),
                        "names no cgroup; intercepting nothing is not a configuration",
                    );
                }
                let mut out = Vec::new();
                for cg in list.into_inner() {
                    let span = cg.span();
                    let path = cg.into_inner();
                    let trimmed = path.trim_matches('/');
                    if trimmed.is_empty() {
                        return self.error(
                            "intercept.cgroups",
                            span,
                            "the root cgroup cannot be intercepted: name a child cgroup",
                        );
                    }
                    if trimmed.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
                        return self.error(
                            "intercept.cgroups",
                            span,
                            format!("{path:?} is not a plain path below the cgroup2 mount"),
                        );
                    }
                    out.push(trimmed.to_owned());
                }
                out
            }
        };
        let pin_dir = match raw.pin_dir {
            Some(p) if !p.get_ref().is_absolute() => {
                return self.error("intercept.pin_dir", p.span(), "must be an absolute path on bpffs");
            }
            Some(p) => p.into_inner(),
            None => PathBuf::from("/sys/fs/bpf/loopgate"),
        };
        let egress = match raw.egress.as_ref().map(|e| (e.get_ref().as_str(), e.span())) {
            None | Some(("deny-listed", _)) => Egress::DenyListed,
            Some(("allow", _)) => Egress::Allow,
            Some(("deny", _)) => Egress::Deny,
            Some((other, span)) => {
                return self.error(
                    "intercept.egress",
                    span,
                    format!("unknown egress {other:?} (supported: \"allow\", \"deny-listed\", \"deny\")"),
                );
            }
        };
        let (deny, deny_unix) = match raw.deny {
            Some(list) if egress == Egress::Allow => {
                return self.error(
                    "intercept.deny",
                    list.span(),
                    "needs egress = \"deny-listed\" or \"deny\"",
                );
            }
            Some(list) => self.patterns("intercept.deny", list)?,
            // The same servers' other addresses: every target's port, anywhere.
            None if egress == Egress::DenyListed => {
                let mut ports: Vec<u16> = targets
                    .iter()
                    .flat_map(|t| t.addresses.iter().filter_map(|p| p.port))
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                let deny = ports
                    .into_iter()
                    .filter_map(|port| Pattern::parse(&format!("*:{port}"), false).ok())
                    .collect();
                (deny, Vec::new())
            }
            None => (Vec::new(), Vec::new()),
        };
        let (allow, allow_unix) = match raw.allow {
            Some(list) if egress == Egress::Allow => {
                return self.error(
                    "intercept.allow",
                    list.span(),
                    "needs egress = \"deny-listed\" or \"deny\"",
                );
            }
            Some(list) => self.patterns("intercept.allow", list)?,
            None => (Vec::new(), Vec::new()),
        };
        let on_attach = match raw.on_attach.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
            None | Some(("kill", _)) => OnAttach::Kill,
            Some(("record", _)) => OnAttach::Record,
            Some((other, span)) => {
                return self.error(
                    "intercept.on_attach",
                    span,
                    format!("unknown value {other:?} (supported: \"kill\", \"record\")"),
                );
            }
        };
        Ok(InterceptConfig {
            cgroups,
            listen_port,
            pin_dir,
            egress,
            deny,
            allow,
            deny_unix,
            allow_unix,
            on_attach,
        })
    }

    /// Egress entries: `ADDRESS:PORT` (any port allowed, host names must
    /// resolve) or `unix:/path` (`unix:@name` for an abstract socket).
    fn patterns(&self, key: &str, list: Spanned<Vec<String>>) -> Result<(Vec<Pattern>, Vec<String>), ConfigError> {
        let span = list.span();
        let (mut ip, mut unix) = (Vec::new(), Vec::new());
        for text in list.into_inner() {
            if let Some(path) = text.strip_prefix("unix:") {
                self.unix_path(key, span.clone(), path)?;
                unix.push(path.to_owned());
                continue;
            }
            let pattern = Pattern::parse(&text, true).or_else(|m| self.error(key, span.clone(), m))?;
            pattern.prefixes(&[]).or_else(|m| self.error(key, span.clone(), m))?;
            ip.push(pattern);
        }
        Ok((ip, unix))
    }

    fn unix_path(&self, key: &str, span: std::ops::Range<usize>, path: &str) -> Result<(), ConfigError> {
        if !(path.starts_with('/') || path.starts_with('@')) {
            return self.error(
                key,
                span,
                format!("{path:?}: a unix socket path is absolute (or @abstract)"),
            );
        }
        if path.len() >= agent_ebpf::UNIX_PATH_MAX {
            return self.error(key, span, format!("{path:?} is longer than a unix socket path can be"));
        }
        Ok(())
    }

    fn target(
        &self,
        raw: raw::Target,
        earlier: &[Target],
        table: &mut RuleTable,
        proxy_port: u16,
        oidc_configured: bool,
    ) -> Result<Target, ConfigError> {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            return self.error("target.name", raw.name.span(), "must not be empty");
        }
        if earlier.iter().any(|t| t.name == name) {
            return self.error(
                "target.name",
                raw.name.span(),
                format!("{name:?} is used by another target"),
            );
        }
        let supported = "(supported: \"tcp\", \"postgres\", \"ssh\", \"https\", \"http\")";
        let protocol = match raw.protocol.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "postgres" => Protocol::Postgres(Box::new(self.postgres(&raw)?)),
            "ssh" => Protocol::Ssh(Box::new(self.ssh(&raw)?)),
            "https" => Protocol::Http(Box::new(self.http(&raw, true)?)),
            "http" => Protocol::Http(Box::new(self.http(&raw, false)?)),
            other => {
                let message = format!("unknown protocol {other:?} {supported}");
                return self.error("target.protocol", raw.protocol.span(), message);
            }
        };
        self.refuse_foreign_keys(&protocol, &raw)?;
        let identity = self.identity(&protocol, &raw, oidc_configured)?;
        let span = raw.address.span();
        let texts = match raw.address.into_inner() {
            raw::Addresses::One(a) => vec![a],
            raw::Addresses::Many(list) => list,
        };
        if texts.is_empty() {
            return self.error("target.address", span, "names no address");
        }
        let mut addresses = Vec::new();
        for text in &texts {
            let pattern = Pattern::parse(text, false).or_else(|m| self.error("target.address", span.clone(), m))?;
            let prefixes = pattern
                .prefixes(&[])
                .or_else(|m| self.error("target.address", span.clone(), m))?;
            let own = ["127.0.0.1", "::1"].map(|ip| ip.parse().expect("loopback"));
            if pattern.port == Some(proxy_port) && prefixes.iter().any(|p| own.iter().any(|ip| p.contains(*ip))) {
                let message = format!("{text} covers the agent's own port (intercept.listen_port) on loopback");
                return self.error("target.address", span.clone(), message);
            }
            let id = earlier.len() as u32;
            // The same address twice in one target (a name and its IP) is harmless.
            let clash = table
                .add(pattern.port, &prefixes, Kind::Target, id)
                .into_iter()
                .find(|c| *c != (Kind::Target, id));
            match clash {
                None => {}
                Some((_, other)) => {
                    let other = earlier
                        .get(other as usize)
                        .map_or("another target", |t| t.name.as_str());
                    let message = format!("{text} is already intercepted for target {other:?}");
                    return self.error("target.address", span.clone(), message);
                }
            }
            addresses.push(pattern);
        }
        let unix = match raw.unix {
            None => Vec::new(),
            Some(list) => {
                let span = list.span();
                let paths = list.into_inner();
                for path in &paths {
                    self.unix_path("target.unix", span.clone(), path)?;
                }
                paths
            }
        };
        Ok(Target {
            name,
            protocol,
            identity,
            address: texts[0].clone(),
            addresses,
            unix,
        })
    }

    /// `identity` of a target: for the protocols that have callers to tell
    /// apart (all but `tcp`); `oidc` needs `[identity.oidc]`.
    fn identity(&self, protocol: &Protocol, raw: &raw::Target, oidc_configured: bool) -> Result<Mode, ConfigError> {
        let given = raw.identity.as_ref().map(|i| (i.get_ref().as_str(), i.span()));
        match (protocol, given) {
            (Protocol::Tcp, Some((_, span))) => self.error("target.identity", span, "tcp targets take no identity"),
            (_, None | Some(("process", _))) => Ok(Mode::Process),
            (_, Some(("oidc", _))) if oidc_configured => Ok(Mode::Oidc),
            (_, Some(("oidc", span))) => self.error(
                "target.identity",
                span,
                "\"oidc\" needs an [identity.oidc] table (issuer, audience)",
            ),
            (_, Some((other, span))) => {
                let message = format!("unknown identity {other:?} (supported: \"process\", \"oidc\")");
                self.error("target.identity", span, message)
            }
        }
    }

    /// The PostgreSQL keys of a target, which its protocol module checks.
    fn postgres(&self, raw: &raw::Target) -> Result<PostgresSettings, ConfigError> {
        let Some(upstream) = &raw.upstream else {
            return self.error(
                "target.upstream",
                raw.name.span(),
                "a postgres target needs [target.upstream] (user and password_file or credential)",
            );
        };
        let client_tls = raw.client_tls.as_ref().is_some_and(|t| *t.get_ref());
        PostgresSettings::new(upstream.get_ref().clone(), client_tls)
            .or_else(|e| self.error("target.upstream", upstream.span(), e.to_string()))
    }

    /// The `[target.ssh]` table of an SSH target, which its module checks.
    fn ssh(&self, raw: &raw::Target) -> Result<SshSettings, ConfigError> {
        let Some(table) = &raw.ssh else {
            return self.error(
                "target.ssh",
                raw.name.span(),
                "an ssh target needs [target.ssh] (user, key_file or password_file, known_hosts or host_key)",
            );
        };
        let config: SshConfig = table.get_ref().clone();
        SshSettings::new(config).or_else(|e| self.error("target.ssh", table.span(), e.to_string()))
    }

    /// The `[target.http]` table of an `https` / `http` target (optional:
    /// defaults are a JSON API checked against the public web roots).
    fn http(&self, raw: &raw::Target, tls: bool) -> Result<HttpSettings, ConfigError> {
        let (config, span) = match &raw.http {
            Some(h) => (h.get_ref().clone(), h.span()),
            None => (Default::default(), raw.protocol.span()),
        };
        HttpSettings::new(config, tls).or_else(|e| self.error("target.http", span, e.to_string()))
    }

    /// Keys a protocol does not take are errors, not silently ignored.
    fn refuse_foreign_keys(&self, protocol: &Protocol, raw: &raw::Target) -> Result<(), ConfigError> {
        if let (Some(t), false) = (&raw.ssh, matches!(protocol, Protocol::Ssh(_))) {
            return self.error(
                "target.ssh",
                t.span(),
                format!("only ssh targets take [target.ssh]; this one is {protocol}"),
            );
        }
        if let (false, Some(h)) = (matches!(protocol, Protocol::Http(_)), &raw.http) {
            return self.error(
                "target.http",
                h.span(),
                format!("only https and http targets take [target.http]; this one is {protocol}"),
            );
        }
        if matches!(protocol, Protocol::Postgres(_)) {
            return Ok(());
        }
        if let Some(u) = &raw.upstream {
            return self.error(
                "target.upstream",
                u.span(),
                format!("only postgres targets take an upstream; this one is {protocol}"),
            );
        }
        if let Some(t) = &raw.client_tls {
            return self.error(
                "target.client_tls",
                t.span(),
                format!("only postgres targets take client_tls; this one is {protocol}"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "agent.toml")
    }

    #[test]
    fn builtin_default_is_valid() {
        let config = parse(BUILTIN_DEFAULT).expect("built-in default parses");
        assert_eq!(config.intercept.cgroups, ["loopgate-agents.slice"]);
        assert_eq!(config.intercept.listen_port, 15000);
    }

    #[test]
    fn full_example_parses() {
        let config = parse(
            r#"
[intercept]
cgroups = ["loopgate-agents"]
listen_port = 15000
[audit]
dir = "/var/lib/loopgate/audit"
[[target]]
name = "echo"
protocol = "tcp"
address = "127.0.0.77:7777"
[[target]]
name = "v6"
protocol = "tcp"
address = "[::1]:9000"
"#,
        )
        .unwrap();
        assert_eq!(config.targets.len(), 2);
        assert_eq!(
            config.targets[0].addresses,
            [Pattern::parse("127.0.0.77:7777", false).unwrap()]
        );
        assert_eq!(
            config.targets[1].addresses,
            [Pattern::parse("[::1]:9000", false).unwrap()]
        );
        // Egress: by default the targets' ports are refused everywhere else.
        assert_eq!(config.intercept.egress, Egress::DenyListed);
        let deny: Vec<&str> = config.intercept.deny.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(deny, ["*:7777", "*:9000"]);
        assert_eq!(config.intercept.on_attach, OnAttach::Kill);
    }

    #[test]
    fn targets_take_several_addresses_prefixes_and_local() {
        let config = parse(
            "[[target]]\nname = \"db\"\nprotocol = \"tcp\"\naddress = [\"127.0.0.150:5432\", \"10.0.0.0/24:5432\", \"localhost:5432\"]\n\
             unix = [\"/run/postgresql/.s.PGSQL.5432\"]\n\
             [[target]]\nname = \"here\"\nprotocol = \"tcp\"\naddress = \"local:6000\"\n",
        )
        .unwrap();
        let db = &config.targets[0];
        assert_eq!(db.address, "127.0.0.150:5432");
        assert_eq!(db.host(), "127.0.0.150");
        assert_eq!(db.addresses.len(), 3);
        assert_eq!(db.unix, ["/run/postgresql/.s.PGSQL.5432"]);
        assert_eq!(config.targets[1].host(), "localhost");
        assert!(config.targets[1].certificate_names().contains(&"127.0.0.1".to_owned()));
    }

    #[test]
    fn egress_lists_are_checked() {
        let config =
            parse("[intercept]\negress = \"deny\"\nallow = [\"10.0.0.0/8:*\", \"*:53\", \"unix:/run/systemd/journal/socket\"]\n")
                .unwrap();
        assert_eq!(config.intercept.egress, Egress::Deny);
        assert_eq!(config.intercept.allow.len(), 2);
        assert_eq!(config.intercept.allow_unix, ["/run/systemd/journal/socket"]);
        let (_, key, msg) = invalid("[intercept]\ndeny = [\"unix:relative\"]\n");
        assert_eq!(key, "intercept.deny");
        assert!(msg.contains("absolute"), "{msg}");
        assert!(config.intercept.deny.is_empty());
        let (line, key, _) = invalid("[intercept]\negress = \"allow\"\ndeny = [\"*:5432\"]\n");
        assert_eq!((line, key.as_str()), (3, "intercept.deny"));
        let (line, key, msg) = invalid("[intercept]\negress = \"open\"\n");
        assert_eq!((line, key.as_str()), (2, "intercept.egress"));
        assert!(msg.contains("deny-listed"), "{msg}");
        let (_, key, msg) = invalid("[intercept]\ndeny = [\"10.0.0.0/40:*\"]\n");
        assert_eq!(key, "intercept.deny");
        assert!(msg.contains("prefix length"), "{msg}");
        let (_, key, _) = invalid("[intercept]\non_attach = \"ignore\"\n");
        assert_eq!(key, "intercept.on_attach");
    }

    #[test]
    fn a_target_may_not_take_the_agents_own_port() {
        let (line, key, msg) = invalid(
            "[intercept]\nlisten_port = 15001\n[[target]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:15001\"\n",
        );
        assert_eq!((line, key.as_str()), (6, "target.address"));
        assert!(msg.contains("own port"), "{msg}");
        let (_, _, msg) = invalid(
            "[intercept]\nlisten_port = 15001\n[[target]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"local:15001\"\n",
        );
        assert!(msg.contains("own port"), "{msg}");
    }

    #[test]
    fn host_names_resolve_to_every_address() {
        let config = parse("[[target]]\nname = \"l\"\nprotocol = \"tcp\"\naddress = \"localhost:7000\"\n").unwrap();
        let prefixes = config.targets[0].addresses[0].prefixes(&[]).unwrap();
        assert!(!prefixes.is_empty());
        assert!(
            prefixes
                .iter()
                .all(|p| p.len == 128 && p.ip.to_ipv4_mapped().map_or(p.ip.is_loopback(), |v4| v4.is_loopback()))
        );
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let (line, key, _) = invalid("[intercept]\ncgroups = [\"a\"]\nlisten_port = 0\n");
        assert_eq!((line, key.as_str()), (3, "intercept.listen_port"));

        let (line, key, msg) = invalid("[[target]]\nname = \"x\"\nprotocol = \"gopher\"\naddress = \"127.0.0.1:1\"\n");
        assert_eq!((line, key.as_str()), (3, "target.protocol"));
        assert!(msg.contains("gopher"), "{msg}");

        let (line, key, _) = invalid("[[target]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"nonsense\"\n");
        assert_eq!((line, key.as_str()), (4, "target.address"));
        let (line, key, _) =
            invalid("[[target]]\nname = \"x\"\nprotocol = \"tcp\"\naddress = \"10.0.0.1:5\"\nunix = [\"rel/path\"]\n");
        assert_eq!((line, key.as_str()), (5, "target.unix"));

        let (line, key, _) = invalid("[intercept]\ncgroups = [\"/\"]\n");
        assert_eq!((line, key.as_str()), (2, "intercept.cgroups"));

        let (_, key, msg) = invalid("[intercept]\ncgroups = [\"../etc\"]\n");
        assert_eq!(key, "intercept.cgroups");
        assert!(msg.contains("plain path"), "{msg}");

        let (line, key, msg) = invalid("[proxy]\ndrain_timeout_secs = 5\nworkers = 0\n");
        assert_eq!((line, key.as_str()), (3, "proxy.workers"));
        assert!(msg.contains("between 1 and"), "{msg}");

        let (line, key, _) = invalid("[proxy]\nrefusals_per_second = 0\n");
        assert_eq!((line, key.as_str()), (2, "proxy.refusals_per_second"));
    }

    #[test]
    fn audit_remote_settings_are_checked() {
        let (line, key, msg) = invalid("[audit]\ndir = \"/tmp/a\"\n[audit.remote]\nurl = \"https://bucket\"\n");
        assert_eq!((line, key.as_str()), (1, "audit"));
        assert!(msg.contains("s3://"), "{msg}");
        let config = parse("[audit.remote]\nurl = \"s3://audit-fleet/prod\"\n").unwrap();
        assert_eq!(config.audit.remote.unwrap().s3_url().unwrap().bucket, "audit-fleet");
    }

    #[test]
    fn policy_bundles_are_checked() {
        let config = parse(
            "[policy.bundle]\nurl = \"s3://fleet-policy/hipaa.bundle\"\npublic_keys = [\"/etc/loopgate/policy.pub\"]\n",
        )
        .unwrap();
        assert_eq!(config.policy_bundle.unwrap().poll_secs, 60);
        let (_, key, msg) = invalid("[policy.bundle]\nurl = \"s3://fleet-policy/hipaa.bundle\"\n");
        assert_eq!(key, "policy.bundle");
        assert!(msg.contains("public_keys"), "{msg}");
        let (_, _, msg) =
            invalid("[policy]\ndir = \"/etc/p\"\n[policy.bundle]\nurl = \"https://x/b\"\npublic_keys = [\"/k\"]\n");
        assert!(msg.contains("not both"), "{msg}");
        let (_, _, msg) = invalid("[policy.bundle]\nurl = \"ftp://x/b\"\npublic_keys = [\"/k\"]\n");
        assert!(msg.contains("https://"), "{msg}");
    }

    #[test]
    fn session_workers_default_to_one_per_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(parse("").unwrap().proxy.workers, cpus);
        assert_eq!(parse("[proxy]\nworkers = 3\n").unwrap().proxy.workers, 3);
    }

    #[test]
    fn approvals_settings_are_checked() {
        let config = parse("[approvals]\nsocket = \"/run/x/approvals.sock\"\n").unwrap();
        assert_eq!(config.approvals.socket, PathBuf::from("/run/x/approvals.sock"));
        assert!(config.approvals.http_listen.is_none());

        let (line, key, msg) =
            invalid("[control]\nsocket = \"/run/c.sock\"\n[approvals]\nhttp_listen = \"0.0.0.0:7781\"\n");
        assert_eq!((line, key.as_str()), (3, "approvals"));
        assert!(msg.contains("loopback"), "{msg}");
        let (_, _, msg) = invalid("[approvals]\nhttp_listen = \"127.0.0.1:7781\"\n");
        assert!(msg.contains("[identity.oidc]"), "{msg}");
        let (_, _, msg) = invalid("[approvals]\nwebhook_url = \"ftp://hooks.example\"\n");
        assert!(msg.contains("http(s)"), "{msg}");
    }

    #[test]
    fn ssh_targets_take_an_ssh_table() {
        let text = "[[target]]\nname = \"bastion\"\nprotocol = \"ssh\"\naddress = \"10.0.0.7:22\"\n\
                    [target.ssh]\nuser = \"deploy\"\nkey_file = \"/etc/loopgate/ssh/deploy\"\n\
                    known_hosts = \"/etc/loopgate/ssh/known_hosts\"\nnames = [\"bastion.internal\"]\n";
        let config = parse(text).unwrap();
        let Protocol::Ssh(ssh) = &config.targets[0].protocol else {
            panic!("not ssh");
        };
        assert_eq!(ssh.user, "deploy");
        assert!(ssh.mask_output);
        assert_eq!(ssh.names, ["bastion.internal"]);
        assert_eq!(config.targets[0].protocol.as_str(), "ssh");

        let (line, key, msg) = invalid("[[target]]\nname = \"b\"\nprotocol = \"ssh\"\naddress = \"10.0.0.7:22\"\n");
        assert_eq!((line, key.as_str()), (2, "target.ssh"));
        assert!(msg.contains("[target.ssh]"), "{msg}");
        let (line, key, msg) = invalid(&text.replace("known_hosts = \"/etc/loopgate/ssh/known_hosts\"", ""));
        assert_eq!((line, key.as_str()), (5, "target.ssh"));
        assert!(msg.contains("pinned"), "{msg}");
        let err = parse(&text.replace("user = \"deploy\"", "user = \"deploy\"\nkeyfile = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("keyfile") && err.contains("line 7"), "{err}");
        let (_, key, msg) = invalid(&text.replace("protocol = \"ssh\"", "protocol = \"tcp\""));
        assert_eq!(key, "target.ssh");
        assert!(msg.contains("only ssh targets"), "{msg}");
    }

    #[test]
    fn postgres_targets_need_an_upstream() {
        let text = "[[target]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:5432\"\nidentity = \"process\"\n\
                    [target.upstream]\nuser = \"app\"\npassword_file = \"/etc/loopgate/secrets/db\"\ntls = \"disable\"\n";
        let config = parse(text).unwrap();
        let Protocol::Postgres(pg) = &config.targets[0].protocol else {
            panic!("not postgres");
        };
        assert_eq!(pg.upstream.user, "app");
        assert_eq!(config.targets[0].identity, Mode::Process);
        assert_eq!(config.targets[0].host(), "127.0.0.1");

        let (line, key, _) =
            invalid("[[target]]\nname = \"db\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:5432\"\n");
        assert_eq!((line, key.as_str()), (2, "target.upstream"));
        let (_, key, msg) = invalid(&text.replace("tls = \"disable\"", "tls = \"verify-full\""));
        assert_eq!(key, "target.upstream");
        assert!(msg.contains("ca_file"), "{msg}");
        let (line, key, _) = invalid(&text.replace("identity = \"process\"", "identity = \"kerberos\""));
        assert_eq!((line, key.as_str()), (5, "target.identity"));
        let err = parse(&text.replace("user = \"app\"", "user = \"app\"\npasword_file = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pasword_file"), "{err}");
    }

    #[test]
    fn https_and_http_targets_take_an_http_table() {
        let text = "[[target]]\nname = \"fhir\"\nprotocol = \"https\"\naddress = \"10.1.2.3:443\"\n\
                    [target.http]\napi = \"fhir\"\nca_file = \"/etc/loopgate/fhir-ca.pem\"\n\
                    [[target]]\nname = \"api\"\nprotocol = \"http\"\naddress = \"127.0.0.1:8080\"\n";
        let config = parse(text).unwrap();
        let Protocol::Http(fhir) = &config.targets[0].protocol else {
            panic!("not http");
        };
        assert!(fhir.tls);
        assert_eq!(fhir.config.api, crate::protocols::http::config::Api::Fhir);
        assert_eq!(config.targets[0].protocol.as_str(), "https");
        assert_eq!(config.targets[1].protocol.as_str(), "http");

        let (line, key, msg) = invalid(&text.replace(
            "protocol = \"http\"\naddress = \"127.0.0.1:8080\"\n",
            "protocol = \"http\"\naddress = \"127.0.0.1:8080\"\n[target.http]\ncert_file = \"/c\"\nkey_file = \"/k\"\n",
        ));
        assert_eq!((line, key.as_str()), (12, "target.http"), "{msg}");
        assert!(msg.contains("plain http"), "{msg}");
        let (_, key, msg) = invalid(&text.replace("protocol = \"https\"", "protocol = \"tcp\""));
        assert_eq!(key, "target.http");
        assert!(msg.contains("only https and http"), "{msg}");
    }

    #[test]
    fn duplicate_targets_are_refused() {
        let text = "[[target]]\nname = \"a\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
                    [[target]]\nname = \"b\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:1\"\n";
        let (line, key, msg) = invalid(text);
        assert_eq!((line, key.as_str()), (8, "target.address"));
        assert!(msg.contains("\"a\""), "{msg}");
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let err = parse("[intercept]\nlisten_prot = 1\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("listen_prot"), "{err}");
        let err = parse("[intercept\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let err = parse("[intercept]\nlisten_port = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
