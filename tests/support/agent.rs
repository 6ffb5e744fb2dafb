//! A loopgate agent under test, with its own cgroup, pin directory, port,
//! control socket and audit directory.
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::env::loopgate_bin;

/// A target to intercept, as written in the config.
pub struct Target {
    pub name: String,
    pub protocol: String,
    pub address: String,
    /// More TOML for this target (keys, then sub-tables such as
    /// `[target.upstream]`).
    pub extra: String,
}

impl Target {
    pub fn tcp(name: &str, address: impl ToString) -> Target {
        Target {
            name: name.into(),
            protocol: "tcp".into(),
            address: address.to_string(),
            extra: String::new(),
        }
    }

    /// A PostgreSQL target logging in upstream as `user` with the password
    /// in `password_file`.
    pub fn postgres(name: &str, address: impl ToString, user: &str, password_file: &Path) -> Target {
        Target {
            name: name.into(),
            protocol: "postgres".into(),
            address: address.to_string(),
            extra: format!(
                "identity = \"process\"\n[target.upstream]\nuser = \"{user}\"\npassword_file = \"{}\"\n",
                password_file.display()
            ),
        }
    }
}

pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// cgroup path relative to the cgroup2 mount.
    pub cgroup: String,
    pub cgroup_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    /// The socket approvers use (`loopgate approvals --socket`).
    pub approvals_socket: PathBuf,
    pub audit_dir: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Agent {
    /// Writes a config for `targets` (plus `extra` TOML) and starts the agent.
    pub fn start(targets: &[Target], extra: &str) -> Agent {
        let mut agent = Agent::configure(targets, extra);
        agent.spawn();
        agent
    }

    /// Writes the config without starting the agent.
    pub fn configure(targets: &[Target], extra: &str) -> Agent {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "loopgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new().prefix(&name).tempdir().expect("tempdir");
        let mount = cgroup2_mount();
        let cgroup = name.clone();
        let cgroup_dir = mount.join(&cgroup);
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let port = free_port();
        let socket = dir.path().join("control.sock");
        let approvals_socket = dir.path().join("approvals.sock");
        let audit_dir = dir.path().join("audit");
        // Approvers run as other users: they must reach approvals.sock.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        // `extra` may carry an [approvals] table of its own; ours goes in it.
        let approvals = format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\n",
            approvals_socket.display(),
            dir.path().join("approvals").display()
        );
        let extra = match extra.contains("[approvals]\n") {
            true => extra.replacen("[approvals]\n", &format!("[approvals]\n{approvals}"), 1),
            false => format!("[approvals]\n{approvals}{extra}"),
        };
        // `extra` may carry [intercept] keys (egress, deny, allow): they join ours.
        let (intercept, extra) = take_table(&extra, "intercept");
        let mut toml = format!(
            "[intercept]\ncgroups = [\"{cgroup}\"]\nlisten_port = {port}\npin_dir = \"{}\"\n{intercept}\
             [audit]\ndir = \"{}\"\n[control]\nsocket = \"{}\"\n{extra}\n",
            pin_dir.display(),
            audit_dir.display(),
            socket.display()
        );
        for t in targets {
            toml.push_str(&format!(
                "[[target]]\nname = \"{}\"\nprotocol = \"{}\"\naddress = \"{}\"\n{}",
                t.name, t.protocol, t.address, t.extra
            ));
        }
        let config = dir.path().join("agent.toml");
        fs::write(&config, toml).expect("write config");
        Agent {
            name,
            dir,
            config,
            cgroup,
            cgroup_dir,
            pin_dir,
            port,
            socket,
            approvals_socket,
            audit_dir,
            child: None,
            runs: 0,
        }
    }

    /// Starts (or restarts) the agent and waits until it answers `status`.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.runs += 1;
        let log = fs::File::create(self.dir.path().join(format!("agent-{}.log", self.runs))).expect("log file");
        let child = Command::new(loopgate_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "LOOPGATE_LOG",
                std::env::var("LOOPGATE_TEST_LOG").unwrap_or_else(|_| "info,aya=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start loopgate run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.try_status().is_some() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("agent exited during start-up ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "agent did not become ready:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the agent dies without any chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the agent to exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait for agent")
    }

    /// Sends SIGTERM without waiting; returns the child to wait on.
    pub fn sigterm_nowait(&mut self) -> Child {
        let child = self.child.take().expect("agent not running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child
    }

    /// `loopgate exec -- ARGS` inside the agent's cgroup.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_as(None, args)
    }

    /// `loopgate exec --user USER -- ARGS`.
    pub fn exec_as(&self, user: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = self.loopgate(&["exec"]);
        if let Some(user) = user {
            cmd.args(["--user", user]);
        }
        cmd.arg("--").args(args).output().expect("run loopgate exec")
    }

    /// A `loopgate SUBCOMMAND --config <ours>` command, ready to run.
    pub fn loopgate(&self, subcommand: &[&str]) -> Command {
        let mut cmd = Command::new(loopgate_bin());
        cmd.args(subcommand).arg("--config").arg(&self.config);
        cmd
    }

    /// `loopgate approvals ARGS` run as `uid` with exactly the
    /// supplementary `groups` (by gid): an approver as the kernel sees it.
    pub fn approvals_as(&self, uid: u32, groups: &[u32], args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        cmd.arg("--")
            .arg(loopgate_bin())
            .args(["approvals", "--socket"])
            .arg(&self.approvals_socket)
            .args(args)
            .output()
            .expect("run loopgate approvals")
    }

    /// The agent's `status --json`, or None if it does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let out = self.loopgate(&["status", "--json"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("agent does not answer status:\n{}", self.log()))
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// `loopgate detach` for this agent's pin directory.
    pub fn detach(&self) -> Output {
        self.loopgate(&["detach"]).output().expect("run loopgate detach")
    }

    /// Every audit event recorded so far, as `loopgate audit tail --json`
    /// prints them (Parquet files and the write-ahead log alike).
    pub fn events(&self) -> Vec<Value> {
        let out = Command::new(loopgate_bin())
            .args(["audit", "tail", "--json", "--dir"])
            .arg(&self.audit_dir)
            .output()
            .expect("run loopgate audit tail");
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
            .collect()
    }

    /// `loopgate audit verify` of this agent's trail: (exit status, output).
    pub fn verify_audit(&self) -> (Option<i32>, String) {
        let out = Command::new(loopgate_bin())
            .args(["audit", "verify", "--dir"])
            .arg(&self.audit_dir)
            .output()
            .expect("run loopgate audit verify");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the recorded events satisfy `done`, and returns them.
    pub fn wait_events(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events so far:\n{}",
                events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log output (all runs).
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| fs::read_to_string(self.dir.path().join(format!("agent-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(crate::env::loopgate_bin_unchecked())
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        remove_cgroup(&self.cgroup_dir);
        let _ = fs::remove_dir_all(&self.pin_dir);
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.name, self.log());
        }
    }
}

/// Splits the keys of `[name]` out of a TOML text: (those keys, the rest).
fn take_table(text: &str, name: &str) -> (String, String) {
    let header = format!("[{name}]\n");
    let Some(start) = text.find(&header) else {
        return (String::new(), text.to_owned());
    };
    let body_start = start + header.len();
    let body_end = text[body_start..]
        .find("\n[")
        .map_or(text.len(), |i| body_start + i + 1);
    let body = text[body_start..body_end].to_owned();
    let rest = format!("{}{}", &text[..start], &text[body_end..]);
    (body, rest)
}

/// Kills what is left in a test cgroup (and its children), then removes it.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for child in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_cgroup(&child.path());
        }
    }
    for _ in 0..50 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: killing a leftover process of this test's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if !right.starts_with("cgroup2 ") {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .expect("cgroup2 mount")
}

/// A port free on both 127.0.0.1 and [::1] right now.
fn free_port() -> u16 {
    loop {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = v4.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}
