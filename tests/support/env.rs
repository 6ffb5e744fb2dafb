//! What the tests need from the machine, and where to find it.
use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The loopgate binary under test: $LOOPGATE_BIN (set by `cargo xtask
/// test`), else the workspace's debug build.
pub fn loopgate_bin() -> PathBuf {
    let path = loopgate_bin_unchecked();
    assert!(
        path.is_file(),
        "loopgate binary not found at {}: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Where the binary should be, whether or not it is there (for clean-up
/// paths, which must not panic).
pub(crate) fn loopgate_bin_unchecked() -> PathBuf {
    let path = std::env::var_os("LOOPGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/loopgate"));
    if path.is_relative() {
        workspace_root().join(path)
    } else {
        path
    }
}

/// The Python of the test venv ($LOOPGATE_PYTHON, else target/venv).
pub fn python() -> PathBuf {
    let path = std::env::var_os("LOOPGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/venv/bin/python3"));
    assert!(
        path.exists(),
        "test Python not found at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Whether eBPF end-to-end tests can run: root, cgroup v2, bpf(2) allowed.
/// Where LOOPGATE_REQUIRE_EBPF=1, a missing capability fails the test.
pub fn ebpf_available() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(check_ebpf);
    match check {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("LOOPGATE_REQUIRE_EBPF").as_deref() == Ok("1") {
                panic!("eBPF end-to-end tests cannot run here, and LOOPGATE_REQUIRE_EBPF=1: {why}");
            }
            eprintln!("SKIPPED (set LOOPGATE_REQUIRE_EBPF=1 to fail instead): {why}");
            false
        }
    }
}

fn check_ebpf() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    if !mountinfo
        .lines()
        .any(|l| l.split(" - ").nth(1).is_some_and(|r| r.starts_with("cgroup2 ")))
    {
        return Err("no cgroup2 file system is mounted".into());
    }
    Ok(())
}

/// The name of the group with `gid` (approver groups in the tests are
/// named by gid so they exist on every Debian/Ubuntu machine).
pub fn group_name(gid: u32) -> Result<String, String> {
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&gid.to_string().as_str())).then(|| f[0].to_owned())
        })
        .ok_or_else(|| format!("no group with gid {gid} in /etc/group"))
}
