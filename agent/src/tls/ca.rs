//! loopgate's local CA.
use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{TlsError, provider};

/// What a cached server config is for: its names and ALPN protocols.
type Leaf = (Vec<String>, Vec<Vec<u8>>);

/// loopgate's local CA: an ECDSA P-256 key and self-signed certificate in a
/// directory only root can read, made on first use and reused afterwards so
/// the CA file operators distribute stays valid across restarts.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    cache: Mutex<HashMap<Leaf, Arc<ServerConfig>>>,
}

impl LocalCa {
    pub const CERT_FILE: &'static str = "ca.pem";
    pub const KEY_FILE: &'static str = "ca.key";

    /// Loads the CA from `dir`, creating the directory (0700) and the CA
    /// (key 0600) when they are missing. A key readable by others is refused.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { what, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("cannot restrict", dir))?;
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        let ca_err = |reason: String| TlsError::Ca {
            dir: dir.to_path_buf(),
            reason,
        };

        let (key, cert_pem) = if cert_path.exists() && key_path.exists() {
            let mode = fs::metadata(&key_path)
                .map_err(io_err("cannot read", &key_path))?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o077 != 0 {
                return Err(TlsError::Mode { path: key_path, mode });
            }
            let key_pem = fs::read_to_string(&key_path).map_err(io_err("cannot read", &key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| ca_err(format!("key: {e}")))?;
            let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("cannot read", &cert_path))?;
            (key, cert_pem)
        } else {
            // Missing either half (first start, or a crash between the two
            // writes): make a fresh pair.
            let key =
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ca_err(format!("generate key: {e}")))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| ca_err(format!("self-sign: {e}")))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&cert_path, cert.pem().as_bytes())?;
            tracing::info!(dir = %dir.display(), "created loopgate's local CA");
            (key, cert.pem())
        };
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_err(format!("{}: {e}", Self::CERT_FILE)))?;
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            // The issuer is rebuilt from the same fixed name and the stored
            // key, so new leaves chain to the stored certificate.
            issuer: Issuer::new(ca_params(), key),
            ca_der,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate clients with `sslmode=verify-full` should trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(Self::CERT_FILE)
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// A server config presenting a leaf for `host_names` (DNS names or IP
    /// addresses) and offering `alpn`, issued once per distinct set and
    /// cached.
    pub fn server_config(&self, host_names: &[String], alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut names: Vec<String> = host_names.to_vec();
        names.sort();
        names.dedup();
        let cache_key = (names.clone(), alpn.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cache.get(&cache_key) {
            return Ok(config.clone());
        }
        let key = names;
        let issue_err = |reason: String| TlsError::Issue {
            names: key.clone(),
            reason,
        };
        let mut params = CertificateParams::new(key.clone()).map_err(|e| issue_err(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            key.first().cloned().unwrap_or_else(|| "loopgate".into()),
        );
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| issue_err(e.to_string()))?;
        let leaf = params
            .signed_by(&leaf_key, &self.issuer)
            .map_err(|e| issue_err(e.to_string()))?;
        let key_der = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| issue_err(e.into()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key_der)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        cache.insert(cache_key, config.clone());
        Ok(config)
    }
}

/// The CA's fixed identity; the same every time so a reloaded key issues
/// certificates that chain to the stored CA certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "loopgate");
    dn.push(DnType::CommonName, "loopgate local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2050, 1, 1);
    params
}

/// Writes `contents` to `path` as a new 0600 file, atomically.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let err = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsError::Io { what, path: p, source }
    };
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err("cannot create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(err("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(err("cannot rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ServerAuth, client_config};
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;

    const ALPN: &[&[u8]] = &[b"postgresql"];

    #[test]
    fn local_ca_is_created_private_and_reused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ca");
        let ca = LocalCa::load_or_create(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(LocalCa::KEY_FILE)), 0o600);
        let key_before = fs::read(dir.join(LocalCa::KEY_FILE)).unwrap();
        let der_before = ca.cert_der().clone();
        drop(ca);

        let again = LocalCa::load_or_create(&dir).unwrap();
        assert_eq!(fs::read(dir.join(LocalCa::KEY_FILE)).unwrap(), key_before);
        assert_eq!(again.cert_der(), &der_before);

        fs::set_permissions(dir.join(LocalCa::KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(LocalCa::load_or_create(&dir), Err(TlsError::Mode { .. })));
    }

    #[test]
    fn server_configs_are_cached_per_name_set_and_alpn() {
        let base = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(base.path()).unwrap();
        let a = ca
            .server_config(&["db.example".into(), "10.0.0.5".into()], ALPN)
            .unwrap();
        let b = ca
            .server_config(&["10.0.0.5".into(), "db.example".into()], ALPN)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = ca.server_config(&["other.example".into()], ALPN).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let h2 = ca
            .server_config(&["db.example".into(), "10.0.0.5".into()], &[b"h2", b"http/1.1"])
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &h2));
        assert_eq!(h2.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    /// A reloaded CA still issues leaves a verifying client accepts, for
    /// the right name only.
    #[tokio::test]
    async fn leaves_verify_against_the_stored_ca() {
        let base = tempfile::tempdir().unwrap();
        drop(LocalCa::load_or_create(base.path()).unwrap());
        let ca = LocalCa::load_or_create(base.path()).unwrap();
        let server = ca
            .server_config(&["db.example".into(), "127.0.0.1".into()], ALPN)
            .unwrap();
        let client = client_config(&ServerAuth::CaFile(ca.cert_path()), ALPN).unwrap();

        for (name, ok) in [("db.example", true), ("127.0.0.1", true), ("evil.example", false)] {
            let result = handshake(server.clone(), client.clone(), name).await;
            assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
        }
        let encrypt_only = client_config(&ServerAuth::None, ALPN).unwrap();
        handshake(server, encrypt_only, "evil.example").await.unwrap();
    }

    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Result<(), std::io::Error> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let srv = tokio::spawn(async move { acceptor.accept(b).await.map(|_| ()) });
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let res = tokio_rustls::TlsConnector::from(client)
            .connect(name, a)
            .await
            .map(|_| ());
        let _ = srv.await;
        res
    }
}
