//! pgbench through loopgate against direct and against pgbouncer (session
//! mode), in one run on one server: `-S` (select only) and TPC-B, 1, 4 and
//! 8 clients. loopgate runs with masking, the built-in policy and audit on.
//!
//! Run as root: `cargo xtask bench -- --bench pgbench` (env PGBENCH_SECONDS
//! sets the length of each run, default 10).
//!
//! Besides throughput it reports the proxy's CPU per transaction (loopgate's
//! and pgbouncer's own processes, every thread, from the kernel's schedstat):
//! on a shared machine that moves far less than TPS does.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use loopgate_e2e::{
    Agent, Target,
    postgres::{self, APP_PASSWORD, APP_USER, PgOptions, PgServer, SUPERUSER, SUPERUSER_PASSWORD},
};

const SCALE: &str = "10";

fn main() {
    if !loopgate_e2e::ebpf_available() {
        eprintln!("the pgbench benchmark needs root and cgroup v2");
        return;
    }
    let seconds: u64 = std::env::var("PGBENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let pg = PgServer::start(PgOptions::default());
    let pgbench = postgres::pg_bin().join("pgbench");
    let host = pg.addr.ip().to_string();
    let port = pg.addr.port().to_string();
    let init = Command::new(&pgbench)
        .args([
            "-i", "-q", "-s", SCALE, "-h", &host, "-p", &port, "-U", SUPERUSER, "postgres",
        ])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    pg.psql(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_USER}"));

    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("pw");
    std::fs::write(&password_file, APP_PASSWORD).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // PGBENCH_AGENT_TOML adds agent config, e.g. "[proxy]\nworkers = 1".
    let extra = std::env::var("PGBENCH_AGENT_TOML").unwrap_or_default();
    let agent = Agent::start(
        &[Target::postgres("bench-db", pg.addr, APP_USER, &password_file)],
        &extra,
    );
    let bouncer = PgBouncer::start(pg.addr);

    let logs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(logs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    println!("pgbench, scale {SCALE}, {seconds} s per run, simple protocol; 2 CPUs shared by client, proxy and server");
    println!(
        "{:<10} {:>7} {:<22} {:>9} {:>8} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "workload", "clients", "path", "TPS", "vs direct", "lat avg", "p50", "p99", "proxy CPU/tx", "vs pgbouncer"
    );
    // PGBENCH_ONLY=loopgate (or direct, pgbouncer) runs one path, e.g. to profile it.
    let only = std::env::var("PGBENCH_ONLY").ok();
    for (workload, flag) in [("select", Some("-S")), ("tpc-b", None)] {
        for clients in [1, 4, 8] {
            let mut direct_tps = None;
            let mut bouncer_cpu = None;
            for path in ["direct", "pgbouncer (session)", "loopgate"] {
                if only.as_deref().is_some_and(|o| !path.starts_with(o)) {
                    continue;
                }
                let log_prefix = logs.path().join(format!(
                    "{workload}-{clients}-{}",
                    path.split(' ').next().unwrap_or(path)
                ));
                let mut args: Vec<String> = vec![
                    "-n".into(),
                    "-T".into(),
                    seconds.to_string(),
                    "-c".into(),
                    clients.to_string(),
                    "-j".into(),
                    clients.min(2).to_string(),
                    "-l".into(),
                    format!("--log-prefix={}", log_prefix.display()),
                ];
                args.extend(flag.map(str::to_owned));
                let proxy_pid = match path {
                    "direct" => None,
                    "loopgate" => agent.pid(),
                    _ => bouncer.pid(),
                };
                let cpu_before = proxy_pid.map(cpu_ns);
                let out = match path {
                    "direct" => Command::new(&pgbench)
                        .args(&args)
                        .args(["-h", &host, "-p", &port, "-U", APP_USER, "postgres"])
                        .env("PGPASSWORD", APP_PASSWORD)
                        .output(),
                    "loopgate" => {
                        let mut argv: Vec<&str> = vec![pgbench.to_str().unwrap()];
                        argv.extend(args.iter().map(String::as_str));
                        argv.extend(["-h", &host, "-p", &port, "-U", "anyone", "postgres"]);
                        Ok(agent.exec(&argv))
                    }
                    _ => Command::new(&pgbench)
                        .args(&args)
                        .args([
                            "-h",
                            "127.0.0.1",
                            "-p",
                            &bouncer.port.to_string(),
                            "-U",
                            APP_USER,
                            "postgres",
                        ])
                        .env("PGPASSWORD", APP_PASSWORD)
                        .output(),
                }
                .expect("run pgbench");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{path}: {}\n{stdout}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let tps = number_after(&stdout, "tps = ").unwrap_or(0.0);
                let transactions = number_after(&stdout, "actually processed: ").unwrap_or(0.0);
                let cpu_us = match (proxy_pid, cpu_before) {
                    (Some(pid), Some(before)) if transactions > 0.0 => {
                        Some(cpu_ns(pid).saturating_sub(before) as f64 / 1000.0 / transactions)
                    }
                    _ => None,
                };
                if path.starts_with("pgbouncer") {
                    bouncer_cpu = cpu_us;
                }
                let cpu_per_tx = cpu_us.map_or("-".to_owned(), |us| format!("{us:.1}µs"));
                let vs_bouncer = match (path, cpu_us, bouncer_cpu) {
                    ("loopgate", Some(us), Some(b)) if b > 0.0 => format!("{:.2}×", us / b),
                    _ => "-".to_owned(),
                };
                let avg = number_after(&stdout, "latency average = ").unwrap_or(0.0);
                let (p50, p99) = percentiles(logs.path(), &log_prefix);
                if path == "direct" {
                    direct_tps = Some(tps);
                }
                // Without a direct run (PGBENCH_ONLY) there is nothing to compare.
                let vs_direct = match direct_tps {
                    Some(d) if d > 0.0 => format!("{:.0}%", 100.0 * tps / d),
                    _ => "-".to_owned(),
                };
                println!(
                    "{workload:<10} {clients:>7} {path:<22} {tps:>9.0} {vs_direct:>8} {avg:>7.3}ms {p50:>7.3}ms {p99:>7.3}ms {cpu_per_tx:>12} {vs_bouncer:>12}"
                );
            }
        }
    }
    drop(bouncer);
}

fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// CPU time (ns) of every thread of `pid` so far: the first field of each
/// thread's schedstat, which the kernel keeps in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// p50 and p99 latency (ms) from pgbench's per-transaction logs.
fn percentiles(dir: &Path, prefix: &Path) -> (f64, f64) {
    let stem = prefix.file_name().unwrap().to_string_lossy().into_owned();
    let mut micros: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // client_id transaction_no time script_no time_epoch time_us
        micros.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    if micros.is_empty() {
        return (0.0, 0.0);
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// A pgbouncer in session mode in front of the server, run as `postgres`
/// (it refuses to run as root).
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start(server: SocketAddr) -> PgBouncer {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = postgres::postgres_ids();
        postgres::chown(dir.path(), uid, gid);
        let port = postgres::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("users.txt");
        std::fs::write(&users, format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n")).unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host={} port={} dbname=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = 100\n\
                 default_pool_size = 20\nlogfile = {}\n",
                server.ip(),
                server.port(),
                users.display(),
                dir.path().join("pgbouncer.log").display()
            ),
        )
        .unwrap();
        for f in [&ini, &users] {
            postgres::chown(f, uid, gid);
        }
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer (apt-get install pgbouncer)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer { child, port, _dir: dir }
    }
}

impl PgBouncer {
    /// pgbouncer's own pid (the child of `runuser`).
    fn pid(&self) -> Option<u32> {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id())).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
