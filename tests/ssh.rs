//! SSH end to end: a real OpenSSH sshd started here (random port, its own
//! host key), the agent with the HIPAA pack in front of it, and the real
//! OpenSSH client (ssh, sftp) inside the intercepted cgroup, trusting
//! loopgate's SSH host CA through an `@cert-authority` line.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    Agent, Target,
    clinic::{has_ssn, policy_pack},
    loopgate_bin, require_ebpf,
    sshd::{Sshd, keygen},
};
use serde_json::{Value, json};

/// The approver group is a unix group every Debian/Ubuntu has (`users`).
const APPROVERS_GID: u32 = 100;
/// `daemon`: an approver that is not the requester (root).
const ALICE: u32 = 1;
const SSN: &str = "512-34-7788";

/// The agent in front of an sshd, and what the clients need.
struct Fixture {
    // Dropped in order: the agent (and its cgroup), then the server.
    agent: Agent,
    sshd: Sshd,
    dir: tempfile::TempDir,
    /// The client's known_hosts: loopgate's `@cert-authority` line only.
    known_hosts: PathBuf,
    /// A configured PHI path on the "remote" host.
    phi: PathBuf,
    /// A file outside it with the same SSN (what a command may print).
    visits: PathBuf,
}

impl Fixture {
    /// An sshd, the HIPAA pack (PHI paths: `<dir>/phi`), and an agent with
    /// target `box` (127.0.0.1) and, when `impostor`, target `impostor`
    /// (127.0.0.2, the same server) whose pinned host key is another one
    /// and target `transparent` (127.0.0.3) showing the server's own key.
    fn start(impostor: bool) -> Fixture {
        Fixture::start_with(impostor, "process", "")
    }

    /// As [`start`](Self::start), targets with `identity` and the agent
    /// config with `extra`.
    fn start_with(impostor: bool, identity: &str, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("loopgate_ed25519");
        keygen(&key);
        let sshd = Sshd::start(dir.path(), &key);
        let phi = dir.path().join("phi");
        fs::create_dir_all(&phi).unwrap();
        fs::write(phi.join("records.csv"), format!("name,ssn\nalice,{SSN}\n")).unwrap();
        let visits = dir.path().join("visits.csv");
        fs::write(&visits, format!("name,ssn\nalice,{SSN}\n")).unwrap();

        let group = loopgate_e2e::group_name(APPROVERS_GID).unwrap();
        let policies = policy_pack(dir.path(), json!({ "group": group, "timeout_secs": 120 }));
        let catalog_path = policies.join("phi_catalog.json");
        let mut catalog: Value = serde_json::from_slice(&fs::read(&catalog_path).unwrap()).unwrap();
        catalog["phi_catalog"]["ssh"]["phi_paths"] = json!([phi.display().to_string()]);
        fs::write(&catalog_path, serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();

        let pinned = dir.path().join("upstream_known_hosts");
        let mut pins = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key);
        let mut targets = vec![ssh_target("box", identity, sshd.port, "127.0.0.1", &key, &pinned)];
        if impostor {
            let other = dir.path().join("other_host_key");
            keygen(&other);
            let other = fs::read_to_string(other.with_extension("pub")).unwrap();
            let other: Vec<&str> = other.split_whitespace().take(2).collect();
            pins.push_str(&format!("[127.0.0.2]:{} {}\n", sshd.port, other.join(" ")));
            targets.push(ssh_target("impostor", identity, sshd.port, "127.0.0.2", &key, &pinned));
            // `transparent` (127.0.0.3, the same server) presents the
            // server's own host key instead of a certificate.
            pins.push_str(&format!("[127.0.0.3]:{} {}\n", sshd.port, sshd.host_key));
            let mut transparent = ssh_target("transparent", identity, sshd.port, "127.0.0.3", &key, &pinned);
            let host_key = dir.path().join("ssh_host_ed25519_key");
            transparent
                .extra
                .push_str(&format!("presented_key_file = \"{}\"\n", host_key.display()));
            targets.push(transparent);
        }
        fs::write(&pinned, pins).unwrap();
        let extra = format!(
            "[tls]\nca_dir = \"{}\"\n[policy]\ndir = \"{}\"\n{extra}",
            dir.path().join("ca").display(),
            policies.display()
        );
        let agent = Agent::start(&targets, &extra);

        // The operator's step: loopgate puts its CA line into the clients'
        // known_hosts file, keeping what the file held.
        let known_hosts = dir.path().join("client_known_hosts");
        let theirs = format!("[elsewhere.example]:22 {}\n", sshd.host_key);
        fs::write(&known_hosts, &theirs).unwrap();
        let install = ["ssh", "known-hosts", "--install", known_hosts.to_str().unwrap()];
        let out = agent.loopgate(&install).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = fs::read_to_string(&known_hosts).unwrap();
        let line = text.strip_prefix(&theirs).unwrap_or_else(|| panic!("{text}"));
        assert!(line.starts_with("@cert-authority * ssh-ed25519 "), "{line}");
        Fixture {
            agent,
            sshd,
            dir,
            known_hosts,
            phi,
            visits,
        }
    }

    /// OpenSSH client options: no config, only our known_hosts, strict.
    fn options(&self, known_hosts: &Path) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `ssh [extra] root@HOST -p PORT COMMAND` inside the cgroup.
    fn ssh_to(&self, host: &str, known_hosts: &Path, extra: &[&str], command: &str) -> Output {
        let mut args = vec!["ssh".to_owned()];
        args.extend(self.options(known_hosts));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["-p".into(), self.sshd.port.to_string(), format!("root@{host}")]);
        if !command.is_empty() {
            args.push(command.into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent.exec(&args)
    }

    /// An interactive shell on a pty (`ssh -tt`) that is sent `input` as
    /// typed lines.
    fn shell(&self, input: &str) -> Output {
        let mut shell = self.agent.loopgate(&["exec"]);
        shell.arg("--").arg("ssh").args(self.options(&self.known_hosts));
        shell.args(["-tt", "-p", &self.sshd.port.to_string(), "root@127.0.0.1"]);
        let mut shell = shell
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = shell.stdin.take().unwrap();
            writeln!(stdin, "{input}").unwrap();
        }
        shell.wait_with_output().unwrap()
    }

    fn ssh(&self, command: &str) -> Output {
        self.ssh_to("127.0.0.1", &self.known_hosts, &[], command)
    }

    /// `ssh root@127.0.0.1 COMMAND` started in the background.
    fn spawn_ssh(&self, command: &str) -> Child {
        let mut cmd = self.agent.loopgate(&["exec"]);
        cmd.arg("--").arg("ssh").args(self.options(&self.known_hosts));
        cmd.args(["-p", &self.sshd.port.to_string(), "root@127.0.0.1", command]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    }

    fn context(&self, out: &Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\nagent:\n{}\nsshd:\n{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            self.agent.log(),
            self.sshd.log()
        )
    }
}

fn ssh_target(name: &str, identity: &str, port: u16, ip: &str, key: &Path, pinned: &Path) -> Target {
    Target {
        name: name.into(),
        protocol: "ssh".into(),
        address: format!("{ip}:{port}"),
        extra: format!(
            "identity = \"{identity}\"\n[target.ssh]\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n",
            key.display(),
            pinned.display()
        ),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn commands<'e>(events: &'e [Value], kind: &str) -> Vec<&'e Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "command" && e["command"]["kind"] == kind)
        .collect()
}

/// The `kind` command whose recorded text is `text`.
fn command_with_text<'e>(events: &'e [Value], kind: &str, text: &str) -> Option<&'e Value> {
    commands(events, kind)
        .into_iter()
        .find(|c| c["command"]["text"] == text)
}

fn result_of<'e>(events: &'e [Value], command: &Value) -> Option<&'e Value> {
    events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["command_id"] == command["event_id"])
}

#[test]
fn exec_masking_refusals_sftp_and_forwards() {
    require_ebpf!();
    let f = Fixture::start(false);

    // Allowed: the output comes back, the exit status too.
    let out = f.ssh("echo hello; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", f.context(&out));
    assert_eq!(text(&out.stdout), "hello\n");

    // PHI in a remote cat is masked on stdout and stderr (of a file
    // outside the PHI paths: naming those waits for an approver).
    let records = f.phi.join("records.csv");
    let out = f.ssh(&format!("cat {0}; cat {0} >&2", f.visits.display()));
    assert!(out.status.success(), "{}", f.context(&out));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.starts_with("name,ssn\nalice,") && !has_ssn(&stdout), "{stdout}");
    assert!(stderr.contains("alice,") && !has_ssn(&stderr), "{stderr}");

    // An interactive shell on a pty: masked as it streams, recorded as a shell.
    let out = f.shell(&format!("cat {}; exit 0", records.display()));
    assert!(out.status.success(), "{}", f.context(&out));
    let typed = text(&out.stdout);
    assert!(typed.contains("alice,") && !has_ssn(&typed), "{typed}");

    // Refused on a multiplexed connection: exit 126 and why; the next
    // command on the same connection runs.
    let mux = f.dir.path().join("mux");
    let control = [format!("ControlPath={}", mux.display())];
    let master = f
        .agent
        .loopgate(&["exec"])
        .arg("--")
        .arg("ssh")
        .args(f.options(&f.known_hosts))
        .args([
            "-o",
            "ControlMaster=yes",
            "-o",
            &control[0],
            "-o",
            "ControlPersist=60",
            "-N",
            "-f",
        ])
        .args(["-p", &f.sshd.port.to_string(), "root@127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(master.success(), "master: {master}\n{}", f.agent.log());
    let via_mux = ["-o", "ControlMaster=no", "-o", control[0].as_str()];
    let out = f.ssh_to(
        "127.0.0.1",
        &f.known_hosts,
        &via_mux,
        &format!("rm -f {}", records.display()),
    );
    assert_eq!(out.status.code(), Some(126), "{}", f.context(&out));
    assert!(
        text(&out.stderr).contains("hipaa.deny_ssh_phi_delete"),
        "{}",
        f.context(&out)
    );
    assert!(records.exists(), "the refused rm ran");
    let out = f.ssh_to("127.0.0.1", &f.known_hosts, &via_mux, "echo again");
    assert!(out.status.success(), "{}", f.context(&out));
    assert_eq!(text(&out.stdout), "again\n");
    let exit = ["-O", "exit"];
    let _ = f.ssh_to("127.0.0.1", &f.known_hosts, &[&via_mux[..], &exit[..]].concat(), "");

    // sftp: put and get, byte for byte.
    let local = f.dir.path().join("upload.bin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&local, &payload).unwrap();
    let remote = f.dir.path().join("remote");
    fs::create_dir_all(&remote).unwrap();
    fs::write(remote.join("notes.txt"), "ward rounds at nine\n").unwrap();
    let batch = f.dir.path().join("batch");
    let fetched = f.dir.path().join("fetched.txt");
    fs::write(
        &batch,
        format!(
            "put {} {}/up.bin\nget {}/notes.txt {}\n",
            local.display(),
            remote.display(),
            remote.display(),
            fetched.display()
        ),
    )
    .unwrap();
    let mut args = vec!["sftp".to_owned(), "-b".into(), batch.display().to_string()];
    args.extend(f.options(&f.known_hosts));
    args.extend(["-P".into(), f.sshd.port.to_string(), "root@127.0.0.1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = f.agent.exec(&args);
    assert!(out.status.success(), "{}", f.context(&out));
    assert_eq!(fs::read(remote.join("up.bin")).unwrap(), payload);
    assert_eq!(fs::read_to_string(&fetched).unwrap(), "ward rounds at nine\n");
    // scp, legacy protocol (-O: `scp -f` run remotely, not masked) and SFTP mode.
    for (mode, name) in [("-O", "legacy.bin"), ("-s", "sftp.bin")] {
        let copy = f.dir.path().join(name);
        let mut args = vec!["scp".to_owned(), "-q".into(), mode.into()];
        args.extend(f.options(&f.known_hosts));
        args.extend(["-P".into(), f.sshd.port.to_string()]);
        args.extend([
            format!("root@127.0.0.1:{}/up.bin", remote.display()),
            copy.display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = f.agent.exec(&args);
        assert!(out.status.success(), "scp {mode}: {}", f.context(&out));
        assert_eq!(fs::read(&copy).unwrap(), payload, "scp {mode}");
    }
    // scp's legacy protocol into a PHI path is a change: refused before
    // the server's scp runs (its bytes would not be decided one by one).
    let into_phi = f.phi.join("scp-in.bin");
    let mut scp_in = vec!["scp".to_owned(), "-q".into(), "-O".into()];
    scp_in.extend(f.options(&f.known_hosts));
    scp_in.extend(["-P".into(), f.sshd.port.to_string()]);
    scp_in.extend([
        local.display().to_string(),
        format!("root@127.0.0.1:{}", into_phi.display()),
    ]);
    let scp_in: Vec<&str> = scp_in.iter().map(String::as_str).collect();
    let out = f.agent.exec(&scp_in);
    assert_ne!(out.status.code(), Some(0), "{}", f.context(&out));
    assert!(
        text(&out.stderr).contains("hipaa.deny_ssh_phi_change"),
        "{}",
        f.context(&out)
    );
    assert!(!into_phi.exists());

    // Changes under a PHI path are refused operation by operation ("-":
    // the batch goes on), the session stays usable.
    let dropped = f.phi.join("dropped.bin");
    fs::write(
        &batch,
        format!(
            "-put {} {}\n-rm {}\nls {}\n",
            local.display(),
            dropped.display(),
            records.display(),
            remote.display()
        ),
    )
    .unwrap();
    let out = f.agent.exec(&args);
    assert!(out.status.success(), "{}", f.context(&out));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", f.context(&out));
    assert!(text(&out.stdout).contains("up.bin"), "{}", f.context(&out));
    assert!(!dropped.exists() && records.exists());

    // Other spellings of the PHI path, and the requests OpenSSH's sftp
    // sends as extensions (rename is posix-rename@openssh.com, ln is
    // hardlink@openssh.com): each is decided on the path the server
    // resolves, and refused. Links that were on the server before
    // (`data` to the PHI directory, `records-link` to a PHI file) are
    // seen through where the request follows them; removing a link
    // removes only the link, and is allowed.
    let dir = f.dir.path().display().to_string();
    let before = fs::metadata(&records).unwrap().permissions().mode();
    std::os::unix::fs::symlink(&f.phi, remote.join("data")).unwrap();
    std::os::unix::fs::symlink(&records, remote.join("records-link")).unwrap();
    fs::write(
        &batch,
        format!(
            "-rename {remote}/up.bin {dir}//phi/./moved.bin\n\
             -ln {dir}/remote/../phi/records.csv {remote}/hard.csv\n\
             -chmod 777 {dir}/phi//records.csv\n\
             -mkdir {dir}/remote/../phi/new\n\
             -ln -s {dir}/phi {remote}/phi-link\n\
             -put {local} {remote}/data/via-link.bin\n\
             -chmod 777 {remote}/records-link\n\
             -rename {remote}/up.bin {remote}/data/moved.bin\n\
             rm {remote}/records-link\n\
             ls {remote}\n",
            remote = remote.display(),
            local = local.display(),
        ),
    )
    .unwrap();
    let out = f.agent.exec(&args);
    assert!(out.status.success(), "{}", f.context(&out));
    assert_eq!(
        text(&out.stderr).matches("Permission denied").count(),
        8,
        "{}",
        f.context(&out)
    );
    assert!(text(&out.stdout).contains("up.bin"), "{}", f.context(&out));
    assert!(!f.phi.join("moved.bin").exists() && remote.join("up.bin").exists());
    assert!(!remote.join("hard.csv").exists() && !f.phi.join("new").exists());
    assert!(fs::symlink_metadata(remote.join("phi-link")).is_err());
    assert!(!f.phi.join("via-link.bin").exists());
    assert!(fs::symlink_metadata(remote.join("records-link")).is_err() && records.exists());
    assert_eq!(fs::metadata(&records).unwrap().permissions().mode(), before);
    let events = f.agent.wait_events("the refused spellings", |e| {
        commands(e, "ssh_sftp").iter().any(|c| {
            let text = c["command"]["text"].as_str().unwrap();
            text.starts_with("sftp remove") && text.ends_with("/records-link")
        })
    });
    let refused: Vec<&str> = commands(&events, "ssh_sftp")
        .iter()
        .filter(|c| c["decision"]["rule_id"] == "hipaa.deny_sftp_phi_write")
        .map(|c| c["command"]["text"].as_str().unwrap())
        .collect();
    let phi = f.phi.display();
    for shown in [
        format!("sftp rename {}/up.bin {phi}/moved.bin", remote.display()),
        format!("sftp link {phi}/records.csv {}/hard.csv", remote.display()),
        format!("sftp setstat {phi}/records.csv"),
        format!("sftp mkdir {phi}/new"),
        format!("sftp write {phi}/via-link.bin"),
    ] {
        assert!(refused.contains(&shown.as_str()), "{shown} not in {refused:?}");
    }
    assert_eq!(
        refused.iter().filter(|t| t.ends_with("/moved.bin")).count(),
        2,
        "{refused:?}"
    );
    assert_eq!(
        refused.iter().filter(|t| t.contains("setstat")).count(),
        2,
        "{refused:?}"
    );
    let removed = format!("sftp remove {}/records-link", remote.display());
    let removal = command_with_text(&events, "ssh_sftp", &removed).unwrap_or_else(|| panic!("no {removed}"));
    assert_eq!(removal["decision"]["verdict"], "allow", "{removal}");

    // A port forward is refused by the pack; the client says so.
    let target = format!("127.0.0.1:{}", f.sshd.port);
    let out = f.ssh_to("127.0.0.1", &f.known_hosts, &["-W", &target], "");
    assert_ne!(out.status.code(), Some(0), "{}", f.context(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("administratively prohibited") || stderr.contains("stdio forwarding failed"),
        "{}",
        f.context(&out)
    );

    // Once the pack allows forwards (reloaded live), the same forward is
    // relayed: the client reads sshd's banner through the tunnel.
    let catalog_path = f.dir.path().join("policies/phi_catalog.json");
    let mut catalog: Value = serde_json::from_slice(&fs::read(&catalog_path).unwrap()).unwrap();
    catalog["phi_catalog"]["ssh"]["allow_forward"] = json!(true);
    fs::write(&catalog_path, serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    f.agent.wait_events("the policy reload", |e| {
        e.iter()
            .any(|e| e["kind"] == "policy_reload" && e["decision"]["verdict"] != "error")
    });
    let out = f.ssh_to("127.0.0.1", &f.known_hosts, &["-W", &target], "");
    assert!(text(&out.stdout).starts_with("SSH-2.0-OpenSSH"), "{}", f.context(&out));

    // The audit: every request with principal, process and decision.
    let events = f.agent.wait_events("the forwards' records", |e| {
        let forwards = commands(e, "ssh_forward");
        forwards.len() == 2 && result_of(e, forwards[1]).is_some()
    });
    let execs = commands(&events, "ssh_exec");
    assert_eq!(execs.len(), 6, "{execs:?}");
    let scp = execs[4]["command"]["text"].as_str().unwrap();
    assert!(scp.starts_with("scp -f"), "{scp}");
    let scp_in = &execs[5];
    assert!(
        scp_in["command"]["text"].as_str().unwrap().starts_with("scp -t"),
        "{scp_in}"
    );
    assert_eq!(scp_in["decision"]["rule_id"], "hipaa.deny_ssh_phi_change", "{scp_in}");
    let others = [
        commands(&events, "ssh_sftp"),
        commands(&events, "ssh_forward"),
        commands(&events, "ssh_shell"),
    ];
    for c in execs.iter().chain(others.iter().flatten()) {
        assert_eq!(c["principal"]["subject"], "unix:root", "{c}");
        assert_eq!(c["process"]["comm"], "ssh", "{c}");
        assert!(c["decision"]["verdict"].is_string(), "{c}");
        assert_eq!(c["target"]["name"], "box", "{c}");
    }
    let rm = execs
        .iter()
        .find(|c| c["command"]["text"].as_str().unwrap().starts_with("rm -f"))
        .unwrap();
    assert_eq!(rm["decision"]["verdict"], "block");
    assert_eq!(rm["decision"]["rule_id"], "hipaa.deny_ssh_phi_delete");
    let events = f.agent.wait_events("every result", |e| {
        commands(e, "ssh_exec").iter().all(|c| result_of(e, c).is_some())
    });
    let echo = commands(&events, "ssh_exec")[0];
    assert_eq!(echo["decision"]["verdict"], "allow");
    let outcome = &result_of(&events, echo).unwrap()["outcome"];
    assert_eq!(
        (outcome["status"].as_str(), outcome["error_code"].as_str()),
        (Some("failed"), Some("exit:3"))
    );
    let cat = commands(&events, "ssh_exec")[1];
    assert!(
        result_of(&events, cat).unwrap()["outcome"]["masked_count"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(result_of(&events, rm).unwrap()["outcome"]["status"], "blocked");
    let forwards = commands(&events, "ssh_forward");
    assert_eq!(forwards[0]["decision"]["rule_id"], "hipaa.deny_ssh_forward");
    // The destination is recorded with the detectors' masking (an IP
    // address is an identifier under HIPAA), its port as it is.
    let recorded = forwards[0]["command"]["text"].as_str().unwrap();
    assert_eq!(recorded, format!("direct-tcpip ***:{}", f.sshd.port));
    assert_eq!(forwards[1]["decision"]["verdict"], "allow");
    let relayed = &result_of(&events, forwards[1]).unwrap()["outcome"];
    assert!(relayed["bytes_to_client"].as_u64().unwrap() > 0, "{relayed}");
    let sftp = commands(&events, "ssh_sftp");
    assert_eq!(sftp[0]["command"]["text"], "subsystem sftp");
    assert_eq!(sftp[0]["decision"]["verdict"], "allow");
    let op = |text: String| {
        sftp.iter()
            .find(|c| c["command"]["text"] == text.as_str())
            .unwrap_or_else(|| panic!("no {text} in {sftp:?}"))
    };
    let put = op(format!("sftp write {}/up.bin", remote.display()));
    assert_eq!(put["decision"]["verdict"], "allow");
    assert_eq!(result_of(&events, put).unwrap()["outcome"]["status"], "ok");
    let get = op(format!("sftp read {}/notes.txt", remote.display()));
    assert_eq!(result_of(&events, get).unwrap()["outcome"]["status"], "ok");
    for refused in [
        op(format!("sftp write {}", dropped.display())),
        op(format!("sftp remove {}", records.display())),
    ] {
        assert_eq!(refused["decision"]["rule_id"], "hipaa.deny_sftp_phi_write", "{refused}");
        assert_eq!(result_of(&events, refused).unwrap()["outcome"]["status"], "blocked");
    }
    let list = format!("sftp list {}", remote.display());
    let texts: Vec<&str> = sftp.iter().map(|c| c["command"]["text"].as_str().unwrap()).collect();
    let listed = sftp
        .iter()
        .find(|c| c["command"]["text"].as_str().unwrap().starts_with(&list));
    assert_eq!(
        listed.unwrap_or_else(|| panic!("the ls is not recorded: {texts:?}"))["decision"]["verdict"],
        "allow"
    );
    let shell = commands(&events, "ssh_shell")[0];
    assert!(
        shell["command"]["text"].as_str().unwrap().starts_with("shell (pty "),
        "{shell}"
    );
    assert_eq!(result_of(&events, shell).unwrap()["outcome"]["error_code"], "exit:0");
    // The two commands on the multiplexed connection shared one session.
    let again = commands(&events, "ssh_exec")[3];
    assert_eq!(rm["session_id"], again["session_id"]);
    assert!(!events.iter().any(|e| has_ssn(&e.to_string())), "raw PHI in the audit");
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "{report}");
}

/// `loopgate approvals ARGS` as the approver.
fn approvals(f: &Fixture, args: &[&str]) -> Output {
    f.agent.approvals_as(ALICE, &[APPROVERS_GID], args)
}

fn wait_pending(f: &Fixture) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = approvals(f, &["list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(first) = list.first() {
            return first["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "nothing pending\n{}", f.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn held_commands_wait_for_approval() {
    require_ebpf!();
    let f = Fixture::start(false);
    let archive = format!("tar -cf /dev/null {} && echo archived && wc -c", f.phi.display());

    // Approved: the client waits, is told why, then the command runs with
    // all the input it sent meanwhile (more than loopgate buffers: the
    // rest waits in SSH flow control).
    let mut client = f.spawn_ssh(&archive);
    let mut stdin = client.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        stdin.write_all(&vec![b'x'; 3 << 20]).unwrap();
    });
    let id = wait_pending(&f);
    let out = approvals(&f, &["approve", &id, "--reason", "monthly export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", f.context(&out));
    writer.join().unwrap();
    assert_eq!(text(&out.stdout), format!("archived\n{}\n", 3 << 20));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&id) && stderr.contains("hipaa.hold_ssh_phi_archive"),
        "{stderr}"
    );

    // Denied: exit 126, and the reason. (A command reading a PHI file is
    // held too: its output is masked by value detectors only.)
    let mut client = f.spawn_ssh(&format!("cat {}/records.csv", f.phi.display()));
    drop(client.stdin.take());
    let id = wait_pending(&f);
    let out = approvals(&f, &["deny", &id, "--reason", "not today"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", f.context(&out));
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).contains("denied"), "{}", f.context(&out));

    let events = f.agent.wait_events("both results", |e| {
        let held = commands(e, "ssh_exec");
        held.len() == 2 && held.iter().all(|c| result_of(e, c).is_some())
    });
    let held = commands(&events, "ssh_exec");
    assert!(held.iter().all(|c| c["decision"]["verdict"] == "hold"));
    assert_eq!(result_of(&events, held[0]).unwrap()["outcome"]["status"], "ok");
    assert_eq!(result_of(&events, held[1]).unwrap()["outcome"]["status"], "denied");
    assert_eq!(held[1]["decision"]["rule_id"], "hipaa.hold_ssh_phi_read");
}

#[test]
fn untrusting_clients_and_impostor_servers_are_refused() {
    require_ebpf!();
    let f = Fixture::start(true);

    // A client that does not trust loopgate's CA refuses the host itself.
    let empty = f.dir.path().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let out = f.ssh_to("127.0.0.1", &empty, &[], "true");
    assert_eq!(out.status.code(), Some(255), "{}", f.context(&out));
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "{}",
        f.context(&out)
    );

    // The certificate covers the name the client used: the same client
    // trusts the CA for 127.0.0.1 and gets in.
    let out = f.ssh("true");
    assert!(out.status.success(), "{}", f.context(&out));

    // A target that presents the server's own host key: a client that
    // knows only the server's key gets in; one that trusts only loopgate's
    // CA is shown no certificate and refuses.
    let real = f.dir.path().join("real_known_hosts");
    fs::write(&real, format!("[127.0.0.3]:{} {}\n", f.sshd.port, f.sshd.host_key)).unwrap();
    let out = f.ssh_to("127.0.0.3", &real, &[], "echo transparent");
    assert_eq!(text(&out.stdout), "transparent\n", "{}", f.context(&out));
    let out = f.ssh_to("127.0.0.3", &f.known_hosts, &[], "true");
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "{}",
        f.context(&out)
    );

    // The server behind `impostor` does not show the pinned key: refused.
    let out = f.ssh_to("127.0.0.2", &f.known_hosts, &[], "true");
    assert_eq!(out.status.code(), Some(255), "{}", f.context(&out));
    assert!(text(&out.stderr).contains("not the pinned one"), "{}", f.context(&out));
    let events = f.agent.wait_events("the impostor's session end", |e| {
        e.iter()
            .any(|e| e["kind"] == "session_end" && e["target"]["name"] == "impostor")
    });
    let end = events
        .iter()
        .find(|e| e["kind"] == "session_end" && e["target"]["name"] == "impostor")
        .unwrap();
    assert_eq!(end["outcome"]["status"], "refused", "{end}");
    assert!(
        end["decision"]["reason"].as_str().unwrap().contains("host key"),
        "{end}"
    );
    // Nothing ran through the impostor; the transparent target's exec is
    // recorded like any other.
    let targets: Vec<&Value> = commands(&events, "ssh_exec")
        .iter()
        .map(|c| &c["target"]["name"])
        .collect();
    assert_eq!(targets, ["box", "transparent"], "{targets:?}");
}

#[test]
fn rsync_copies_both_ways_over_ssh() {
    require_ebpf!();
    let f = Fixture::start(false);
    let local = f.dir.path().join("tree");
    fs::create_dir_all(local.join("sub")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
    fs::write(local.join("sub/blob.bin"), &blob).unwrap();
    fs::write(local.join("fixture.txt"), format!("test value {SSN}\n")).unwrap();
    let remote = f.dir.path().join("mirror");
    let back = f.dir.path().join("back");
    let ssh = format!("ssh {}", f.options(&f.known_hosts).join(" "));
    let port = f.sshd.port.to_string();
    let shell = format!("{ssh} -p {port}");
    let up = [
        format!("{}/", local.display()),
        format!("root@127.0.0.1:{}/", remote.display()),
    ];
    let down = [
        format!("root@127.0.0.1:{}/", remote.display()),
        format!("{}/", back.display()),
    ];
    for [from, to] in [&up, &down] {
        let out = f.agent.exec(&["rsync", "-a", "-e", &shell, from, to]);
        assert!(out.status.success(), "rsync {from} {to}: {}", f.context(&out));
    }
    assert_eq!(fs::read(back.join("sub/blob.bin")).unwrap(), blob);
    assert_eq!(
        fs::read_to_string(back.join("fixture.txt")).unwrap(),
        format!("test value {SSN}\n")
    );
    let events = f.agent.wait_events("both rsync commands and their results", |e| {
        let execs = commands(e, "ssh_exec");
        execs.len() == 2 && execs.iter().all(|c| result_of(e, c).is_some())
    });
    for c in commands(&events, "ssh_exec") {
        assert!(
            c["command"]["text"].as_str().unwrap().starts_with("rsync --server"),
            "{c}"
        );
        assert_eq!(result_of(&events, c).unwrap()["outcome"]["error_code"], "exit:0");
    }
}

#[test]
fn git_pushes_and_clones_over_ssh() {
    require_ebpf!();
    let f = Fixture::start(false);
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    let repo = f.dir.path().join("repo.git");
    fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "--bare"]);
    let work = f.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    // Binary content and a line that looks like PHI: git's own protocol
    // must arrive unchanged (transfer protocols are not masked).
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect();
    fs::write(work.join("blob.bin"), &blob).unwrap();
    fs::write(work.join("fixture.txt"), format!("test value {SSN}\n")).unwrap();
    git(&work, &["add", "."]);
    git(
        &work,
        &[
            "-c",
            "user.name=ci",
            "-c",
            "user.email=ci@example.org",
            "commit",
            "-q",
            "-m",
            "seed",
        ],
    );
    let ssh = format!("GIT_SSH_COMMAND=ssh {}", f.options(&f.known_hosts).join(" "));
    let url = format!("ssh://root@127.0.0.1:{}{}", f.sshd.port, repo.display());
    let work_dir = work.display().to_string();
    let out = f.agent.exec(&[
        "env",
        &ssh,
        "git",
        "-C",
        &work_dir,
        "push",
        "-q",
        &url,
        "HEAD:refs/heads/main",
    ]);
    assert!(out.status.success(), "{}", f.context(&out));
    let clone = f.dir.path().join("clone");
    let clone_dir = clone.display().to_string();
    let out = f
        .agent
        .exec(&["env", &ssh, "git", "clone", "-q", "-b", "main", &url, &clone_dir]);
    assert!(out.status.success(), "{}", f.context(&out));
    assert_eq!(fs::read(clone.join("blob.bin")).unwrap(), blob);
    assert_eq!(
        fs::read_to_string(clone.join("fixture.txt")).unwrap(),
        format!("test value {SSN}\n")
    );

    let events = f.agent.wait_events("both git commands and their results", |e| {
        let execs = commands(e, "ssh_exec");
        execs.len() == 2 && execs.iter().all(|c| result_of(e, c).is_some())
    });
    let execs = commands(&events, "ssh_exec");
    assert!(
        execs[0]["command"]["text"]
            .as_str()
            .unwrap()
            .starts_with("git-receive-pack"),
        "{}",
        execs[0]
    );
    assert!(
        execs[1]["command"]["text"]
            .as_str()
            .unwrap()
            .starts_with("git-upload-pack"),
        "{}",
        execs[1]
    );
    for c in execs {
        assert_eq!(c["decision"]["verdict"], "allow");
        assert_eq!(result_of(&events, c).unwrap()["outcome"]["error_code"], "exit:0");
    }
}

#[test]
fn oidc_targets_take_the_token_as_the_answer() {
    require_ebpf!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime
        .block_on(loopgate::identity::test_issuer::TestIssuer::start())
        .unwrap();
    let extra = format!(
        "[identity.oidc]\nissuer = \"{}\"\naudience = \"loopgate\"\n",
        issuer.issuer()
    );
    let f = Fixture::start_with(false, "oidc", &extra);
    let mut claims = issuer.claims("ci-bot", "loopgate");
    claims["groups"] = json!(["deployers"]);
    // The client's "password" prompt is answered by SSH_ASKPASS: the token.
    let ask = |token: &str, name: &str| {
        let file = f.dir.path().join(format!("{name}.token"));
        fs::write(&file, token).unwrap();
        let script = f.dir.path().join(format!("{name}.askpass"));
        fs::write(&script, format!("#!/bin/sh\ncat {}\n", file.display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut args: Vec<String> = vec!["env".into(), format!("SSH_ASKPASS={}", script.display())];
        args.extend(["SSH_ASKPASS_REQUIRE=force".into(), "ssh".into()]);
        args.extend(
            f.options(&f.known_hosts)
                .into_iter()
                .map(|o| o.replace("BatchMode=yes", "BatchMode=no")),
        );
        args.extend(["-o".into(), "NumberOfPasswordPrompts=1".into()]);
        args.extend([
            "-p".into(),
            f.sshd.port.to_string(),
            "root@127.0.0.1".into(),
            "echo in".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        f.agent.exec(&args)
    };
    let out = ask(&issuer.mint(&claims), "good");
    assert!(out.status.success(), "{}", f.context(&out));
    assert_eq!(text(&out.stdout), "in\n");
    let out = ask("not-a-token", "bad");
    assert_eq!(out.status.code(), Some(255), "{}", f.context(&out));

    let events = f.agent.wait_events("both sessions' ends", |e| {
        e.iter().filter(|e| e["kind"] == "session_end").count() >= 2
    });
    let exec = commands(&events, "ssh_exec");
    assert_eq!(exec.len(), 1);
    assert_eq!(exec[0]["principal"]["subject"], "ci-bot");
    assert_eq!(exec[0]["principal"]["groups"], json!(["deployers"]));
    let refused = events
        .iter()
        .find(|e| e["kind"] == "session_end" && e["outcome"]["status"] == "auth_failed")
        .expect("the bad token's session refused");
    assert!(
        refused["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("token refused"),
        "{refused}"
    );
}

#[test]
fn shells_and_execs_are_recorded_masked_replayed_and_verified() {
    require_ebpf!();
    let f = Fixture::start(false);
    let records = f.phi.join("records.csv");

    // A shell on a pty: the user types a command whose output holds an SSN.
    let out = f.shell(&format!("echo typed-{SSN}; cat {}; exit 0", records.display()));
    assert!(out.status.success(), "{}", f.context(&out));
    // An exec is recorded too; a transfer protocol (scp) is not.
    let out = f.ssh(&format!("cat {}", f.visits.display()));
    assert!(out.status.success(), "{}", f.context(&out));

    let events = f.agent.wait_events("the results", |e| {
        let done = |kind| commands(e, kind).iter().all(|c| result_of(e, c).is_some());
        commands(e, "ssh_shell").len() == 1
            && commands(e, "ssh_exec").len() == 1
            && done("ssh_shell")
            && done("ssh_exec")
    });
    let recording = |kind: &str| -> (String, String, String) {
        let command = commands(&events, kind)[0];
        let result = result_of(&events, command).unwrap();
        let params: Vec<&str> = result["command"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("no recording in {result}"))
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let get = |key: &str| {
            params
                .iter()
                .find_map(|p| p.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {params:?}"))
                .to_owned()
        };
        (
            get("recording="),
            get("recording_sha256="),
            command["session_id"].as_str().unwrap().to_owned(),
        )
    };
    let (shell_cast, shell_sha, shell_session) = recording("ssh_shell");
    let (exec_cast, _, _) = recording("ssh_exec");
    assert!(
        shell_cast.starts_with("date=") && shell_cast.contains("/recording-") && shell_cast.ends_with(".cast"),
        "{shell_cast}"
    );
    let shell_file = f.agent.audit_dir.join(&shell_cast);
    let cast = fs::read_to_string(&shell_file).unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{header}");
    let events_in: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |code: &str| events_in.iter().any(|e| e[1] == code);
    assert!(has("o") && has("i"), "{cast}");
    assert!(
        cast.contains("alice,") && !has_ssn(&cast),
        "raw PHI in the recording: {cast}"
    );
    // The line typed is read back from the keystrokes into a command event
    // (an audit aid, not a decision), masked, and is the recording's input.
    let typed = commands(&events, "ssh_shell_line");
    assert_eq!(typed.len(), 1, "{typed:?}");
    let line = typed[0]["command"]["text"].as_str().unwrap();
    assert!(
        line.starts_with("echo typed-") && line.ends_with("; exit 0") && !has_ssn(line),
        "{line}"
    );
    assert_eq!(typed[0]["decision"]["rule_id"], "loopgate.ssh_shell_line");
    assert_eq!(typed[0]["session_id"], commands(&events, "ssh_shell")[0]["session_id"]);
    let input: Vec<&str> = events_in
        .iter()
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert_eq!(input, [format!("{line}\r")], "{cast}");
    let exec_text = fs::read_to_string(f.agent.audit_dir.join(&exec_cast)).unwrap();
    assert!(exec_text.contains("alice,") && !has_ssn(&exec_text), "{exec_text}");
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("2 recordings match"), "{report}");

    // Replayed: the timeline and the masked shell output, at once.
    let replay = Command::new(loopgate_bin())
        .args(["audit", "replay", &shell_session, "--no-wait", "--dir"])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    let played = text(&replay.stdout);
    assert!(replay.status.success(), "{played}{}", text(&replay.stderr));
    assert!(played.contains("-- recording 1 of 1: shell"), "{played}");
    assert!(
        played.contains("alice,") && played.contains("typed-") && !has_ssn(&played),
        "{played}"
    );
    // At real speed it takes the time the shell took (a fast replay).
    let started = Instant::now();
    let fast = Command::new(loopgate_bin())
        .args(["audit", "replay", &shell_session, "--speed", "1000", "--dir"])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    assert!(fast.status.success());
    assert_eq!(text(&fast.stdout), played);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A rewritten recording (the SSN put back) is caught by verify, and
    // the replay refuses to play it; a missing one is reported too.
    let forged = cast.replace("alice,***", &format!("alice,{SSN}"));
    assert_ne!(forged, cast, "the mask is not the expected one: {cast}");
    fs::write(&shell_file, &forged).unwrap();
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("recording {shell_cast} was rewritten")),
        "{report}"
    );
    assert!(report.contains(&shell_sha), "{report}");
    let replay = Command::new(loopgate_bin())
        .args(["audit", "replay", &shell_session, "--no-wait", "--dir"])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(1));
    assert!(!has_ssn(&text(&replay.stdout)), "a rewritten recording was played");
    fs::remove_file(f.agent.audit_dir.join(&exec_cast)).unwrap();
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("recording {exec_cast} is missing")),
        "{report}"
    );
}

#[test]
fn user_certificates_log_in_upstream_without_a_stored_key() {
    require_ebpf!();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The sshd authorizes this key for root; loopgate is not given it.
    let key = dir.path().join("someone_else_ed25519");
    keygen(&key);
    let sshd = Sshd::start(dir.path(), &key);
    let pinned = dir.path().join("upstream_known_hosts");
    fs::write(&pinned, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key)).unwrap();
    let target = Target {
        name: "certified".into(),
        protocol: "ssh".into(),
        address: format!("127.0.0.1:{}", sshd.port),
        extra: format!(
            "identity = \"process\"\n[target.ssh]\nuser = \"root\"\nuser_certificate = true\nknown_hosts = \"{}\"\n",
            pinned.display()
        ),
    };
    let extra = format!("[tls]\nca_dir = \"{}\"\n", dir.path().join("ca").display());
    let agent = Agent::start(&[target], &extra);
    let known_hosts = dir.path().join("client_known_hosts");
    let line = agent.loopgate(&["ssh", "known-hosts"]).output().unwrap().stdout;
    fs::write(&known_hosts, line).unwrap();
    let ssh = |command: &str| {
        let options = format!(
            "-F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
             -o BatchMode=yes -o LogLevel=ERROR -p {} root@127.0.0.1",
            known_hosts.display(),
            sshd.port
        );
        let mut args = vec!["ssh"];
        args.extend(options.split(' '));
        args.push(command);
        agent.exec(&args)
    };
    let context = |out: &Output| format!("{}\n{}\nsshd:\n{}", text(&out.stderr), agent.log(), sshd.log());

    // Until the server trusts loopgate's user CA, its login is refused.
    let out = ssh("echo certified");
    assert!(!out.status.success(), "{}", context(&out));
    assert!(
        text(&out.stderr).contains("refused loopgate's login as root"),
        "{}",
        context(&out)
    );

    let ca = agent.loopgate(&["ssh", "user-ca"]).output().unwrap();
    assert!(ca.status.success(), "{}", text(&ca.stderr));
    let ca = text(&ca.stdout);
    assert!(
        ca.starts_with("ssh-ed25519 AAAA") && ca.trim_end().ends_with("loopgate-user-ca"),
        "{ca}"
    );
    fs::write(&sshd.trusted_user_ca_keys, &ca).unwrap();
    let out = ssh("echo certified");
    assert!(out.status.success(), "{}", context(&out));
    assert_eq!(text(&out.stdout), "certified\n");

    // The server's log names the principal and the session of the audit.
    let events = agent.wait_events("the exec", |e| !commands(e, "ssh_exec").is_empty());
    let session = commands(&events, "ssh_exec")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = format!("ID loopgate principal=unix:root session={session}");
    let log = sshd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Accepted publickey for root") && l.contains(&id)),
        "{log}"
    );
}

/// paramiko, a client that is not OpenSSH: exec output masked, a refused
/// command with exit 126, a read of a PHI file held until approved, and
/// SFTP requests OpenSSH's client never sends
/// (relative paths, `chmod` on an open handle, posix-rename, an unknown
/// extension) decided on the paths the server resolves. paramiko cannot
/// check host certificates (`@cert-authority`), so the script accepts
/// the host key it is shown.
#[test]
fn paramiko_execs_and_sftp_requests_are_decided_on_resolved_paths() {
    require_ebpf!();
    let f = Fixture::start(false);
    let records = f.phi.join("records.csv");
    let before = fs::metadata(&records).unwrap().permissions().mode();
    let remote = f.dir.path().join("remote");
    fs::create_dir_all(&remote).unwrap();
    fs::write(remote.join("a.txt"), "rota\n").unwrap();
    fs::write(remote.join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    // The server's working directory is root's home: paths relative to it.
    let up = |p: &Path| format!("../{}", p.display().to_string().trim_start_matches('/'));
    let script = format!(
        r#"
import json, paramiko
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port={port}, username="root", password="any", look_for_keys=False, allow_agent=False)
out = {{}}
def run(cmd):
    _, o, e = c.exec_command(cmd)
    return [o.read().decode(), e.read().decode(), o.channel.recv_exit_status()]
out["cat"] = run("cat {visits}")
out["rm"] = run("rm -f {records}")
s = c.open_sftp()
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except IOError as e:
        out[name] = str(e)
attempt("relative_phi_put", lambda: s.putfo(__import__("io").BytesIO(b"x"), "{rel_phi}/rel.bin"))
attempt("relative_put", lambda: s.putfo(__import__("io").BytesIO(b"y"), "{rel_remote}/rel.bin"))
attempt("fchmod", lambda: s.open("{records}", "r").chmod(0o777))
attempt("posix_rename", lambda: s.posix_rename("{remote}/a.txt", "{phi}//b.txt"))
attempt("unknown", lambda: s._request(paramiko.sftp.CMD_EXTENDED, "rm-rf@example.com"))
attempt("not_utf8", lambda: s.open(b"{remote}/\xff.bin", "w"))
attempt("after", lambda: s.stat("{remote}/a.txt"))
# Every read of an 8 MiB file in flight and their replies waiting, then
# an open loopgate decides while they stream back (it asks the server
# where the path leads meanwhile, on the same connection).
class Replies:
    got = 0
    def _async_response(self, t, msg, num):
        Replies.got += 1
replies = Replies()
big = s.open("{remote}/big.bin", "r")
for offset in range(0, 8 << 20, 32768):
    s._async_request(replies, paramiko.sftp.CMD_READ, big.handle, paramiko.sftp.int64(offset), 32768)
__import__("time").sleep(1)
# A refusal of loopgate's own goes between the server's replies, never
# inside one.
attempt("refused_while_reading", lambda: s.open("{phi}/late.bin", "w"))
attempt("open_while_reading", lambda: s.open("{remote}/other.txt", "w").close())
s.stat("{remote}/a.txt")
out["replies"] = Replies.got
# A connection has at most 64 channels open at once; past that, opens
# are refused, and a slot is free again once a channel ends.
held = []
try:
    while len(held) < 100:
        held.append(c.get_transport().open_session())
except paramiko.ChannelException as e:
    out["channels"] = [len(held), e.code]
for ch in held:
    ch.close()
for _ in range(50):
    try:
        out["reopened"] = run("echo again")
        break
    except paramiko.ChannelException:
        __import__("time").sleep(0.1)
print(json.dumps(out))
"#,
        port = f.sshd.port,
        records = records.display(),
        visits = f.visits.display(),
        remote = remote.display(),
        phi = f.phi.display(),
        rel_phi = up(&f.phi),
        rel_remote = up(&remote),
    );
    let python = loopgate_e2e::python();
    let mut cmd = f.agent.loopgate(&["exec"]);
    cmd.arg("--").arg(&python).args(["-c", &script]);
    let client = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Opening a PHI file to read it (for the fchmod) is a copy out of PHI:
    // it waits for a person, who lets it run.
    let id = wait_pending(&f);
    let approved = approvals(&f, &["approve", &id, "--reason", "fchmod check"]);
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", f.context(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cat = got["cat"].as_array().unwrap();
    assert!(
        cat[0].as_str().unwrap().contains("alice,") && !has_ssn(cat[0].as_str().unwrap()),
        "{got}"
    );
    assert_eq!(cat[2], 0, "{got}");
    let rm = got["rm"].as_array().unwrap();
    assert_eq!(rm[2], 126, "{got}");
    assert!(rm[1].as_str().unwrap().contains("hipaa.deny_ssh_phi_delete"), "{got}");
    for refused in ["relative_phi_put", "fchmod", "posix_rename", "refused_while_reading"] {
        assert!(
            got[refused].as_str().unwrap().contains("hipaa.deny_sftp_phi_write"),
            "{refused}: {got}"
        );
    }
    assert!(
        got["unknown"].as_str().unwrap().contains("loopgate.sftp_unsupported"),
        "{got}"
    );
    // A path that is not UTF-8 is refused: the server would open another
    // file than the one loopgate decided (or asked it about).
    assert!(
        got["not_utf8"].as_str().unwrap().contains("loopgate.sftp_unresolved"),
        "{got}"
    );
    assert_eq!(
        (
            got["relative_put"].as_str(),
            got["after"].as_str(),
            got["open_while_reading"].as_str()
        ),
        (Some("ok"), Some("ok"), Some("ok")),
        "{got}"
    );
    assert_eq!(got["replies"], 256, "{got}");
    // 64 channels, the SFTP one among them; the refusal is
    // OPEN_RESOURCE_SHORTAGE (4).
    assert_eq!(got["channels"], json!([63, 4]), "{got}");
    assert_eq!(got["reopened"][0], "again\n", "{got}");
    assert!(remote.join("other.txt").exists());
    assert_eq!(fs::read_to_string(remote.join("rel.bin")).unwrap(), "y");
    assert!(!f.phi.join("rel.bin").exists() && !f.phi.join("b.txt").exists() && records.exists());
    assert_eq!(fs::metadata(&records).unwrap().permissions().mode(), before);

    let events = f.agent.wait_events("paramiko's requests", |e| {
        commands(e, "ssh_sftp")
            .iter()
            .any(|c| c["decision"]["rule_id"] == "loopgate.sftp_unsupported")
    });
    let texts: Vec<&str> = commands(&events, "ssh_sftp")
        .iter()
        .map(|c| c["command"]["text"].as_str().unwrap())
        .collect();
    let resolved = format!("sftp write {}/rel.bin", f.phi.display());
    assert!(texts.contains(&resolved.as_str()), "{resolved} not in {texts:?}");
    let fchmod = format!("sftp setstat {}", records.display());
    assert!(texts.contains(&fchmod.as_str()), "{fchmod} not in {texts:?}");
    let read = format!("sftp read {}", records.display());
    let held = command_with_text(&events, "ssh_sftp", &read).unwrap_or_else(|| panic!("no {read}"));
    assert_eq!(held["decision"]["rule_id"], "hipaa.hold_sftp_phi_read", "{held}");
    for c in commands(&events, "ssh_exec") {
        assert_eq!(c["process"]["comm"], "python3", "{c}");
    }
}
