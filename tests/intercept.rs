//! Transparent interception end to end: the real agent, real eBPF programs
//! on a real cgroup, unmodified clients inside it, real servers outside.
use std::{
    net::{SocketAddr, TcpStream},
    process::Output,
    time::Duration,
};

use loopgate_e2e::{Agent, ECHO_CLIENT, EchoServer, Target, echo::unique_loopback_ip, require_ebpf};
use serde_json::Value;

/// The system Python: readable by every user, unlike a venv under /root.
fn client_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs the echo client inside the agent's cgroup.
fn echo_client(agent: &Agent, user: Option<&str>, host: &str, port: u16, count: usize, size: usize) -> (Output, Value) {
    let port = port.to_string();
    let count = count.to_string();
    let size = size.to_string();
    let out = agent.exec_as(user, &[client_python(), "-c", ECHO_CLIENT, host, &port, &count, &size]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

fn assert_ok(out: &Output, report: &Value, agent: &Agent) {
    assert!(
        out.status.success(),
        "client failed: {report}\nstderr: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
}

fn sessions<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn ipv4_ipv6_and_v4_mapped_clients_are_proxied_and_attributed() {
    require_ebpf!();
    let v4 = EchoServer::start(&unique_loopback_ip());
    let v6 = EchoServer::start("::1");
    let agent = Agent::start(&[Target::tcp("echo4", v4.addr), Target::tcp("echo6", v6.addr)], "");

    let v4_host = v4.addr.ip().to_string();
    let mapped_host = format!("::ffff:{}", v4.addr.ip());
    let v6_host = v6.addr.ip().to_string();
    let cases = [(&v4_host, &v4), (&mapped_host, &v4), (&v6_host, &v6)];
    for (host, server) in cases {
        let (out, report) = echo_client(&agent, Some("nobody"), host, server.addr.port(), 1, 100);
        assert_ok(&out, &report, &agent);
        // The client sees the address it asked for, not the proxy's.
        let peer = &report["connections"][0]["peer"];
        assert_eq!(peer[0].as_str(), Some(host.as_str()), "getpeername: {report}");
        assert_eq!(
            peer[1].as_u64(),
            Some(u64::from(server.addr.port())),
            "getpeername: {report}"
        );
        // ... while the server was reached by the agent, not by the client.
        let local_port = report["connections"][0]["local"][1].as_u64().unwrap() as u16;
        assert!(
            server.peers().iter().all(|p| p.port() != local_port),
            "the client reached the server directly"
        );
    }

    let events = agent.wait_events("three session ends", |e| sessions(e, "session_end").len() == 3);
    let ends = sessions(&events, "session_end");
    for end in &ends {
        let process = &end["process"];
        assert_eq!(process["comm"], "python3", "{end}");
        assert_eq!(process["uid"], 65534, "{end}");
        assert_eq!(process["user"], "nobody", "{end}");
        assert!(process["pid"].as_u64().unwrap() > 1, "{end}");
        assert_eq!(process["cgroup"], format!("/{}", agent.cgroup), "{end}");
        assert_eq!(end["outcome"]["status"], "ok", "{end}");
        assert_eq!(end["outcome"]["bytes_to_server"], 100, "{end}");
        assert_eq!(end["outcome"]["bytes_to_client"], 100, "{end}");
    }
    let targets: Vec<&str> = ends.iter().map(|e| e["target"]["name"].as_str().unwrap()).collect();
    assert_eq!(targets.iter().filter(|t| **t == "echo4").count(), 2);
    assert_eq!(targets.iter().filter(|t| **t == "echo6").count(), 1);
    let starts = sessions(&events, "session_start");
    assert_eq!(starts.len(), 3);
    for end in &ends {
        assert!(
            starts.iter().any(|s| s["session_id"] == end["session_id"]),
            "every session end has its start"
        );
    }
}

#[test]
fn processes_outside_the_cgroup_and_other_destinations_are_untouched() {
    require_ebpf!();
    let target = EchoServer::start(&unique_loopback_ip());
    let other = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", target.addr)], "");

    // Outside the cgroup, to the target: direct.
    let mut direct = TcpStream::connect(target.addr).expect("direct connect");
    let local = direct.local_addr().unwrap();
    assert_eq!(direct.peer_addr().unwrap(), target.addr);
    std::io::Write::write_all(&mut direct, b"x").unwrap();
    drop(direct);
    // Inside the cgroup, to a destination that is not a target: direct.
    let (out, report) = echo_client(&agent, None, &other.addr.ip().to_string(), other.addr.port(), 1, 10);
    assert_ok(&out, &report, &agent);
    let inside_local: SocketAddr = format!(
        "{}:{}",
        report["connections"][0]["local"][0].as_str().unwrap(),
        report["connections"][0]["local"][1]
    )
    .parse()
    .unwrap();

    std::thread::sleep(Duration::from_millis(200));
    assert!(
        target.peers().contains(&local),
        "the outside process reached the target directly"
    );
    assert!(
        other.peers().contains(&inside_local),
        "the non-target connect went direct"
    );
    assert_eq!(agent.counter("accepted"), 0);
    assert!(agent.events().iter().all(|e| e["kind"] != "session_start"));
}

#[test]
fn sigkill_fails_closed_and_a_restart_takes_over() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let host = server.addr.ip().to_string();
    let (out, report) = echo_client(&agent, None, &host, server.addr.port(), 1, 10);
    assert_ok(&out, &report, &agent);

    agent.kill9();
    let served_before = server.peers().len();
    let (out, report) = echo_client(&agent, None, &host, server.addr.port(), 1, 10);
    assert!(
        !out.status.success(),
        "a connect went through with the agent down: {report}"
    );
    // The kernel refuses the connect itself (EPERM): nothing listens.
    let error = report["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("PermissionError"),
        "expected a refused connect, got {report}"
    );
    assert_eq!(
        server.peers().len(),
        served_before,
        "the server was reached directly while the agent was down"
    );

    agent.spawn();
    assert_eq!(
        agent.status()["generation"],
        2,
        "the restart attached a new generation of links"
    );
    let (out, report) = echo_client(&agent, None, &host, server.addr.port(), 1, 10);
    assert_ok(&out, &report, &agent);
    assert_eq!(agent.counter("accepted"), 1);
    // The refusal made while no agent ran waited in the pinned ring buffer
    // and is in the trail now, with the process the kernel saw.
    let events = agent.wait_events("the refusal made while down", |e| {
        e.iter().any(|e| e["decision"]["rule_id"] == "intercept.agent_down")
    });
    let refusal = events
        .iter()
        .find(|e| e["decision"]["rule_id"] == "intercept.agent_down")
        .unwrap();
    assert_eq!(refusal["target"]["name"], "echo", "{refusal}");
    assert_eq!(refusal["target"]["address"], server.addr.to_string(), "{refusal}");
    assert_eq!(refusal["process"]["comm"], "python3", "{refusal}");
    assert_eq!(refusal["outcome"]["status"], "refused", "{refusal}");
}

#[test]
fn detach_makes_connects_go_direct() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let host = server.addr.ip().to_string();

    assert!(agent.sigterm().success(), "agent exits 0 on SIGTERM:\n{}", agent.log());
    // SIGTERM keeps the pins: still refused.
    let (out, _) = echo_client(&agent, None, &host, server.addr.port(), 1, 10);
    assert!(!out.status.success(), "SIGTERM must not remove interception");

    let detach = agent.detach();
    assert!(
        detach.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&detach.stderr)
    );
    // Seven programs on the cgroup and the port owner on the namespace.
    let said = String::from_utf8_lossy(&detach.stdout);
    assert!(said.contains("removed 8 links"), "{said}");
    let (out, report) = echo_client(&agent, None, &host, server.addr.port(), 1, 10);
    assert_ok(&out, &report, &agent);
    let local_port = report["connections"][0]["local"][1].as_u64().unwrap() as u16;
    assert!(
        server.peers().iter().any(|p| p.port() == local_port),
        "after detach the client reaches the server itself"
    );
    assert!(!agent.pin_dir.exists(), "detach removes the pin directory");
}

#[test]
fn two_hundred_concurrent_connections_get_their_own_bytes() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let (out, report) = echo_client(
        &agent,
        None,
        &server.addr.ip().to_string(),
        server.addr.port(),
        200,
        20_000,
    );
    assert_ok(&out, &report, &agent);
    assert_eq!(report["connections"].as_array().map(Vec::len), Some(200));
    let events = agent.wait_events("200 session ends", |e| sessions(e, "session_end").len() == 200);
    for end in sessions(&events, "session_end") {
        assert_eq!(end["outcome"]["bytes_to_client"], 20_000, "{end}");
    }
    assert_eq!(agent.counter("completed"), 200);
}

#[test]
fn a_connection_the_kernel_did_not_redirect_is_refused_and_recorded() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let mut sneaky = TcpStream::connect(("127.0.0.1", agent.port)).expect("connect to the listener");
    sneaky.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut sneaky, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the listener must close a connection it cannot attribute");
    let events = agent.wait_events("the refusal", |e| e.iter().any(|e| e["outcome"]["status"] == "refused"));
    let refusal = events.iter().find(|e| e["outcome"]["status"] == "refused").unwrap();
    assert_eq!(refusal["decision"]["rule_id"], "intercept.not_redirected");
    assert_eq!(agent.counter("refused_not_redirected"), 1);
    assert!(server.peers().is_empty());
}

#[test]
fn an_unreachable_upstream_closes_the_client_and_is_recorded() {
    require_ebpf!();
    // A port nobody listens on: bind, note it, close.
    let dead = EchoServer::start(&unique_loopback_ip()).addr;
    let closed = std::net::TcpListener::bind((dead.ip(), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = Agent::start(&[Target::tcp("dead", closed)], "");
    let (out, report) = echo_client(&agent, None, &closed.ip().to_string(), closed.port(), 1, 10);
    assert!(!out.status.success(), "the client must not get an echo: {report}");
    let events = agent.wait_events("the session end", |e| !sessions(e, "session_end").is_empty());
    let end = sessions(&events, "session_end")[0];
    assert_eq!(end["outcome"]["status"], "unreachable", "{end}");
    assert_eq!(agent.counter("upstream_unreachable"), 1);
}

#[test]
fn sigterm_drains_live_sessions_and_keeps_interception() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let mut agent = Agent::start(
        &[Target::tcp("echo", server.addr)],
        "[proxy]\ndrain_timeout_secs = 20\n",
    );
    // A session that talks for a while: the client sleeps between send and
    // shutdown, so SIGTERM lands while it is live.
    let script = format!(
        "import socket,time\ns=socket.create_connection(('{}',{}))\ntime.sleep(1.5)\ns.sendall(b'late')\ns.shutdown(1)\nprint(s.recv(10).decode())",
        server.addr.ip(),
        server.addr.port()
    );
    let config = agent.config.clone();
    let slow = std::thread::spawn(move || {
        std::process::Command::new(loopgate_e2e::loopgate_bin())
            .args(["exec", "--config"])
            .arg(config)
            .args(["--", client_python(), "-c", &script])
            .output()
            .unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.status()["sessions"].as_array().map_or(0, Vec::len) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow session never showed in status"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The live session runs on one of the session worker threads.
    let per_worker: Vec<u64> = agent.status()["worker_sessions"]
        .as_array()
        .expect("status lists the session workers")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 1, "{per_worker:?}");
    let mut child = agent.sigterm_nowait();
    let out = slow.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "late",
        "the live session finished during the drain"
    );
    assert!(child.wait().unwrap().success());
    let ends = sessions(&agent.events(), "session_end").len();
    assert_eq!(ends, 1, "the drained session was recorded");
    assert!(agent.events().iter().any(|e| e["kind"] == "agent_stop"));
}

#[test]
fn the_agent_refuses_to_run_inside_a_cgroup_it_intercepts() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let bin = loopgate_e2e::loopgate_bin();
    let config = agent.config.to_string_lossy().into_owned();
    let out = agent.exec(&[bin.to_str().unwrap(), "run", "--config", &config]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("which it would intercept"), "{stderr}");
}

#[test]
fn status_shows_cgroups_targets_and_live_sessions() {
    require_ebpf!();
    let server = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("echo", server.addr)], "");
    let status = agent.status();
    assert!(status["cgroups"][0]["path"].as_str().unwrap().ends_with(&agent.cgroup));
    assert_eq!(status["targets"][0]["name"], "echo");
    assert_eq!(status["targets"][0]["endpoints"][0], server.addr.to_string());
    let text = agent.loopgate(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("live sessions: 0") && text.contains(&agent.cgroup),
        "{text}"
    );
}
