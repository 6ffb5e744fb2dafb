//! loopgate as an SSH host CA. Clients trust the CA once (the
//! `@cert-authority` line `loopgate ssh known-hosts` prints, in
//! `/etc/ssh/ssh_known_hosts`); each SSH target then presents a host
//! certificate for its names and addresses, signed at agent start for a
//! fresh host key, so nothing but the CA key is kept on disk.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use russh::keys::{
    Certificate, PrivateKey, PublicKey,
    ssh_key::{LineEnding, certificate, private::Ed25519Keypair},
};

/// How long a host certificate is valid; the agent signs a new one at
/// every start.
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Slack for clocks that run behind the agent's.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum HostCaError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has mode {mode:04o}; loopgate's SSH CA key must be 0600")]
    Mode { path: PathBuf, mode: u32 },
    #[error("loopgate's SSH CA key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot sign a host certificate: {0}")]
    Sign(String),
}

/// The SSH host CA kept in `<ca_dir>/ssh/host_ca`.
pub struct HostCa {
    key: PrivateKey,
}

/// A key and the certificate that vouches for it, as a target presents them.
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

impl HostCa {
    pub const DIR: &str = "ssh";
    pub const KEY_FILE: &str = "host_ca";

    /// Loads the CA from `<ca_dir>/ssh`, creating the directory (0700) and
    /// an Ed25519 key (0600) on first use. A key readable by others is refused.
    pub fn load_or_create(ca_dir: &Path) -> Result<HostCa, HostCaError> {
        Ok(HostCa {
            key: load_or_create_key(ca_dir, Self::KEY_FILE)?,
        })
    }
}

/// An Ed25519 CA key `<ca_dir>/ssh/<file>`, created (0600, in a 0700
/// directory) on first use; one readable by others is refused.
pub(super) fn load_or_create_key(ca_dir: &Path, file: &str) -> Result<PrivateKey, HostCaError> {
    let dir = ca_dir.join(HostCa::DIR);
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| HostCaError::Io { what, path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("cannot create", &dir))?;
    let path = dir.join(file);
    let key_err = |reason: String| HostCaError::Key {
        path: path.clone(),
        reason,
    };
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(HostCaError::Mode { path, mode });
            }
            let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
            PrivateKey::from_openssh(text.trim()).map_err(|e| key_err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_ed25519().map_err(key_err)?;
            let text = key.to_openssh(LineEnding::LF).map_err(|e| key_err(e.to_string()))?;
            // Written whole to a private temporary file, then renamed:
            // a crash never leaves half a key or a readable one.
            let tmp = dir.join(format!(".{file}.tmp"));
            let _ = fs::remove_file(&tmp);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("cannot create", &tmp))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io("cannot write", &tmp))?;
            fs::rename(&tmp, &path).map_err(io("cannot create", &path))?;
            Ok(key)
        }
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

impl HostCa {
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key().clone()
    }

    /// The line for `/etc/ssh/ssh_known_hosts` (or `~/.ssh/known_hosts`)
    /// that makes OpenSSH trust host certificates of this CA for `hosts`
    /// (a known_hosts pattern list, `*` for any).
    pub fn known_hosts_line(&self, hosts: &str) -> String {
        let key = self.key.public_key().to_openssh().unwrap_or_default();
        format!("@cert-authority {hosts} {key} loopgate-host-ca")
    }

    /// A fresh host key and a host certificate for `names`, with `label`
    /// (the target's name) in its key id.
    pub fn issue(&self, names: &[String], label: &str) -> Result<HostIdentity, HostCaError> {
        let key = random_ed25519().map_err(HostCaError::Sign)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let after = now.saturating_sub(CLOCK_SKEW).as_secs();
        let before = (now + CERT_LIFETIME).as_secs();
        let sign = |e: russh::keys::ssh_key::Error| HostCaError::Sign(e.to_string());
        let mut builder = certificate::Builder::new(
            nonce().map_err(HostCaError::Sign)?,
            key.public_key().key_data().clone(),
            after,
            before,
        )
        .map_err(sign)?;
        builder.cert_type(certificate::CertType::Host).map_err(sign)?;
        builder.key_id(format!("loopgate target {label}")).map_err(sign)?;
        for name in names {
            builder.valid_principal(name.clone()).map_err(sign)?;
        }
        let certificate = builder.sign(&self.key).map_err(sign)?;
        Ok(HostIdentity { key, certificate })
    }
}

/// The comment that marks loopgate's line in a known_hosts file.
const KNOWN_HOSTS_MARK: &str = " loopgate-host-ca";

/// Puts `line` (a [`HostCa::known_hosts_line`]) into the known_hosts file
/// at `path` in place of loopgate's earlier line, keeping every other
/// line; written whole and renamed into place (mode 0644). `false` when
/// the file already had it.
pub fn install_known_hosts(path: &Path, line: &str) -> Result<bool, HostCaError> {
    let io = |what, source| HostCaError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    // Its lines are copied into a 0644 file: a link elsewhere (another
    // file's contents) is refused.
    if fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(io(
            "replacing",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let old = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("reading", e)),
    };
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| !l.trim_end().ends_with(KNOWN_HOSTS_MARK))
        .collect();
    lines.push(line);
    let new = lines.join("\n") + "\n";
    if new == old {
        return Ok(false);
    }
    // A fresh file of our own: a stale temporary (or a link planted where
    // it goes, when the directory is not root's alone) is removed, never
    // followed.
    let tmp = path.with_extension("loopgate.tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| io("writing", e))?;
    file.write_all(new.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
    Ok(true)
}

pub(super) fn random_ed25519() -> Result<PrivateKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

pub(super) fn nonce() -> Result<Vec<u8>, String> {
    let mut nonce = vec![0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_known_hosts_line_replaces_its_earlier_self_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ssh_known_hosts");
        fs::write(
            &file,
            "db.example ssh-ed25519 AAAA1\n@cert-authority * ssh-ed25519 OLD loopgate-host-ca\n",
        )
        .unwrap();
        let line = "@cert-authority * ssh-ed25519 NEW loopgate-host-ca";
        assert!(install_known_hosts(&file, line).unwrap());
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("db.example ssh-ed25519 AAAA1\n{line}\n"));
        assert!(
            !install_known_hosts(&file, line).unwrap(),
            "a second run changes nothing"
        );
        // A link planted at the temporary name is replaced, not written through.
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, file.with_extension("loopgate.tmp")).unwrap();
        assert!(install_known_hosts(&file, "@cert-authority * ssh-ed25519 NEWER loopgate-host-ca").unwrap());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        // A known_hosts that is a link to another file is refused.
        let linked = dir.path().join("linked_known_hosts");
        std::os::unix::fs::symlink(&victim, &linked).unwrap();
        assert!(install_known_hosts(&linked, line).is_err());
        let fresh = dir.path().join("new_known_hosts");
        assert!(install_known_hosts(&fresh, line).unwrap());
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o644);
    }

    use super::*;

    #[test]
    fn the_ca_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HostCa::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("ssh/host_ca");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = HostCa::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.public_key(), again.public_key());
        assert!(
            ca.known_hosts_line("*")
                .starts_with("@cert-authority * ssh-ed25519 AAAA")
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            HostCa::load_or_create(dir.path()),
            Err(HostCaError::Mode { .. })
        ));
    }

    #[test]
    fn host_certificates_name_the_target_and_verify_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HostCa::load_or_create(dir.path()).unwrap();
        let names = vec!["db1.internal".to_owned(), "10.0.0.7".to_owned()];
        let id = ca.issue(&names, "db1").unwrap();
        let cert = &id.certificate;
        assert_eq!(cert.cert_type(), certificate::CertType::Host);
        assert_eq!(cert.valid_principals(), names.as_slice());
        assert_eq!(cert.public_key(), id.key.public_key().key_data());
        let fingerprint = ca.public_key().fingerprint(Default::default());
        cert.validate(&[fingerprint]).expect("signed by the CA and valid now");
    }
}
