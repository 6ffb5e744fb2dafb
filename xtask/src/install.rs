//! `cargo xtask install`: the binary, systemd units, default config and
//! policies, in the places the units expect.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::util;

pub fn install(destdir: Option<&Path>) -> anyhow::Result<()> {
    let root = util::workspace_root();
    let dest = |p: &str| -> PathBuf {
        match destdir {
            Some(d) => d.join(p.trim_start_matches('/')),
            None => PathBuf::from(p),
        }
    };
    let packaging = root.join("agent/packaging");
    copy(
        &root.join("target/release/loopgate"),
        &dest("/usr/local/bin/loopgate"),
        0o755,
    )?;
    for unit in ["loopgate.service", "loopgate-agents.slice"] {
        copy(
            &packaging.join(unit),
            &dest(&format!("/etc/systemd/system/{unit}")),
            0o644,
        )?;
    }
    // An operator's config is never overwritten.
    let config = dest("/etc/loopgate/agent.toml");
    if config.exists() {
        eprintln!("xtask: keeping existing {}", config.display());
    } else {
        copy(&packaging.join("agent.toml"), &config, 0o600)?;
    }
    fs::set_permissions(dest("/etc/loopgate"), fs::Permissions::from_mode(0o700))?;
    copy_policies(&dest("/etc/loopgate/policies"))?;
    if destdir.is_none() && Path::new("/run/systemd/system").exists() {
        util::run("systemctl", &["daemon-reload"])?;
        eprintln!("xtask: installed; start it with `systemctl enable --now loopgate`");
    } else {
        eprintln!("xtask: installed");
    }
    Ok(())
}

/// The HIPAA pack's files into `dir`.
pub fn copy_policies(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(util::workspace_root().join("policies"))? {
        let path = entry?.path();
        if let (true, Some(name)) = (path.is_file(), path.file_name()) {
            copy(&path, &dir.join(name), 0o644)?;
        }
    }
    Ok(())
}

pub fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    // Copy beside, then rename: a running binary is replaced, not rewritten.
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to)?;
    eprintln!("xtask: installed {}", to.display());
    Ok(())
}
