//! `cargo xtask package`: a Debian package of the agent, built with
//! dpkg-deb from a staged tree — binary in /usr/bin, units in
//! /lib/systemd/system, the default config and the HIPAA pack in
//! /etc/loopgate (conffiles: an operator's edits survive upgrades), and
//! maintainer scripts that never attach interception on install
//! (agent/packaging/deb/).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{
    install::{copy, copy_policies},
    util,
};

/// Packages `binary` into `out`/loopgate_<version>_<arch>.deb and returns
/// the package's path.
pub fn package(binary: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let root = util::workspace_root();
    let packaging = root.join("agent/packaging");
    let stage = out.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).context("clearing the previous staging tree")?;
    }
    let installed = stage.join("usr/bin/loopgate");
    copy(binary, &installed, 0o755)?;
    // As Debian does: debug info out of the shipped binary.
    util::run("strip", &["--strip-debug", &installed.to_string_lossy()])?;
    for unit in ["loopgate.service", "loopgate-agents.slice"] {
        let text = fs::read_to_string(packaging.join(unit))?
            .replace("/usr/local/bin/loopgate", "/usr/bin/loopgate")
            .replace("/usr/local/share/doc/loopgate", "/usr/share/doc/loopgate");
        write(&stage.join("lib/systemd/system").join(unit), &text, 0o644)?;
    }
    let config = stage.join("etc/loopgate/agent.toml");
    copy(&packaging.join("agent.toml"), &config, 0o600)?;
    copy_policies(&stage.join("etc/loopgate/policies"))?;
    fs::set_permissions(stage.join("etc/loopgate"), fs::Permissions::from_mode(0o700))?;
    let doc = stage.join("usr/share/doc/loopgate");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: loopgate\nFiles: *\nLicense: Apache-2.0\n",
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&packaging.join("deb").join(script), &debian.join(script), 0o755)?;
    }
    let mut conffiles = vec!["/etc/loopgate/agent.toml".to_owned()];
    for entry in fs::read_dir(stage.join("etc/loopgate/policies"))? {
        conffiles.push(format!(
            "/etc/loopgate/policies/{}",
            entry?.file_name().to_string_lossy()
        ));
    }
    conffiles.sort();
    write(&debian.join("conffiles"), &(conffiles.join("\n") + "\n"), 0o644)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = util::output("dpkg", &["--print-architecture"]).context("dpkg --print-architecture")?;
    let arch = arch.trim();
    let size_kib = du_kib(&stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: loopgate\nVersion: {version}\nArchitecture: {arch}\nMaintainer: loopgate developers <loopgate@example.org>\n\
             Section: admin\nPriority: optional\nDepends: libc6 (>= 2.34)\nInstalled-Size: {size_kib}\n\
             Description: audit, mask, block and approve what automations do to PHI services\n \
             A host agent: eBPF redirects intercepted cgroups' connections into its proxy,\n \
             which records every command in a hash-chained Parquet audit trail, masks PHI\n \
             in results, blocks dangerous commands and holds risky ones for approval.\n \
             Installing attaches nothing: enable the service when configured.\n"
        ),
        0o644,
    )?;
    let deb = out.join(format!("loopgate_{version}_{arch}.deb"));
    let status = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("running dpkg-deb (package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb failed ({status})");
    }
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Installed size in KiB, as dpkg wants it (DEBIAN/ excluded).
fn du_kib(stage: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += meta.len();
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total.div_ceil(1024))
}
