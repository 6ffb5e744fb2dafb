//! Running commands, and finding the workspace.
use std::{
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn is_root() -> bool {
    // Effective uid, read without unsafe: /proc/self/status "Uid: real effective ...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program args` in `dir`, failing unless it exits 0.
pub fn run_in(dir: &Path, program: &str, args: &[&str], env: &[(&str, OsString)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    status(cmd, &format!("{program} {}", args.join(" ")))
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_in(&workspace_root(), program, args, &[])
}

pub fn cargo(args: &[&str], env: &[(&str, OsString)]) -> anyhow::Result<()> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    cargo_os(&args, env)
}

pub fn cargo_os(args: &[OsString], env: &[(&str, OsString)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    status(cmd, &format!("cargo {}", shown.join(" ")))
}

fn status(mut cmd: Command, shown: &str) -> anyhow::Result<()> {
    eprintln!("xtask: {shown}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The trimmed standard output of a command, or None if it failed.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Replaces this process with `binary args`, through sudo when not root.
pub fn exec_as_root(binary: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let err = if is_root() {
        Command::new(binary).args(args).exec()
    } else {
        Command::new("sudo").arg("--").arg(binary).args(args).exec()
    };
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}

pub fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}
