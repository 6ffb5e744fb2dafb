//! A throwaway OpenSSH sshd for the SSH tests and benchmarks: a random
//! port on 127.0.0.1, 127.0.0.2 and 127.0.0.3, its own host key, root logging in
//! only with one given key, sftp in-process.
use std::{
    fs,
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::postgres::free_port;

/// A running sshd; killed on drop.
pub struct Sshd {
    pub port: u16,
    /// The server's host public key, `ssh-ed25519 AAAA...`.
    pub host_key: String,
    /// Its `TrustedUserCAKeys` file (empty at start; read at each login).
    pub trusted_user_ca_keys: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Sshd {
    pub fn start(dir: &Path, client_key: &Path) -> Sshd {
        let port = free_port(Ipv4Addr::LOCALHOST.into());
        let host_key = dir.join("ssh_host_ed25519_key");
        keygen(&host_key);
        let authorized = dir.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let trusted_user_ca_keys = dir.join("trusted_user_ca_keys");
        fs::write(&trusted_user_ca_keys, "").unwrap();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nListenAddress 127.0.0.3\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nSubsystem sftp internal-sftp\nAllowTcpForwarding yes\n\
                 LogLevel VERBOSE\nTrustedUserCAKeys {}\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
                trusted_user_ca_keys.display()
            ),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let log = dir.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let host_key = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        Sshd {
            port,
            host_key,
            trusted_user_ca_keys,
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Ed25519 key pair at `path` and `path.pub`, no passphrase.
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "loopgate-test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
