//! A throwaway PostgreSQL 15 server for tests: its own data directory, port,
//! socket directory, authentication method and (optionally) TLS certificate
//! signed by a CA of the test's own, so verify-full can be exercised.
//! Dropping the [`PgServer`] stops it (immediate) and removes everything, on
//! failure paths too.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// PostgreSQL 15 server binaries (Debian/Ubuntu layout); $LOOPGATE_PG_BIN
/// overrides.
pub fn pg_bin() -> PathBuf {
    std::env::var_os("LOOPGATE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The role the tests log in as, and its password.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-Pw-7c1e";
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "super-Pw-93ab";

#[derive(Clone, Debug)]
pub struct PgOptions {
    /// pg_hba method for TCP logins: "scram-sha-256", "md5", "password" or
    /// "trust". With "md5" the passwords are also stored as MD5, so the
    /// server really asks for MD5 (it uses SCRAM for SCRAM-stored ones).
    pub auth: &'static str,
    /// ssl = on with a certificate for localhost, 127.0.0.1, ::1 and `listen`.
    pub ssl: bool,
    pub listen: IpAddr,
    /// Listen on every address (`listen_addresses = '*'`), as a server on
    /// the agent's own host often does; `addr` still names `listen`.
    pub listen_all: bool,
    pub max_connections: u32,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            auth: "scram-sha-256",
            ssl: false,
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            listen_all: false,
            max_connections: 20,
        }
    }
}

pub struct PgServer {
    /// Removed on drop (after the server is stopped; fields drop in order
    /// after `Drop::drop`).
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub addr: SocketAddr,
    /// The CA that signed the server certificate (ssl only).
    pub ca_file: Option<PathBuf>,
    pub options: PgOptions,
    started: bool,
}

impl PgServer {
    /// initdb, configure and start a server; creates role `app` with
    /// [`APP_PASSWORD`]. Panics with the server log when anything fails.
    pub fn start(options: PgOptions) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("loopgate-pg-")
            .tempdir()
            .expect("tempdir");
        let (uid, gid) = postgres_ids();
        chown(dir.path(), uid, gid);
        let data = dir.path().join("data");
        let port = if options.listen_all {
            free_port(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        } else {
            free_port(options.listen)
        };
        // Built before anything runs, so a panic below still stops and
        // removes what was started.
        let mut server = PgServer {
            data,
            addr: SocketAddr::new(options.listen, port),
            ca_file: None,
            options,
            dir,
            started: false,
        };
        server.init(uid, gid);
        server.pg_ctl(&["-l", "server.log", "-w", "-t", "60", "start"], true);
        server.started = true;
        let encryption = if server.options.auth == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        server.psql(&format!(
            "SET password_encryption = '{encryption}'; \
             ALTER ROLE {SUPERUSER} PASSWORD '{SUPERUSER_PASSWORD}'; \
             CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';"
        ));
        server
    }

    fn init(&mut self, uid: u32, gid: u32) {
        let dir = self.dir.path();
        let pwfile = dir.join("pwfile");
        fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        chown(&pwfile, uid, gid);
        let out = as_postgres(dir)
            .arg(pg_bin().join("initdb"))
            .args(["-D"])
            .arg(&self.data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--auth=trust", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        check(&out, "initdb");

        let mut conf = format!(
            "\nport = {}\nlisten_addresses = '{}'\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 16MB\nmax_connections = {}\n",
            self.addr.port(),
            if self.options.listen_all {
                "*".to_owned()
            } else {
                self.options.listen.to_string()
            },
            dir.display(),
            self.options.max_connections
        );
        if self.options.ssl {
            let (ca, cert, key) = self.make_certs(uid, gid);
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
            self.ca_file = Some(ca);
        }
        let conf_path = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        fs::write(&conf_path, text).expect("write postgresql.conf");

        let prefix = if self.options.listen.is_ipv4() { 32 } else { 128 };
        let mut hba = format!(
            "local all all trust\nhost all {SUPERUSER},{APP_USER} {}/{prefix} {}\n",
            self.options.listen, self.options.auth
        );
        if self.options.listen_all {
            let auth = self.options.auth;
            hba.push_str(&format!(
                "host all {SUPERUSER},{APP_USER} 0.0.0.0/0 {auth}\nhost all {SUPERUSER},{APP_USER} ::/0 {auth}\n"
            ));
        }
        fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// A test CA and a server certificate it signed; returns (ca, cert, key).
    fn make_certs(&self, uid: u32, gid: u32) -> (PathBuf, PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "loopgate test PostgreSQL CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca cert");
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        names.push(self.options.listen.to_string());
        names.dedup();
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server cert");
        let dir = self.dir.path();
        let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("server.crt"), dir.join("server.key"));
        fs::write(&ca_path, ca.pem()).expect("write ca");
        fs::write(&cert_path, cert.pem()).expect("write cert");
        fs::write(&key_path, key.serialize_pem()).expect("write key");
        // PostgreSQL refuses a key others can read.
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod key");
        for p in [&ca_path, &cert_path, &key_path] {
            chown(p, uid, gid);
        }
        (ca_path, cert_path, key_path)
    }

    /// The directory of the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` with psql as the superuser over TCP; returns stdout
    /// (unaligned, tuples only, trimmed). Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.addr.ip().to_string()])
            .args(["-p", &self.addr.port().to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.dir.path())
            .output()
            .expect("run psql");
        if !out.status.success() {
            panic!(
                "psql failed ({}): {}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn pg_ctl(&self, args: &[&str], must: bool) {
        let out = as_postgres(self.dir.path())
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output();
        if must {
            let out = out.expect("run pg_ctl");
            if !out.status.success() {
                panic!(
                    "pg_ctl {args:?} failed: {}{}\nserver log:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.started || self.data.join("postmaster.pid").exists() {
            self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"], false);
        }
    }
}

/// initdb and postgres refuse to run as root.
fn as_postgres(cwd: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).current_dir(cwd);
    cmd
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres uid");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postgres gid");
    (uid, gid)
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
}

pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
