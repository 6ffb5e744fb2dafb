//! A real S3-compatible server for the tests: s3s-fs (crates.io, built by
//! `cargo xtask setup` into target/tools), objects as files in a temp
//! directory, on a loopback port of its own. `stop` kills the process (a
//! real outage); `start_again` brings it back on the same port and data.
use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::env::workspace_root;

pub const ACCESS_KEY: &str = "loopgate-test";
pub const SECRET_KEY: &str = "loopgate-test-secret-key";

pub struct S3Server {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    child: Option<Child>,
    log: PathBuf,
}

/// The server binary: $LOOPGATE_S3S_FS, else target/tools/bin/s3s-fs.
pub fn s3s_fs_bin() -> PathBuf {
    let path = std::env::var_os("LOOPGATE_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/bin/s3s-fs"));
    assert!(
        path.is_file(),
        "s3s-fs not found at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

impl S3Server {
    /// Starts a server with one empty bucket.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("loopgate-s3")
            .tempdir()
            .expect("tempdir");
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir(root.path().join(bucket)).expect("create bucket");
        let log = root.path().join("s3s-fs.log");
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut server = S3Server {
            root,
            port,
            bucket: bucket.to_owned(),
            child: None,
            log,
        };
        server.start_again();
        server
    }

    /// (Re)starts the process on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3s-fs exited at start ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "s3s-fs did not listen: {}", self.log());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the store is gone, connections are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// `[audit.remote]` for this server (plus `extra` keys), and its
    /// `[audit.remote.s3]` with a secret file written under `dir`.
    pub fn remote_toml(&self, prefix: &str, dir: &std::path::Path, extra: &str) -> String {
        format!(
            "[audit.remote]\nurl = \"{}\"\n{extra}\n{}",
            self.url(prefix),
            self.connection_toml("audit.remote.s3", dir)
        )
    }

    /// A `[TABLE]` of connection settings for this server, its secret in a
    /// file (mode 0600) under `dir`.
    pub fn connection_toml(&self, table: &str, dir: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, SECRET_KEY).expect("write secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "[{table}]\nendpoint = \"{}\"\nallow_http = true\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key_file = \"{}\"\n",
            self.endpoint(),
            secret.display()
        )
    }

    /// Connection settings for a client of the test's own (the secret in
    /// a file beside the data).
    pub fn client_config(&self) -> loopgate::objstore::S3Config {
        use std::os::unix::fs::PermissionsExt as _;
        let secret = self.root.path().join("client-secret");
        std::fs::write(&secret, SECRET_KEY).expect("write secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        loopgate::objstore::S3Config {
            endpoint: Some(self.endpoint()),
            allow_http: true,
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key_file: Some(secret),
            ..Default::default()
        }
    }

    /// The environment an auditor's shell would have for this store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("--- s3s-fs log ---\n{}", self.log());
        }
    }
}
