//! SSH through loopgate against direct, on one sshd: the latency of
//! `ssh host true` (a whole connection: handshake, auth, exec, close) and
//! the throughput of an scp download (SFTP mode). loopgate runs with the
//! built-in policy, output masking and audit on.
//!
//! Direct and through loopgate alternate in rounds (connections in rounds
//! of 20, copies one by one), so a change in the machine's load falls on
//! both; the load average before and after is printed.
//!
//! Run as root: `cargo xtask bench -- --bench ssh` (env SSH_BENCH_RUNS
//! sets the number of connections, default 200; SSH_BENCH_MIB the file
//! size, default 1024; SSH_BENCH_COPIES the copies each way, default 3;
//! SSH_BENCH_KEX the client's KexAlgorithms, for both paths, to compare
//! like with like: OpenSSH's default prefers post-quantum hybrids).
use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use loopgate_e2e::{
    Agent, Target,
    bench::{env_u64, machine_state, p50_p99},
    sshd::{Sshd, keygen},
};

/// Runs `ssh ... true` N times and prints the wall time of each, in ms.
const LOOP: &str = r#"
import subprocess, sys, time
n = int(sys.argv[1])
for _ in range(n):
    t = time.perf_counter()
    subprocess.run(sys.argv[2:], check=True)
    print((time.perf_counter() - t) * 1000)
"#;

fn main() {
    if !loopgate_e2e::ebpf_available() {
        eprintln!("the ssh benchmark needs root and cgroup v2");
        return;
    }
    let runs = env_u64("SSH_BENCH_RUNS", 200);
    let mib = env_u64("SSH_BENCH_MIB", 1024);
    let copies = env_u64("SSH_BENCH_COPIES", 3);
    println!("{}", machine_state());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("loopgate_ed25519");
    keygen(&key);
    let sshd = Sshd::start(dir.path(), &key);
    let pinned = dir.path().join("pinned");
    fs::write(&pinned, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key)).unwrap();
    let target = Target {
        name: "bench-host".into(),
        protocol: "ssh".into(),
        address: format!("127.0.0.1:{}", sshd.port),
        extra: format!(
            "identity = \"process\"\n[target.ssh]\nuser = \"root\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n",
            key.display(),
            pinned.display()
        ),
    };
    let extra = format!("[tls]\nca_dir = \"{}\"\n", dir.path().join("ca").display());
    let agent = Agent::start(&[target], &extra);
    let line = agent.loopgate(&["ssh", "known-hosts"]).output().unwrap().stdout;
    let through_hosts = dir.path().join("through_known_hosts");
    fs::write(&through_hosts, line).unwrap();
    // Direct: the same client, outside the cgroup, trusting the real key.
    let direct_hosts = dir.path().join("direct_known_hosts");
    fs::write(&direct_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key)).unwrap();

    let ssh = |known_hosts: &Path, identity: bool| {
        let mut args: Vec<String> = [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(["-o".into(), format!("UserKnownHostsFile={}", known_hosts.display())]);
        args.extend(["-o".into(), "GlobalKnownHostsFile=/dev/null".into()]);
        if identity {
            args.extend([
                "-i".into(),
                key.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        args.extend(["-o".into(), "LogLevel=ERROR".into()]);
        if let Ok(kex) = std::env::var("SSH_BENCH_KEX") {
            args.extend(["-o".into(), format!("KexAlgorithms={kex}")]);
        }
        args
    };
    let script = dir.path().join("loop.py");
    fs::write(&script, LOOP).unwrap();
    let python = loopgate_e2e::python().display().to_string();
    let latency = |through: bool, runs: u64| {
        let mut args = vec![
            python.clone(),
            script.display().to_string(),
            runs.to_string(),
            "ssh".into(),
        ];
        args.extend(ssh(if through { &through_hosts } else { &direct_hosts }, !through));
        args.extend([
            "-p".into(),
            sshd.port.to_string(),
            "root@127.0.0.1".into(),
            "true".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if through {
            agent.exec(&args)
        } else {
            Command::new(args[0]).args(&args[1..]).output().unwrap()
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect::<Vec<f64>>()
    };
    // A few connections each way first (caches, the agent's first session).
    latency(false, 5);
    latency(true, 5);
    let (mut direct_ms, mut through_ms) = (Vec::new(), Vec::new());
    let mut left = runs;
    while left > 0 {
        let round = left.min(20);
        direct_ms.extend(latency(false, round));
        through_ms.extend(latency(true, round));
        left -= round;
    }
    println!("ssh host true x{runs} each way (a new connection each), ms; client, proxy and server share the CPUs");
    let (d50, d99) = p50_p99(&mut direct_ms);
    let (t50, t99) = p50_p99(&mut through_ms);
    println!("  direct          p50 {d50:7.2}  p99 {d99:7.2}");
    println!(
        "  through loopgate p50 {t50:7.2}  p99 {t99:7.2}  (added p50 {:.2}, p99 {:.2})",
        t50 - d50,
        t99 - d99
    );

    let file = dir.path().join("payload.bin");
    let f = fs::File::create(&file).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let copy = |through: bool| {
        let mut args = vec!["scp".to_owned(), "-q".into()];
        args.extend(ssh(if through { &through_hosts } else { &direct_hosts }, !through));
        args.extend(["-P".into(), sshd.port.to_string()]);
        args.extend([format!("root@127.0.0.1:{}", file.display()), "/dev/null".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = if through {
            agent.exec(&args)
        } else {
            Command::new(args[0]).args(&args[1..]).output().unwrap()
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    };
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..copies {
        direct.push(copy(false));
        through.push(copy(true));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let show = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", rate(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("scp (SFTP) download of {mib} MiB to /dev/null, MiB/s, {copies} copies each way, alternating");
    println!(
        "  direct           {}  (each: {})",
        fmt_rate(rate(median(&mut direct))),
        show(&direct)
    );
    println!(
        "  through loopgate {}  (each: {})  ratio of medians {:.2}",
        fmt_rate(rate(median(&mut through))),
        show(&through),
        median(&mut direct).as_secs_f64() / median(&mut through).as_secs_f64()
    );
    println!("{}", machine_state());
}

fn fmt_rate(r: f64) -> String {
    format!("{r:8.1}")
}
