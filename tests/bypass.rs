//! Interception as a local attacker tries to walk around it: real cgroups,
//! real eBPF, a real PostgreSQL on several addresses and a unix socket,
//! real psql. Each attempt must be refused (or redirected) and recorded.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    Agent, EchoServer, PgOptions, PgServer, Target,
    echo::unique_loopback_ip,
    postgres::{APP_PASSWORD, APP_USER},
    require_ebpf,
};
use serde_json::Value;

/// The system Python, which every user may run (the venv is under /root).
const PYTHON: &str = "/usr/bin/python3";

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `body` (Python; `socket` is imported) inside the cgroup and returns
/// what it printed, or the name of the exception it raised.
fn try_inside(agent: &Agent, body: &str) -> String {
    let indented: String = body.lines().map(|l| format!("  {l}\n")).collect();
    let script = format!("import socket\ntry:\n{indented}except Exception as e:\n  print(type(e).__name__)\n");
    let out = agent.exec(&[PYTHON, "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs a Python snippet outside the cgroup as `nobody`.
fn outside_as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            PYTHON,
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv")
}

fn signal(agent: &Agent, sig: i32) {
    let pid = agent.pid().expect("agent running") as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, sig) };
}

fn refusals<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["decision"]["rule_id"] == rule).collect()
}

/// A source port free on 127.0.0.1 right now.
fn free_source_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_stale_source_port_does_not_lend_its_identity() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let port = free_source_port();

    // The victim (root, inside the cgroup) connects from a fixed source port
    // while the agent is frozen: the kernel completes the handshake and
    // keeps its record, but the agent never accepts it.
    signal(&agent, libc::SIGSTOP);
    let victim_script = format!(
        "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{port}))\ns.connect(('{}',{}))\nprint('connected',flush=True)\ntime.sleep(60)",
        server.addr.ip(),
        server.addr.port()
    );
    let mut victim = agent
        .loopgate(&["exec"])
        .args(["--", PYTHON, "-c", &victim_script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(victim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");
    // Killed while still frozen: the connection dies in the accept queue.
    agent.kill9();
    agent.spawn();

    // The attacker: outside the cgroup, unprivileged, same source port,
    // straight to the agent's port.
    // (The victim's reset socket may hold the port for a moment: retry.)
    let attacker = outside_as_nobody(&format!(
        "import socket,time\nfor _ in range(100):\n\
         \x20 try:\n\
         \x20   s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         \x20   s.bind(('127.0.0.1',{port})); s.settimeout(10); s.connect(('127.0.0.1',{})); break\n\
         \x20 except OSError as e:\n\
         \x20   s.close(); time.sleep(0.05); last = e\n\
         else:\n\
         \x20 print('no connection:', last); raise SystemExit(1)\n\
         print('connected from', s.getsockname()[1], flush=True)\n\
         try:\n\
         \x20 s.sendall(b'impersonate'); got = s.recv(64); print('answer', repr(got))\n\
         except ConnectionResetError:\n\
         \x20 print('answer reset')",
        agent.port
    ));
    let _ = victim.kill();
    let _ = victim.wait();
    let said = String::from_utf8_lossy(&attacker.stdout);
    assert!(
        said.contains(&format!("connected from {port}")),
        "the attack did not run: {}",
        text(&attacker)
    );
    assert!(
        said.contains("answer b''") || said.contains("answer reset"),
        "{}",
        text(&attacker)
    );

    let events = agent.wait_events("the refused impersonation", |e| {
        !refusals(e, "intercept.not_redirected").is_empty()
    });
    let refused = refusals(&events, "intercept.not_redirected")[0];
    assert_eq!(refused["outcome"]["status"], "refused", "{refused}");
    // Recorded as the attacker, not as the victim.
    assert_eq!(refused["process"]["uid"], 65534, "{refused}");
    assert_eq!(refused["process"]["user"], "nobody", "{refused}");
    assert!(
        refused["process"]["pid"].as_u64().is_some(),
        "the attacker's pid: {refused}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "session_start" && e["decision"]["verdict"] == "allow"),
        "no session was started for the impersonation"
    );
    assert!(server.peers().is_empty(), "the server was reached");
}

#[test]
fn the_agent_owns_its_port_while_down_and_restarts_whoever_holds_it() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    agent.kill9();

    // An unprivileged process takes the agent's port on both addresses.
    let mut squatter = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", PYTHON, "-c"])
        .arg(format!(
            "import socket,select,sys\nls=[]\nfor fam,host in ((socket.AF_INET,'127.0.0.1'),(socket.AF_INET6,'::1')):\n\
             \x20 s=socket.socket(fam); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind((host,{})); s.listen(16); ls.append(s)\n\
             print('listening',flush=True)\n\
             r,_,_=select.select(ls,[],[],20)\n\
             for s in r:\n\x20 c,a=s.accept(); print('GOT',a,c.recv(100),flush=True)\n\
             print('done',flush=True)",
            agent.port
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut squatter_out = BufReader::new(squatter.stdout.take().unwrap());
    let mut line = String::new();
    squatter_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    // While the agent is down, a redirected connect is refused by the
    // kernel at once, and reaches nobody.
    let client = format!(
        "s=socket.create_connection(('{}',{}),timeout=5); s.sendall(b'PGPASSWORD=secret'); print('sent')",
        server.addr.ip(),
        server.addr.port()
    );
    assert_eq!(try_inside(&agent, &client), "PermissionError");

    // The agent starts although its port is taken, and serves.
    agent.spawn();
    let echo = format!(
        "import socket\ns=socket.create_connection(('{}',{}),timeout=5)\ns.sendall(b'hi')\nprint(s.recv(9).decode())",
        server.addr.ip(),
        server.addr.port()
    );
    let out = agent.exec(&[PYTHON, "-c", &echo]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi", "{}", text(&out));
    // Even a direct connect to the port reaches the agent, not the squatter.
    let mut direct = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    direct.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(direct.read(&mut [0u8; 8]).unwrap_or(0), 0);
    let _ = squatter.kill();
    let _ = squatter.wait();
    let mut rest = String::new();
    let _ = squatter_out.read_to_string(&mut rest);
    assert!(!rest.contains("GOT"), "the squatter received a connection: {rest}");

    let events = agent.wait_events("the refusals", |e| {
        !refusals(e, "intercept.agent_down").is_empty() && !refusals(e, "intercept.not_redirected").is_empty()
    });
    assert_eq!(refusals(&events, "intercept.agent_down")[0]["target"]["name"], "echo");
    assert_eq!(server.peers().len(), 1, "only the agent reached the server");
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let out = Command::new(loopgate_e2e::loopgate_bin())
        .args(["run", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another loopgate agent is running"), "{err}");
    // The first agent is undisturbed.
    assert_eq!(agent.status()["generation"], 1);
}

/// A PostgreSQL on every local address (and its unix socket), and a
/// password file for loopgate's upstream login.
struct LocalDb {
    pg: PgServer,
    secrets: tempfile::TempDir,
}

impl LocalDb {
    fn start() -> LocalDb {
        let pg = PgServer::start(PgOptions {
            listen_all: true,
            ..PgOptions::default()
        });
        // Root reaches the socket directory; psql runs as root so that only
        // the kernel hook can stop it.
        std::fs::set_permissions(pg.socket_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let password = secrets.path().join("db");
        std::fs::write(&password, APP_PASSWORD).unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        LocalDb { pg, secrets }
    }

    fn port(&self) -> u16 {
        self.pg.addr.port()
    }

    fn socket(&self) -> String {
        self.pg
            .socket_dir()
            .join(format!(".s.PGSQL.{}", self.port()))
            .display()
            .to_string()
    }

    fn target(&self, address: &str, unix: bool) -> Target {
        let mut t = Target::postgres("db", address, APP_USER, &self.secrets.path().join("db"));
        if unix {
            t.extra = format!("unix = [\"{}\"]\n{}", self.socket(), t.extra);
        }
        t
    }
}

/// psql inside the cgroup, as root, naming a role that has no password:
/// only loopgate (which logs in with its own credential) can serve it.
fn psql(agent: &Agent, host: &str, port: u16) -> Output {
    agent.exec(&[
        "env",
        "PGCONNECT_TIMEOUT=5",
        "psql",
        "-X",
        "-A",
        "-t",
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-U",
        "automation",
        "-d",
        "postgres",
        "-c",
        "select 'via ' || current_user",
    ])
}

fn refused_by_kernel(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted")
}

#[test]
fn other_addresses_and_the_unix_socket_of_a_target_are_refused() {
    require_ebpf!();
    let db = LocalDb::start();
    let port = db.port();
    let agent = Agent::start(&[db.target(&format!("127.0.0.1:{port}"), true)], "");

    let out = psql(&agent, "127.0.0.1", port);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via app", "{}", text(&out));
    // The same server through its other addresses, and its unix socket.
    let other = unique_loopback_ip();
    for host in [other.as_str(), "::1", "0.0.0.0", "::", &format!("::ffff:{other}")] {
        let out = psql(&agent, host, port);
        assert!(refused_by_kernel(&out), "{host}: {}", text(&out));
    }
    let out = psql(&agent, &db.pg.socket_dir().display().to_string(), port);
    assert!(refused_by_kernel(&out), "unix socket: {}", text(&out));
    // A relative path to the socket is the client's spelling of the same
    // name: the hook sees it as given, so the agent lists what it can —
    // the configured path — and the test pins that the configured one holds.
    let events = agent.wait_events("six refusals", |e| {
        refusals(e, "intercept.egress_denied").len() == 5 && refusals(e, "intercept.unix_target").len() == 1
    });
    let unix = refusals(&events, "intercept.unix_target")[0];
    assert_eq!(unix["target"]["name"], "db", "{unix}");
    assert_eq!(unix["target"]["address"], db.socket(), "{unix}");
    assert_eq!(unix["process"]["comm"], "psql", "{unix}");
    for denied in refusals(&events, "intercept.egress_denied") {
        assert_eq!(denied["process"]["comm"], "psql", "{denied}");
        assert!(
            denied["decision"]["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("*:{port}")),
            "{denied}"
        );
    }
}

#[test]
fn a_local_target_is_intercepted_on_every_address_of_the_host() {
    require_ebpf!();
    let db = LocalDb::start();
    let port = db.port();
    let agent = Agent::start(&[db.target(&format!("local:{port}"), false)], "");
    let other = unique_loopback_ip();
    let hosts = [
        "127.0.0.1",
        other.as_str(),
        "::1",
        "0.0.0.0",
        &format!("::ffff:{other}"),
    ];
    for host in hosts {
        let out = psql(&agent, host, port);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "via app",
            "{host}: {}",
            text(&out)
        );
    }
    let events = agent.wait_events("five sessions", |e| {
        e.iter().filter(|e| e["kind"] == "session_end").count() == hosts.len()
    });
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "session_start" && e["decision"]["verdict"] == "allow")
        .collect();
    assert_eq!(starts.len(), hosts.len());
    for s in starts {
        assert_eq!(s["target"]["name"], "db", "{s}");
    }
}

#[test]
fn egress_deny_leaves_only_targets_and_the_allow_list() {
    require_ebpf!();
    let target = EchoServer::start(&unique_loopback_ip());
    let allowed = EchoServer::start(&unique_loopback_ip());
    let other = EchoServer::start(&unique_loopback_ip());
    let extra = format!("[intercept]\negress = \"deny\"\nallow = [\"{}\"]\n", allowed.addr);
    let agent = Agent::start(&[Target::tcp("echo", target.addr)], &extra);
    assert_eq!(agent.status()["protections"]["egress"], "deny");

    let connect = |addr: SocketAddr| {
        let body = format!(
            "s=socket.create_connection(('{}',{}),timeout=5); s.sendall(b'x'); print(s.recv(4).decode())",
            addr.ip(),
            addr.port()
        );
        try_inside(&agent, &body)
    };
    assert_eq!(connect(target.addr), "x", "targets are reachable (through loopgate)");
    assert_eq!(connect(allowed.addr), "x", "allow-listed destinations are reachable");
    assert_eq!(connect(other.addr), "PermissionError", "everything else is refused");
    // UDP too.
    let udp = UdpSocket::bind((other.addr.ip(), 0)).unwrap();
    let send = format!(
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',('{}',{})); print('sent')",
        other.addr.ip(),
        udp.local_addr().unwrap().port()
    );
    assert_eq!(try_inside(&agent, &send), "PermissionError");
    assert!(other.peers().is_empty());
    let events = agent.wait_events("two egress refusals", |e| {
        refusals(e, "intercept.egress_denied").len() == 2
    });
    let reasons: Vec<&str> = refusals(&events, "intercept.egress_denied")
        .iter()
        .map(|e| e["decision"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.iter().any(|r| r.starts_with("tcp to")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("udp to")), "{reasons:?}");
}

#[test]
fn udp_to_a_target_is_refused() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let udp = UdpSocket::bind(server.addr).expect("a UDP socket on the target's address");
    let send = format!(
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',('{}',{})); print('sent')",
        server.addr.ip(),
        server.addr.port()
    );
    assert_eq!(try_inside(&agent, &send), "PermissionError");
    udp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(udp.recv(&mut [0u8; 4]).is_err(), "the datagram arrived");
    let events = agent.wait_events("the refusal", |e| {
        !refusals(e, "intercept.transport_not_proxied").is_empty()
    });
    let r = refusals(&events, "intercept.transport_not_proxied")[0];
    assert_eq!(r["target"]["name"], "echo", "{r}");
    assert!(r["decision"]["reason"].as_str().unwrap().starts_with("udp"), "{r}");
}

#[test]
fn a_process_that_execs_after_connecting_is_not_recorded_as_the_new_program() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    // Freeze the agent so the exec surely lands between connect and accept.
    signal(&agent, libc::SIGSTOP);
    let script = format!(
        "import socket,os\ns=socket.create_connection(('{}',{}))\ns.set_inheritable(True)\n\
         os.execv('/bin/sleep',['sleep','3'])",
        server.addr.ip(),
        server.addr.port()
    );
    let mut client = agent
        .loopgate(&["exec"])
        .args(["--", PYTHON, "-c", &script])
        .spawn()
        .unwrap();
    // Wait until the client is sleep (it exec'd).
    let pid = client.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "sleep") {
        assert!(Instant::now() < deadline, "the client did not exec");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&agent, libc::SIGCONT);
    let events = agent.wait_events("the session start", |e| e.iter().any(|e| e["kind"] == "session_start"));
    let start = events.iter().find(|e| e["kind"] == "session_start").unwrap();
    let _ = client.wait();
    // The kernel's facts are the connecting program's; /proc's sleep is not
    // recorded as the caller.
    assert_eq!(start["process"]["comm"], "python3", "{start}");
    assert!(start["process"]["exe"].is_null(), "{start}");
    assert!(start["process"]["cmdline"].is_null(), "{start}");
    let reason = start["decision"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("replaced its executable") && reason.contains("sleep"),
        "{start}"
    );
}

#[test]
fn connections_opened_before_interception_are_closed_and_recorded() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::configure(&[Target::tcp("echo", server.addr)], "");
    // The cgroup exists, with a process in it connected to the target,
    // before any program is attached.
    std::fs::create_dir_all(&agent.cgroup_dir).unwrap();
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{}',{}))\nprint('connected',flush=True)\n\
         s.settimeout(30)\ntry:\n  print(repr(s.recv(10)),flush=True)\nexcept Exception as e: print(type(e).__name__,flush=True)",
        server.addr.ip(),
        server.addr.port()
    );
    let procs = agent.cgroup_dir.join("cgroup.procs");
    let mut early = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec {PYTHON} -c \"$0\"", procs.display()))
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(early.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.peers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the early connection did not reach the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    agent.spawn();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ConnectionAbortedError", "the early connection was closed");
    let _ = early.wait();
    let events = agent.wait_events("the record", |e| !refusals(e, "intercept.preexisting").is_empty());
    let r = refusals(&events, "intercept.preexisting")[0];
    assert_eq!(r["target"]["name"], "echo", "{r}");
    assert_eq!(r["outcome"]["status"], "refused", "{r}");
    assert_eq!(r["process"]["comm"], "python3", "{r}");
}

#[test]
fn a_direct_connect_to_the_proxy_port_is_recorded_with_its_real_owner() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let out = outside_as_nobody(&format!(
        "import socket,os\ns=socket.create_connection(('127.0.0.1',{}),timeout=5)\nprint(os.getpid())\nprint(repr(s.recv(8)))",
        agent.port
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    let pid: u64 = said
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&out)));
    let events = agent.wait_events("the refusal", |e| !refusals(e, "intercept.not_redirected").is_empty());
    let r = refusals(&events, "intercept.not_redirected")[0];
    assert_eq!(r["process"]["uid"], 65534, "{r}");
    assert_eq!(r["process"]["pid"], pid, "{r}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || r["process"]["comm"] == "python3",
        "{r}"
    );
}

#[test]
fn a_target_from_another_network_namespace_is_refused() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    // A process of the cgroup in a namespace of its own, listening on the
    // agent's port there: the redirect must not land on it.
    let script = format!(
        "import socket\nl=socket.socket(); l.bind(('127.0.0.1',{})); l.listen(1)\n\
         try:\n  s=socket.create_connection(('{}',{}),timeout=5); print('connected')\nexcept Exception as e: print(type(e).__name__)",
        agent.port,
        server.addr.ip(),
        server.addr.port()
    );
    let out = agent.exec(&[
        "unshare",
        "-n",
        "sh",
        "-c",
        &format!("ip link set lo up && exec {PYTHON} -c \"$0\""),
        &script,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PermissionError",
        "{}",
        text(&out)
    );
    let events = agent.wait_events("the refusal", |e| {
        !refusals(e, "intercept.other_network_namespace").is_empty()
    });
    assert_eq!(
        refusals(&events, "intercept.other_network_namespace")[0]["target"]["name"],
        "echo"
    );
}

#[test]
fn a_flood_of_direct_connects_is_summarised_not_lost() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    // A low limit, so the flood outruns it however slowly this machine
    // (a debug build, other load) turns refusals around.
    let limit = 20;
    let agent = Agent::start(
        &[Target::tcp("echo", server.addr)],
        &format!("[proxy]\nrefusals_per_second = {limit}\n"),
    );
    let flood = 300;
    for _ in 0..flood {
        drop(TcpStream::connect(("127.0.0.1", agent.port)));
    }
    std::thread::sleep(Duration::from_millis(1200));
    drop(TcpStream::connect(("127.0.0.1", agent.port)));
    let total = flood + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.counter("refused_not_redirected") < total {
        assert!(
            Instant::now() < deadline,
            "refusals counted: {}",
            agent.counter("refused_not_redirected")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let count = |events: &[Value]| {
        let one_by_one = events
            .iter()
            .filter(|e| {
                e["decision"]["rule_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("intercept.") && r != "intercept.refusals_suppressed")
            })
            .count() as u64;
        let summarised: u64 = refusals(events, "intercept.refusals_suppressed")
            .iter()
            .filter_map(|e| {
                e["decision"]["reason"]
                    .as_str()?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (one_by_one, summarised)
    };
    let events = agent.wait_events("every refusal accounted for", |e| {
        let (one, summed) = count(e);
        one + summed == total
    });
    let (one_by_one, summarised) = count(&events);
    assert!(
        summarised > 0 && one_by_one < total,
        "{one_by_one} recorded, {summarised} summarised"
    );
}
