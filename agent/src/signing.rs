//! Ed25519 keys: the agent signs audit checkpoints with its host key;
//! policy bundles are signed by whoever publishes the fleet's policy.
//!
//! Private keys are PKCS#8 PEM (`openssl genpkey -algorithm ed25519`, or
//! `loopgate audit keygen`), readable by root only. Public keys are
//! SubjectPublicKeyInfo PEM (`openssl pkey -pubout`). A key's id is the
//! first 8 bytes of the SHA-256 of its 32 raw bytes, in hex: signatures
//! name it, so a verifier holding several keys (rotation, a fleet) picks
//! the right one.
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use sha2::{Digest as _, Sha256};

/// DER of an Ed25519 SubjectPublicKeyInfo up to the 32 key bytes (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has mode {mode:o}: a signing key must be readable by its owner only (chmod 600)")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{what}: {problem}")]
    Format { what: String, problem: String },
    #[error("{0}")]
    Credential(String),
}

/// A private Ed25519 key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public.id())
    }
}

impl SigningKey {
    /// From a file (mode 0600 or stricter) or a systemd credential name.
    pub fn load(file: Option<&Path>, credential: Option<&str>) -> Result<SigningKey, KeyError> {
        let path = match (file, credential) {
            (Some(file), _) => {
                let meta = std::fs::metadata(file).map_err(|source| KeyError::Read {
                    path: file.to_owned(),
                    source,
                })?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Mode {
                        path: file.to_owned(),
                        mode,
                    });
                }
                file.to_owned()
            }
            (None, Some(name)) => crate::objstore::credential_path(name).map_err(KeyError::Credential)?,
            (None, None) => return Err(KeyError::Credential("no signing key configured".into())),
        };
        let pem = std::fs::read(&path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    pub fn from_pem(pem: &[u8], what: &str) -> Result<SigningKey, KeyError> {
        let format = |problem: String| KeyError::Format {
            what: what.to_owned(),
            problem,
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format(format!("not a PKCS#8 PEM private key ({e})")))?;
        // openssl writes PKCS#8 v1 (no public key inside), ring's generator v2.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| format(format!("not an Ed25519 key ({e})")))?;
        let public = PublicKey::from_raw(pair.public_key().as_ref()).map_err(format)?;
        Ok(SigningKey { pair, public })
    }

    /// A new key as PKCS#8 PEM.
    pub fn generate_pem() -> Result<String, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Format {
            what: "new key".into(),
            problem: e.to_string(),
        })?;
        Ok(pem("PRIVATE KEY", doc.as_ref()))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

/// A public Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    fn from_raw(raw: &[u8]) -> Result<PublicKey, String> {
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| format!("an Ed25519 public key has 32 bytes, not {}", raw.len()))?;
        Ok(PublicKey { raw })
    }

    /// SubjectPublicKeyInfo PEM, or the 32 raw bytes in base64 on one line.
    pub fn parse(text: &[u8], what: &str) -> Result<PublicKey, KeyError> {
        let format = |problem: String| KeyError::Format {
            what: what.to_owned(),
            problem,
        };
        if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(text) {
            let der: &[u8] = spki.as_ref();
            let raw = der
                .strip_prefix(&SPKI_PREFIX[..])
                .ok_or_else(|| format("the PEM public key is not Ed25519".into()))?;
            return PublicKey::from_raw(raw).map_err(format);
        }
        let line = std::str::from_utf8(text).map_err(|_| format("not PEM or base64".into()))?;
        let raw = B64
            .decode(line.trim())
            .map_err(|_| format("not a PEM public key nor base64 of 32 bytes".into()))?;
        PublicKey::from_raw(&raw).map_err(format)
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.raw);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem("PUBLIC KEY", &der)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// The public keys a verifier trusts, found by id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, KeyError> {
        let keys = paths.iter().map(|p| PublicKey::load(p)).collect::<Result<_, _>>()?;
        Ok(TrustedKeys { keys })
    }

    pub fn from_keys(keys: Vec<PublicKey>) -> Self {
        TrustedKeys { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Whether `signature` (base64) over `message` is by the trusted key `id`.
    pub fn check(&self, id: &str, message: &[u8], signature_b64: &str) -> Result<(), String> {
        let key = self
            .get(id)
            .ok_or_else(|| format!("signed by key {id}, which is not among the trusted keys"))?;
        let signature = B64
            .decode(signature_b64)
            .map_err(|_| "the signature is not base64".to_owned())?;
        if key.verify(message, &signature) {
            Ok(())
        } else {
            Err(format!("the signature does not verify with key {id}"))
        }
    }
}

/// Base64 of a signature, as stored.
pub fn encode_signature(signature: &[u8]) -> String {
    B64.encode(signature)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_its_public_key_verifies() {
        let pem = SigningKey::generate_pem().expect("generate");
        let key = SigningKey::from_pem(pem.as_bytes(), "test").expect("load");
        let sig = key.sign(b"checkpoint");
        let public = PublicKey::parse(key.public().to_pem().as_bytes(), "pub").expect("parse");
        assert_eq!(&public, key.public());
        assert!(public.verify(b"checkpoint", &sig));
        assert!(!public.verify(b"checkpoinT", &sig));
        let trusted = TrustedKeys::from_keys(vec![public.clone()]);
        assert!(
            trusted
                .check(&public.id(), b"checkpoint", &encode_signature(&sig))
                .is_ok()
        );
        let other = SigningKey::from_pem(SigningKey::generate_pem().expect("gen").as_bytes(), "o").expect("load");
        let err = trusted
            .check(
                &other.public().id(),
                b"checkpoint",
                &encode_signature(&other.sign(b"checkpoint")),
            )
            .unwrap_err();
        assert!(err.contains("not among the trusted keys"), "{err}");
        assert_eq!(public.id().len(), 16);
    }

    #[test]
    fn openssl_keys_load() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) and its `pkey -pubout`.
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJAxq7s4ipefp2rMrL9608ZQxWpnU43K5qiRMvP2gKIn\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAVD+FBIBUleWorImN3nX/SohxF4cFm2pctuOka27qI9E=\n-----END PUBLIC KEY-----\n";
        let key = SigningKey::from_pem(private.as_bytes(), "openssl").expect("v1 key loads");
        let public = PublicKey::parse(public.as_bytes(), "pub").expect("spki loads");
        assert_eq!(key.public(), &public);
        let raw = B64.encode(public.raw);
        assert_eq!(PublicKey::parse(raw.as_bytes(), "raw").expect("raw"), public);
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        std::fs::write(&path, SigningKey::generate_pem().expect("gen")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            SigningKey::load(Some(&path), None),
            Err(KeyError::Mode { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(SigningKey::load(Some(&path), None).is_ok());
    }
}
