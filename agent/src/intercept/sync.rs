//! Keeps the kernel's rule, unix-target and cgroup maps equal to the
//! configuration. New entries go in before stale ones leave, so a
//! destination present in both is never unguarded.
use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
};

use agent_ebpf::{Rule, RuleAddr, UNIX_PATH_MAX, UnixPath, action, maps};
use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{
        HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};

use super::Plan;
use super::{
    diag,
    rules::{self, Kind, Pattern, RuleTable},
};

/// What the maps hold, and handles to change them later.
#[derive(Default)]
pub struct Synced {
    rules: Option<LpmTrie<MapData, RuleAddr, Rule>>,
    unix: Option<HashMap<MapData, UnixPath, Rule>>,
    table: StdHashMap<(u32, RuleAddr), Rule>,
    unix_paths: StdHashMap<UnixPath, Rule>,
}

impl Synced {
    /// Builds the rule table from `config` and writes it.
    pub fn rules(&mut self, ebpf: &mut Ebpf, plan: &Plan) -> anyhow::Result<()> {
        let map = ebpf
            .take_map(maps::RULES)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::RULES))?;
        self.rules = Some(LpmTrie::try_from(map)?);
        let table = build_table(plan, &rules::local_addresses())?;
        self.write_rules(&table)
    }

    pub fn unix_rules(&mut self, ebpf: &mut Ebpf, plan: &Plan) -> anyhow::Result<()> {
        let map = ebpf
            .take_map(maps::UNIX)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::UNIX))?;
        self.unix = Some(HashMap::try_from(map)?);
        self.write_unix(plan)
    }

    /// Re-resolves what can change under a running agent. A name that no
    /// longer resolves keeps its previous addresses (logged).
    pub fn refresh(&mut self, plan: &Plan) -> anyhow::Result<()> {
        match build_table(plan, &rules::local_addresses()) {
            Ok(table) => self.write_rules(&table)?,
            Err(e) => tracing::warn!(error = %e, "keeping the previous interception rules"),
        }
        self.write_unix(plan)
    }

    fn write_rules(&mut self, table: &RuleTable) -> anyhow::Result<()> {
        let map = self.rules.as_mut().context("rule map not taken")?;
        let wanted: StdHashMap<(u32, RuleAddr), Rule> = table
            .kernel_entries()
            .map(|(len, data, rule)| ((len, data), rule))
            .collect();
        for ((len, data), rule) in &wanted {
            if self.table.get(&(*len, *data)) != Some(rule) {
                map.insert(&Key::new(*len, *data), rule, 0)
                    .with_context(|| format!("adding an interception rule ({} entries)", wanted.len()))?;
            }
        }
        // Stale entries: those of the previous table, and (at start) any
        // left in the pinned map by an earlier agent.
        let stale: Vec<Key<RuleAddr>> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale {
            map.remove(&key)?;
        }
        self.table = wanted;
        Ok(())
    }

    fn write_unix(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let map = self.unix.as_mut().context("unix rule map not taken")?;
        let listeners = if plan.targets.iter().any(|t| !t.unix.is_empty()) {
            diag::unix_listeners().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list unix listeners; matching unix targets by configured path only");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        // At an equal path: a target, then deny, then allow.
        let mut wanted: StdHashMap<UnixPath, Rule> = StdHashMap::new();
        let lists = [
            (&plan.settings.allow_unix, action::ALLOW),
            (&plan.settings.deny_unix, action::DENY),
        ];
        for (list, action) in lists {
            for (i, path) in list.iter().enumerate() {
                for name in unix_names(path, &listeners) {
                    wanted.insert(name, Rule { action, id: i as u32 });
                }
            }
        }
        for (i, target) in plan.targets.iter().enumerate() {
            for path in &target.unix {
                for name in unix_names(path, &listeners) {
                    let rule = Rule {
                        action: action::REDIRECT,
                        id: i as u32,
                    };
                    wanted.insert(name, rule);
                }
            }
        }
        if wanted.len() > agent_ebpf::MAX_UNIX_RULES as usize {
            anyhow::bail!("{} unix socket rules, more than the kernel map holds", wanted.len());
        }
        for (key, rule) in &wanted {
            if self.unix_paths.get(key) != Some(rule) {
                map.insert(key, rule, 0).context("adding a unix socket rule")?;
            }
        }
        let stale: Vec<UnixPath> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for key in stale {
            map.remove(&key)?;
        }
        self.unix_paths = wanted;
        Ok(())
    }
}

/// The whole rule table: the agent's own address, every target, the
/// egress deny and allow entries.
pub fn build_table(plan: &Plan, local: &[IpAddr]) -> anyhow::Result<RuleTable> {
    let mut table = RuleTable::default();
    let port = plan.settings.listen_port;
    for own in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let pattern = Pattern::parse(&own, false).map_err(anyhow::Error::msg)?;
        table.add(
            pattern.port,
            &pattern.prefixes(local).map_err(anyhow::Error::msg)?,
            Kind::Proxy,
            0,
        );
    }
    for (i, target) in plan.targets.iter().enumerate() {
        for pattern in &target.addresses {
            let prefixes = pattern
                .prefixes(local)
                .map_err(|e| anyhow!("target {:?}: {e}", target.name))?;
            table.add(pattern.port, &prefixes, Kind::Target, i as u32);
        }
    }
    let lists = [(&plan.settings.deny, Kind::Deny), (&plan.settings.allow, Kind::Allow)];
    for (list, kind) in lists {
        for (i, pattern) in list.iter().enumerate() {
            let prefixes = pattern.prefixes(local).map_err(|e| anyhow!("{pattern}: {e}"))?;
            table.add(pattern.port, &prefixes, kind, i as u32);
        }
    }
    if table.len() > agent_ebpf::MAX_RULES as usize {
        anyhow::bail!(
            "{} interception rules, more than the kernel map holds ({})",
            table.len(),
            agent_ebpf::MAX_RULES
        );
    }
    Ok(table)
}

/// The names a unix target's server may have bound: the configured path,
/// its canonical form, and the bound name of every listener whose socket
/// file is the same inode (Debian's server binds /var/run/postgresql, a
/// symlink to /run/postgresql).
fn unix_names(path: &str, listeners: &[diag::UnixListener]) -> Vec<UnixPath> {
    let mut names = Vec::new();
    if let Some(name) = path.strip_prefix('@') {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(name.as_bytes());
        names.extend(unix_key(&bytes));
        return names;
    }
    names.extend(unix_key(path.as_bytes()));
    let p = Path::new(path);
    if let (Some(parent), Some(file)) = (p.parent(), p.file_name())
        && let Ok(dir) = std::fs::canonicalize(parent)
    {
        names.extend(unix_key(dir.join(file).as_os_str().as_bytes()));
    }
    if let Ok(meta) = std::fs::metadata(p) {
        let kernel_dev = ((libc::major(meta.dev())) << 20) | libc::minor(meta.dev());
        for l in listeners {
            if l.vfs == Some((meta.ino() as u32, kernel_dev)) {
                let end = l.name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                names.extend(unix_key(&l.name[..end]));
            }
        }
    }
    names.sort_by_key(|k| k.bytes);
    names.dedup();
    names
}

fn unix_key(bytes: &[u8]) -> Option<UnixPath> {
    if bytes.is_empty() || bytes.len() >= UNIX_PATH_MAX {
        return None;
    }
    let mut key = UnixPath {
        bytes: [0; UNIX_PATH_MAX],
    };
    key.bytes[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(key: &UnixPath) -> &str {
        let end = key.bytes.iter().position(|&b| b == 0).unwrap_or(UNIX_PATH_MAX);
        std::str::from_utf8(&key.bytes[..end]).unwrap()
    }

    #[test]
    fn a_unix_target_is_known_by_every_name_of_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let bound = real.join(".s.PGSQL.5432");
        let _server = std::os::unix::net::UnixListener::bind(&bound).unwrap();
        // The operator names the socket through the symlink.
        let configured = link.join(".s.PGSQL.5432");
        let listeners = diag::unix_listeners().unwrap();
        let names = unix_names(configured.to_str().unwrap(), &listeners);
        let names: Vec<&str> = names.iter().map(text).collect();
        assert!(names.contains(&configured.to_str().unwrap()), "{names:?}");
        let canonical = std::fs::canonicalize(&real).unwrap().join(".s.PGSQL.5432");
        assert!(names.contains(&canonical.to_str().unwrap()), "{names:?}");
    }

    #[test]
    fn abstract_names_keep_their_leading_nul() {
        let names = unix_names("@pg", &[]);
        assert_eq!(&names[0].bytes[..3], b"\0pg");
    }

    #[test]
    fn the_table_guards_the_agents_port_and_every_target() {
        let config = crate::config::Config::from_toml(
            "[intercept]\nlisten_port = 15009\n[[target]]\nname = \"db\"\nprotocol = \"tcp\"\naddress = \"local:5432\"\n",
            "t",
        )
        .unwrap();
        let table = build_table(&config.interception(), &["192.0.2.1".parse().unwrap()]).unwrap();
        let lookup = |s: &str| table.lookup(s.parse().unwrap());
        assert_eq!(lookup("127.0.0.1:15009"), Some((Kind::Proxy, 0)));
        assert_eq!(lookup("[::1]:15009"), Some((Kind::Proxy, 0)));
        assert_eq!(lookup("192.0.2.1:5432"), Some((Kind::Target, 0)));
        assert_eq!(lookup("127.0.0.99:5432"), Some((Kind::Target, 0)));
        // The default deny list: the target's port anywhere else.
        assert_eq!(lookup("198.51.100.1:5432"), Some((Kind::Deny, 0)));
        assert_eq!(lookup("198.51.100.1:22"), None);
    }
}
