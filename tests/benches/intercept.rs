//! What interception costs, measured against the same server in one run:
//! connect() latency (no hook, hook with a map miss, hook that redirects to
//! the proxy), bulk throughput, and request/response latency, direct and
//! through the proxy.
//!
//! The bench runs as root. Clients that must be inside the intercepted
//! cgroup are this same binary, re-run through `loopgate exec` with
//! LOOPGATE_BENCH_CLIENT set.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use loopgate_e2e::{Agent, EchoServer, Target, echo::unique_loopback_ip};

const CONNECTS: usize = 3_000;
const ROUND_TRIPS: usize = 20_000;
const BULK_BYTES: usize = 512 << 20;

fn main() {
    if let Ok(mode) = std::env::var("LOOPGATE_BENCH_CLIENT") {
        let addr: SocketAddr = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("client address");
        println!("{}", client(&mode, addr));
        return;
    }
    if !loopgate_e2e::ebpf_available() {
        eprintln!("the interception benchmark needs root and cgroup v2");
        return;
    }
    let target = EchoServer::start(&unique_loopback_ip());
    let other = EchoServer::start(&unique_loopback_ip());
    let agent = Agent::start(&[Target::tcp("bench", target.addr)], "");
    let inside = |mode: &str, addr: SocketAddr| -> String {
        let exe = std::env::current_exe().expect("current exe");
        let out = agent
            .loopgate(&["exec"])
            .env("LOOPGATE_BENCH_CLIENT", mode)
            .arg("--")
            .arg(exe)
            .arg(addr.to_string())
            .output()
            .expect("run client");
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("loopgate interception benchmark ({cpus} CPUs; client, proxy and server share them)");
    println!("\nconnect() + close, {CONNECTS} times        median      p99   median vs no hook");
    let base = client("connect", target.addr);
    row("outside the cgroup (no hook)", &base, &base);
    row("in the cgroup, not a target", &inside("connect", other.addr), &base);
    row("in the cgroup, target → proxy", &inside("connect", target.addr), &base);
    println!("\nrequest/response, 64 B, {ROUND_TRIPS} times       median      p99   median vs direct");
    let base = client("rr", target.addr);
    row("direct", &base, &base);
    row("through loopgate", &inside("rr", target.addr), &base);
    println!(
        "\nbulk echo, {} MiB each way                 MiB/s              vs direct",
        BULK_BYTES >> 20
    );
    let base = client("bulk", target.addr);
    row("direct", &base, &base);
    row("through loopgate", &inside("bulk", target.addr), &base);
}

/// One result line: the first one or two numbers of `measured` (µs or
/// MiB/s), and the ratio of its first number to the baseline's.
fn row(label: &str, measured: &str, baseline: &str) {
    let nums = |s: &str| -> Vec<f64> { s.split_whitespace().filter_map(|n| n.parse().ok()).collect() };
    let (m, b) = (nums(measured), nums(baseline));
    let cells: Vec<String> = m.iter().map(|v| format!("{v:>8.1}")).collect();
    let ratio = m[0] / b[0];
    println!("  {label:<36} {:<18} {ratio:>6.2}×", cells.join(" "));
}

/// Measures in `mode` against `addr`; prints numbers separated by spaces:
/// median and p99 in µs, or MiB/s.
fn client(mode: &str, addr: SocketAddr) -> String {
    match mode {
        "connect" => {
            let mut times = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                let start = Instant::now();
                let s = TcpStream::connect(addr).expect("connect");
                times.push(start.elapsed());
                drop(s);
            }
            percentiles(&mut times)
        }
        "rr" => {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).unwrap();
            let msg = [7u8; 64];
            let mut buf = [0u8; 64];
            let mut times = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let start = Instant::now();
                s.write_all(&msg).unwrap();
                s.read_exact(&mut buf).unwrap();
                times.push(start.elapsed());
            }
            percentiles(&mut times)
        }
        "bulk" => {
            let s = TcpStream::connect(addr).expect("connect");
            let mut reader = s.try_clone().unwrap();
            let start = Instant::now();
            let writer = std::thread::spawn(move || {
                let mut s = s;
                let chunk = vec![1u8; 256 << 10];
                let mut sent = 0;
                while sent < BULK_BYTES {
                    s.write_all(&chunk).unwrap();
                    sent += chunk.len();
                }
                s.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0;
            loop {
                match reader.read(&mut buf).unwrap() {
                    0 => break,
                    n => got += n,
                }
            }
            writer.join().unwrap();
            assert_eq!(got, BULK_BYTES, "echo lost bytes");
            let secs = start.elapsed().as_secs_f64();
            format!("{:.1}", (BULK_BYTES >> 20) as f64 / secs)
        }
        other => panic!("unknown client mode {other}"),
    }
}

fn percentiles(times: &mut [Duration]) -> String {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    format!("{:.1} {:.1}", at(0.5).as_secs_f64() * 1e6, at(0.99).as_secs_f64() * 1e6)
}
