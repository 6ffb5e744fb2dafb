//! The Debian package, installed into a fresh Debian tree (debootstrap,
//! built once by `cargo xtask setup`), never on this machine: what dpkg
//! installs, that installing attaches nothing, that the agent runs from the
//! package, and that removing the package detaches interception.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use loopgate_e2e::{agent::cgroup2_mount, env::workspace_root, loopgate_bin, require_ebpf};

/// The unpacked tree with /proc, /sys, /dev and bpffs bound in; unmounted
/// and removed on drop, failures included.
struct Tree {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    cgroup: PathBuf,
    pins: PathBuf,
}

impl Tree {
    fn unpack() -> Tree {
        let tarball = workspace_root().join("target/tools/debian-minbase.tar");
        assert!(
            tarball.exists(),
            "{} is missing: run `cargo xtask setup` as root",
            tarball.display()
        );
        let dir = tempfile::Builder::new().prefix("loopgate-deb-").tempdir().unwrap();
        run(Command::new("tar").arg("-C").arg(dir.path()).arg("-xf").arg(&tarball));
        let name = format!("loopgate-deb-{}", std::process::id());
        let mut tree = Tree {
            cgroup: cgroup2_mount().join(&name),
            pins: PathBuf::from("/sys/fs/bpf").join(&name),
            dir,
            mounts: Vec::new(),
        };
        for m in ["proc", "sys", "dev", "sys/fs/bpf", "sys/fs/cgroup"] {
            let target = tree.path(m);
            std::fs::create_dir_all(&target).unwrap();
            run(Command::new("mount").args(["--rbind", &format!("/{m}")]).arg(&target));
            run(Command::new("mount").args(["--make-rslave"]).arg(&target));
            tree.mounts.push(target);
        }
        tree
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn chroot(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(self.dir.path())
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap()
    }

    fn chroot_ok(&self, args: &[&str]) -> String {
        let out = self.chroot(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Whatever the test left attached goes with the tree.
        let _ = Command::new(loopgate_bin())
            .args(["detach", "--pin-dir"])
            .arg(&self.pins)
            .output();
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(m).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cargo xtask package` of the agent the tests use, into `out`.
fn build_package(out: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--", "package", "--binary"])
        .arg(loopgate_bin())
        .arg("--out")
        .arg(out)
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(status.success(), "cargo xtask package failed");
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in the output directory")
}

#[test]
fn the_package_installs_attaches_nothing_runs_and_detaches_on_removal() {
    require_ebpf!();
    let out = tempfile::tempdir().unwrap();
    let deb = build_package(out.path());
    let tree = Tree::unpack();
    std::fs::copy(&deb, tree.path("/tmp/loopgate.deb")).unwrap();

    // Install: files in place, a group for approvers, nothing attached.
    let installed = tree.chroot_ok(&["dpkg", "-i", "/tmp/loopgate.deb"]);
    assert!(installed.contains("installed, not running"), "{installed}");
    assert!(tree.path("/usr/bin/loopgate").exists());
    assert!(tree.path("/lib/systemd/system/loopgate.service").exists());
    let unit = std::fs::read_to_string(tree.path("/lib/systemd/system/loopgate.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/loopgate run"), "{unit}");
    assert!(tree.path("/etc/loopgate/policies/hipaa.rego").exists());
    assert!(
        tree.chroot_ok(&["getent", "group", "loopgate"])
            .starts_with("loopgate:")
    );
    assert!(!tree.pins.exists(), "installing attached something");
    let version = tree.chroot_ok(&["loopgate", "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    tree.chroot_ok(&["loopgate", "check", "--config", "/etc/loopgate/agent.toml"]);

    // The operator configures it and runs it: interception attaches to a
    // cgroup of this test, pinned where the package's config says.
    std::fs::create_dir_all(&tree.cgroup).unwrap();
    let cgroup = tree
        .cgroup
        .strip_prefix(cgroup2_mount())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let config = format!(
        "[intercept]\ncgroups = [\"{cgroup}\"]\nlisten_port = {}\npin_dir = \"{}\"\n\
         [audit]\ndir = \"/var/lib/loopgate/audit\"\n[control]\nsocket = \"/run/loopgate-test.sock\"\n\
         [approvals]\nsocket = \"/run/loopgate-test-approvals.sock\"\nstate_dir = \"/var/lib/loopgate/approvals\"\n",
        loopgate_e2e::postgres::free_port("127.0.0.1".parse().unwrap()),
        tree.pins.display()
    );
    std::fs::write(tree.path("/etc/loopgate/agent.toml"), config).unwrap();
    let mut agent = Command::new("chroot")
        .arg(tree.dir.path())
        .args(["/usr/bin/loopgate", "run", "--config", "/etc/loopgate/agent.toml"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let control = tree.path("/run/loopgate-test.sock");
    while !control.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    assert!(
        tree.pins.exists(),
        "the agent did not attach (or its pins went with it)"
    );

    // Removal detaches: nothing of loopgate stays on the machine's cgroups.
    let removed = tree.chroot_ok(&["dpkg", "-r", "loopgate"]);
    assert!(!tree.pins.exists(), "pins left after removal: {removed}");
    assert!(!tree.path("/usr/bin/loopgate").exists());
    // The operator's configuration survives removal, not purge; the audit
    // trail survives both.
    assert!(tree.path("/etc/loopgate/agent.toml").exists());
    let purged = tree.chroot_ok(&["dpkg", "--purge", "loopgate"]);
    assert!(!tree.path("/etc/loopgate/agent.toml").exists(), "{purged}");
    assert!(
        tree.path("/var/lib/loopgate/audit").exists(),
        "the audit trail was deleted"
    );
}
