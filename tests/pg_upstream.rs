//! loopgate's PostgreSQL upstream connector against a real PostgreSQL 15:
//! every password method, TLS modes, refusals, and cancel.
//!
//! `cargo test -p loopgate-e2e --test pg_upstream` (as root: the server runs
//! as the `postgres` user).
use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use loopgate::{
    protocols::postgres::{
        config::{AuthMethod, Secret, TlsMode},
        frame::{self, MAX_MESSAGE},
        upstream::{self, Upstream, UpstreamError, UpstreamSettings},
    },
    tls::LocalCa,
};
use loopgate_e2e::postgres::{APP_PASSWORD, APP_USER, PgOptions, PgServer};
use pgwire::messages::{DecodeContext, PgWireBackendMessage, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn server(auth: &'static str, ssl: bool) -> PgServer {
    PgServer::start(PgOptions {
        auth,
        ssl,
        ..PgOptions::default()
    })
}

fn settings(password: Option<&str>, tls: TlsMode, ca: Option<&Path>) -> UpstreamSettings {
    UpstreamSettings {
        user: APP_USER.into(),
        secret: password.map(|p| Secret::new(p.into())),
        tls: upstream::tls_config(tls, ca).expect("client config"),
        database: None,
        require_auth: None,
    }
}

fn client_params() -> Vec<(String, String)> {
    vec![
        // Replaced by the configured role: the client never picks it.
        ("user".into(), "someone_else".into()),
        ("database".into(), "postgres".into()),
        ("application_name".into(), "pg_upstream_test".into()),
    ]
}

async fn connect(pg: &PgServer, server_name: &str, s: &UpstreamSettings) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(
        Duration::from_secs(30),
        upstream::connect(pg.addr, server_name, s, &client_params()),
    )
    .await
    .expect("connect timed out")
}

/// Runs a simple query; rows as text, or the SQLSTATE of the error.
async fn query(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    up.stream.write_all(&msg).await.expect("send query");
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let f = frame::read_backend(&mut up.stream, &mut up.leftover, MAX_MESSAGE)
            .await
            .expect("read frame");
        match frame::decode(f, &ctx).expect("decode") {
            PgWireBackendMessage::DataRow(row) => {
                let mut data = &row.data[..];
                let mut values = Vec::new();
                for _ in 0..row.field_count {
                    let len = i32::from_be_bytes(data[..4].try_into().unwrap());
                    data = &data[4..];
                    if len < 0 {
                        values.push(None);
                    } else {
                        let (v, rest) = data.split_at(len as usize);
                        values.push(Some(String::from_utf8_lossy(v).into_owned()));
                        data = rest;
                    }
                }
                rows.push(values);
            }
            PgWireBackendMessage::ErrorResponse(e) => {
                error = e.fields.iter().find(|(c, _)| *c == b'C').map(|(_, v)| v.clone());
            }
            PgWireBackendMessage::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match error {
        Some(code) => Err(code),
        None => Ok(rows),
    }
}

fn row(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

async fn round_trip(auth: &'static str) {
    let pg = server(auth, false);
    let s = settings(Some(APP_PASSWORD), TlsMode::Disable, None);
    let mut up = connect(&pg, "localhost", &s).await.expect("connect");
    assert!(!up.stream.is_tls());
    assert!(up.backend_key.is_some());
    assert!(
        up.parameters
            .iter()
            .any(|(k, v)| k == "server_version" && v.starts_with("15"))
    );
    assert_eq!(
        query(
            &mut up,
            "SELECT current_user, 40 + 2, current_setting('application_name')"
        )
        .await,
        Ok(vec![row(&[APP_USER, "42", "pg_upstream_test"])])
    );
}

#[tokio::test]
async fn trust_round_trip_without_a_password() {
    let pg = server("trust", false);
    let s = settings(None, TlsMode::Disable, None);
    let mut up = connect(&pg, "localhost", &s).await.expect("connect");
    assert_eq!(query(&mut up, "SELECT current_user").await, Ok(vec![row(&[APP_USER])]));
}

#[tokio::test]
async fn password_round_trip() {
    round_trip("password").await;
}

#[tokio::test]
async fn md5_round_trip() {
    round_trip("md5").await;
}

#[tokio::test]
async fn scram_round_trip() {
    round_trip("scram-sha-256").await;
}

/// The harness stores MD5 hashes for the md5 method, so the md5 test really
/// exercises MD5 (the server would switch to SCRAM for a SCRAM hash).
#[tokio::test]
async fn md5_server_stores_md5_hashes() {
    let pg = server("md5", false);
    assert_eq!(
        pg.psql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'app'"),
        "t"
    );
}

#[tokio::test]
async fn wrong_password_is_refused_with_the_servers_error() {
    for auth in ["scram-sha-256", "md5", "password"] {
        let pg = server(auth, false);
        let s = settings(Some("not-the-password"), TlsMode::Disable, None);
        match connect(&pg, "localhost", &s).await {
            Err(UpstreamError::Server { code, message }) => {
                assert_eq!(code, "28P01", "{auth}");
                assert!(message.contains("password authentication failed"), "{auth}: {message}");
            }
            other => panic!("{auth}: expected a server refusal, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn require_auth_refuses_a_weaker_method_before_sending_anything() {
    // A server (or an impostor) asking for the cleartext password or an MD5
    // hash gets nothing when only SCRAM is allowed.
    for (auth, named) in [("password", "password"), ("md5", "md5"), ("trust", "none")] {
        let pg = server(auth, false);
        let mut s = settings(Some(APP_PASSWORD), TlsMode::Disable, None);
        s.require_auth = Some(vec![AuthMethod::ScramSha256]);
        match connect(&pg, "localhost", &s).await {
            Err(UpstreamError::AuthNotAllowed(method)) => assert_eq!(method, named, "{auth}"),
            other => panic!("{auth}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
    let pg = server("scram-sha-256", false);
    let mut s = settings(Some(APP_PASSWORD), TlsMode::Disable, None);
    s.require_auth = Some(vec![AuthMethod::ScramSha256]);
    connect(&pg, "localhost", &s).await.expect("SCRAM is allowed");
}

#[tokio::test]
async fn password_needed_but_none_configured() {
    let pg = server("scram-sha-256", false);
    let err = connect(&pg, "localhost", &settings(None, TlsMode::Disable, None))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::NoPassword), "{err}");
}

#[tokio::test]
async fn tls_require_encrypts() {
    let pg = server("scram-sha-256", true);
    let s = settings(Some(APP_PASSWORD), TlsMode::Require, None);
    // Any name: require does not check the certificate.
    let mut up = connect(&pg, "not-the-servers-name", &s).await.expect("connect");
    assert!(up.stream.is_tls());
    assert_eq!(
        query(&mut up, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await,
        Ok(vec![row(&["t"])])
    );
}

#[tokio::test]
async fn tls_required_but_server_has_no_tls_is_an_error() {
    let pg = server("scram-sha-256", false);
    for mode in [TlsMode::Require, TlsMode::VerifyFull] {
        let ca = LocalCa::load_or_create(&pg.dir.path().join("some-ca")).unwrap();
        let ca_file = (mode == TlsMode::VerifyFull).then(|| ca.cert_path());
        let s = settings(Some(APP_PASSWORD), mode, ca_file.as_deref());
        let err = connect(&pg, "localhost", &s).await.unwrap_err();
        assert!(matches!(err, UpstreamError::TlsRefused), "{mode:?}: {err}");
    }
}

#[tokio::test]
async fn verify_full_checks_ca_and_name() {
    let pg = server("scram-sha-256", true);
    let right_ca = pg.ca_file.clone().expect("ca");
    let s = settings(Some(APP_PASSWORD), TlsMode::VerifyFull, Some(&right_ca));
    for name in ["localhost", "127.0.0.1"] {
        let mut up = connect(&pg, name, &s).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            query(&mut up, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await,
            Ok(vec![row(&["t"])])
        );
    }

    let err = connect(&pg, "db.example.invalid", &s).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Handshake(_)), "wrong name: {err}");

    let other = tempfile::tempdir().unwrap();
    let wrong_ca = LocalCa::load_or_create(other.path()).unwrap();
    let s = settings(Some(APP_PASSWORD), TlsMode::VerifyFull, Some(&wrong_ca.cert_path()));
    let err = connect(&pg, "localhost", &s).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Handshake(_)), "wrong CA: {err}");
}

#[tokio::test]
async fn ipv6_listen_address() {
    let pg = PgServer::start(PgOptions {
        listen: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ssl: true,
        ..PgOptions::default()
    });
    let ca = pg.ca_file.clone().expect("ca");
    let s = settings(Some(APP_PASSWORD), TlsMode::VerifyFull, Some(&ca));
    let mut up = connect(&pg, "::1", &s).await.expect("connect over ::1");
    assert_eq!(query(&mut up, "SELECT 1").await, Ok(vec![row(&["1"])]));
}

#[tokio::test]
async fn database_override_wins_over_the_clients() {
    let pg = server("scram-sha-256", false);
    pg.psql("CREATE DATABASE clinic");
    let mut s = settings(Some(APP_PASSWORD), TlsMode::Disable, None);
    s.database = Some("clinic".into());
    let mut up = connect(&pg, "localhost", &s).await.expect("connect");
    assert_eq!(
        query(&mut up, "SELECT current_database()").await,
        Ok(vec![row(&["clinic"])])
    );
}

async fn cancel_running_query(ssl: bool) {
    let pg = server("scram-sha-256", ssl);
    let mode = if ssl { TlsMode::Require } else { TlsMode::Disable };
    let s = settings(Some(APP_PASSWORD), mode, None);
    let mut up = connect(&pg, "localhost", &s).await.expect("connect");
    let (pid, secret) = up.backend_key.clone().expect("backend key");
    let addr = pg.addr;
    let tls = s.tls.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        upstream::cancel(addr, "localhost", tls.as_ref(), pid, &secret).await
    });
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), query(&mut up, "SELECT pg_sleep(30)"))
        .await
        .expect("query was not cancelled");
    canceller.await.unwrap().expect("cancel");
    assert_eq!(result, Err("57014".to_string()));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The session survives the cancel.
    assert_eq!(query(&mut up, "SELECT 1").await, Ok(vec![row(&["1"])]));
}

#[tokio::test]
async fn cancel_stops_a_running_query() {
    cancel_running_query(false).await;
}

#[tokio::test]
async fn cancel_over_tls_stops_a_running_query() {
    cancel_running_query(true).await;
}

/// Real libpq (psql) with sslmode=verify-full trusts a leaf from loopgate's
/// local CA for the name it dialled, and rejects it for another name or when
/// it trusts another CA. The fake server only completes TLS, then refuses
/// the login with a recognisable error.
#[tokio::test]
async fn local_ca_leaf_is_accepted_by_libpq_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(&dir.path().join("ca")).unwrap();
    let other_ca = LocalCa::load_or_create(&dir.path().join("other")).unwrap();
    let both = vec!["localhost".to_string(), "127.0.0.1".into()];
    for (dialled, cert_names, root, expect) in [
        ("localhost", both.clone(), ca.cert_path(), "test server refused"),
        ("127.0.0.1", both.clone(), ca.cert_path(), "test server refused"),
        (
            "localhost",
            vec!["db.example".to_string()],
            ca.cert_path(),
            "does not match host name",
        ),
        (
            "localhost",
            both.clone(),
            other_ca.cert_path(),
            "certificate verify failed",
        ),
    ] {
        let config = ca.server_config(&cert_names, &[upstream::ALPN]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut ssl_request = [0u8; 8];
            tcp.read_exact(&mut ssl_request).await.unwrap();
            tcp.write_all(b"S").await.unwrap();
            let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                return;
            };
            let mut startup = [0u8; 512];
            let _ = tls.read(&mut startup).await;
            let body = b"SFATAL\0C28000\0Mtest server refused\0\0";
            let mut err = vec![b'E'];
            err.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            err.extend_from_slice(body);
            let _ = tls.write_all(&err).await;
            let _ = tls.shutdown().await;
        });
        let dialled_owned = dialled.to_string();
        let psql = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args(["-X", "-h", &dialled_owned, "-p", &port.to_string()])
                .args(["-U", "x", "-c", "select 1"])
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &root)
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&psql.stderr);
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(stderr.contains(expect), "{dialled} vs {cert_names:?}: {stderr}");
    }
}
