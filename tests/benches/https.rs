//! HTTPS through loopgate against direct, on one upstream: requests per
//! second and the added p50 of small GETs on one keep-alive connection
//! (HTTP/2 and HTTP/1.1), and the throughput of a 50 MB FHIR Bundle that
//! loopgate masks as it streams (a searchset of Patients: every name,
//! identifier, telecom, address and birth date masked by path, every other
//! string through the detectors). loopgate runs with the built-in policy,
//! masking and audit on; each request is decided and recorded.
//!
//! The upstream is a Rust server in this process (hyper, rustls, ALPN h2
//! and http/1.1, answers from memory) so that it is not what is measured;
//! the client is curl, one process per round reusing its connection for
//! every URL of the round (URL globbing), `%{time_total}` per request.
//! Direct and through loopgate alternate in rounds, so a change in the
//! machine's load falls on both; the load average before and after is
//! printed.
//!
//! Run as root: `cargo xtask bench -- --bench https` (env
//! HTTPS_BENCH_REQUESTS sets the small GETs each way and version, default
//! 2000; HTTPS_BENCH_MB the Bundle's size, default 50; HTTPS_BENCH_COPIES
//! the downloads each way, default 3).
use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, server::conn::http1, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopgate_e2e::{
    Agent, Target,
    bench::{env_u64, machine_state, median, p50_p99},
    fhir::TestCa,
};

const METADATA: &str = r#"{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"]}"#;

fn main() {
    if !loopgate_e2e::ebpf_available() {
        eprintln!("the https benchmark needs root and cgroup v2");
        return;
    }
    let requests = env_u64("HTTPS_BENCH_REQUESTS", 2000);
    let mb = env_u64("HTTPS_BENCH_MB", 50);
    let copies = env_u64("HTTPS_BENCH_COPIES", 3);
    println!("{}", machine_state());

    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new("https bench CA");
    let ca_file = dir.path().join("upstream-ca.pem");
    ca.write(&ca_file);
    let bundle = Bytes::from(bundle(mb << 20));
    let addr = upstream(&ca, dir.path(), bundle.clone());
    let token = dir.path().join("upstream.token");
    fs::write(&token, "bench-token\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let target = Target {
        name: "fhir-bench".into(),
        protocol: "https".into(),
        address: addr.to_string(),
        extra: format!(
            "identity = \"process\"\n[target.http]\napi = \"fhir\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
            ca_file.display(),
            token.display()
        ),
    };
    let extra = format!("[tls]\nca_dir = \"{}\"\n", dir.path().join("ca").display());
    let agent = Agent::start(&[target], &extra);
    let export = agent.loopgate(&["ca", "export"]).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let loopgate_ca = dir.path().join("loopgate-ca.pem");
    fs::write(&loopgate_ca, export.stdout).unwrap();

    // curl, one connection for every URL of a round; direct outside the
    // cgroup (trusting the upstream's CA), through loopgate inside it.
    let curl = |through: bool, args: &[&str]| {
        let ca = if through { &loopgate_ca } else { &ca_file }.display().to_string();
        let mut all = vec!["curl", "-sS", "--cacert", &ca];
        all.extend_from_slice(args);
        let out = if through {
            agent.exec(&all)
        } else {
            Command::new(all[0]).args(&all[1..]).output().unwrap()
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let small = |through: bool, version: &str, n: u64| {
        let url = format!("https://{addr}/fhir/metadata?i=[1-{n}]");
        let started = Instant::now();
        let out = curl(
            through,
            &[version, "-o", "/dev/null", "-w", "%{http_code} %{time_total}\n", &url],
        );
        let wall = started.elapsed();
        let ms: Vec<f64> = out
            .lines()
            .map(|l| {
                let (code, t) = l.split_once(' ').unwrap();
                assert_eq!(code, "200", "{l}");
                t.parse::<f64>().unwrap() * 1000.0
            })
            .collect();
        assert_eq!(ms.len() as u64, n);
        (ms, wall)
    };
    for (flag, name) in [("--http2", "HTTP/2"), ("--http1.1", "HTTP/1.1 keep-alive")] {
        small(false, flag, 20);
        small(true, flag, 20);
        let (mut direct_ms, mut through_ms) = (Vec::new(), Vec::new());
        let (mut direct_wall, mut through_wall) = (Duration::ZERO, Duration::ZERO);
        let mut left = requests;
        while left > 0 {
            let round = left.min(500);
            let (ms, wall) = small(false, flag, round);
            direct_ms.extend(ms);
            direct_wall += wall;
            let (ms, wall) = small(true, flag, round);
            through_ms.extend(ms);
            through_wall += wall;
            left -= round;
        }
        let rps = |wall: Duration| requests as f64 / wall.as_secs_f64();
        println!(
            "GET /fhir/metadata ({} bytes) x{requests} each way, {name}, one connection per round of 500, ms",
            METADATA.len()
        );
        let (d50, d99) = p50_p99(&mut direct_ms);
        let (t50, t99) = p50_p99(&mut through_ms);
        println!(
            "  direct           {:7.0} req/s  p50 {d50:6.3}  p99 {d99:6.3}",
            rps(direct_wall)
        );
        println!(
            "  through loopgate {:7.0} req/s  p50 {t50:6.3}  p99 {t99:6.3}  (added p50 {:.3}, p99 {:.3})",
            rps(through_wall),
            t50 - d50,
            t99 - d99
        );
    }

    let download = |through: bool| {
        let url = format!("https://{addr}/fhir/Patient");
        let out = curl(
            through,
            &[
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download} %{time_total}",
                &url,
            ],
        );
        let mut parts = out.split_whitespace();
        assert_eq!(parts.next(), Some("200"), "{out}");
        let size: f64 = parts.next().unwrap().parse().unwrap();
        let secs: f64 = parts.next().unwrap().parse().unwrap();
        (size, secs)
    };
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    let mut masked_size = 0.0;
    for _ in 0..copies {
        direct.push(download(false).1);
        let (size, secs) = download(true);
        masked_size = size;
        through.push(secs);
    }
    let mb_in = bundle.len() as f64 / 1e6;
    let (d, t) = (median(&mut direct), median(&mut through));
    println!(
        "a {mb_in:.1} MB searchset Bundle of Patients, HTTP/2, {copies} downloads each way, alternating (MB/s of the upstream's bytes)"
    );
    println!("  direct           {:7.1} MB/s", mb_in / d);
    println!(
        "  through loopgate {:7.1} MB/s  masked to {:.1} MB; throughput ratio {:.2}",
        mb_in / t,
        masked_size / 1e6,
        d / t
    );
    println!("{}", machine_state());
}

/// A Patient as fhir_server.py writes them (FHIR R4 shape, resourceType
/// first), about 900 bytes.
fn patient(i: usize) -> String {
    let ssn = format!("{:03}-{:02}-{:04}", 100 + i % 600, 10 + i % 89, 1000 + i % 9000);
    format!(
        r#"{{"resourceType":"Patient","id":"p{i}","meta":{{"versionId":"1"}},"text":{{"status":"generated","div":"<div>Patient Zed{i} Quincy</div>"}},"identifier":[{{"system":"urn:oid:2.16.840.1.113883.4.1","value":"{ssn}"}},{{"system":"urn:mrn","value":"MRN{i:08}"}}],"active":true,"name":[{{"use":"official","family":"Zed{i}","given":["Quincy"]}}],"telecom":[{{"system":"phone","value":"(555) {:03}-{:04}"}}],"gender":"female","birthDate":"19{:02}-0{}-1{}","address":[{{"line":["{i} Elm Street"],"city":"Springfield","postalCode":"12345"}}],"extension":[{{"url":"http://example.org/note","valueString":"callback ssn {ssn}"}}]}}"#,
        200 + i % 800,
        1000 + i % 9000,
        40 + i % 60,
        1 + i % 9,
        i % 10
    )
}

/// A searchset Bundle of at least `bytes` bytes.
fn bundle(bytes: u64) -> Vec<u8> {
    let mut out = br#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"https://fhir.test/fhir/Patient?name=Zed"}],"entry":["#.to_vec();
    let mut i = 1;
    while (out.len() as u64) < bytes {
        if i > 1 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                r#"{{"fullUrl":"https://fhir.test/fhir/Patient/p{i}","resource":{},"search":{{"mode":"match"}}}}"#,
                patient(i)
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.extend_from_slice(format!(r#"],"total":{}}}"#, i - 1).as_bytes());
    out
}

/// The upstream on 127.0.0.1: `/fhir/metadata` small, `/fhir/Patient` the
/// Bundle; HTTP/2 or HTTP/1.1 by ALPN. Runs on a thread of its own.
fn upstream(ca: &TestCa, dir: &std::path::Path, bundle: Bytes) -> SocketAddr {
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let (cert_path, key_path) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    fs::write(&cert_path, cert).unwrap();
    fs::write(&key_path, key).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let identity = loopgate::tls::Identity::from_files(&cert_path, &key_path).unwrap();
    let tls = loopgate::tls::server_config_from(&identity, &[&b"h2"[..], &b"http/1.1"[..]]).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let bundle = bundle.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let bundle = bundle.clone();
                        async move {
                            let body = match req.uri().path() {
                                "/fhir/Patient" => bundle,
                                _ => Bytes::from_static(METADATA.as_bytes()),
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/fhir+json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                    let io = TokioIo::new(stream);
                    let _ = if h2 {
                        http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        http1::Builder::new().serve_connection(io, service).await
                    };
                });
            }
        });
    });
    addr
}
