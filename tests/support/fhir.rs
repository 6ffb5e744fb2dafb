//! FHIR servers over TLS with a CA the test makes, and the record of
//! every request each received: a FHIR-shaped JSON API (`fhir_server.py`,
//! Python's http.server and ssl, canned answers, also standing in for the
//! Kubernetes API), and a real FHIR R4 server (`fhir_medplum.js`:
//! Medplum's FHIR engine on Node, installed by `cargo xtask setup`).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;

const SERVER: &str = include_str!("fhir_server.py");
const MEDPLUM: &str = include_str!("fhir_medplum.js");

/// A CA of the test's own, which issues server certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IPs): (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).unwrap();
    }
}

pub struct FhirServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FhirServer {
    /// Starts the server on 127.0.0.1 with a certificate from `ca` for
    /// `names`, serving `patients` patients.
    pub fn start(ca: &TestCa, names: &[&str], patients: usize) -> FhirServer {
        FhirServer::spawn(Some((ca, names)), patients)
    }

    /// A real FHIR R4 server (Medplum's engine, in memory, empty) on
    /// 127.0.0.1 with a certificate from `ca` for `names`, base `/fhir`.
    pub fn start_medplum(ca: &TestCa, names: &[&str]) -> FhirServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(names);
        let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let script = dir.path().join("fhir_medplum.js");
        std::fs::write(&script, MEDPLUM).unwrap();
        let modules = crate::env::workspace_root().join("target/node/node_modules");
        assert!(
            modules.join("@medplum/fhir-router").is_dir(),
            "{} has no Medplum: run `cargo xtask setup`",
            modules.display()
        );
        let log = dir.path().join("requests.jsonl");
        let child = Command::new("node")
            .arg(&script)
            .args([&cert_path, &key_path, &log])
            .env("NODE_PATH", &modules)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node fhir_medplum.js");
        FhirServer::listening(child, log, dir)
    }

    /// The same server over plain HTTP.
    pub fn start_plain(patients: usize) -> FhirServer {
        FhirServer::spawn(None, patients)
    }

    fn spawn(tls: Option<(&TestCa, &[&str])>, patients: usize) -> FhirServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = match tls {
            Some((ca, names)) => {
                let (cert, key) = ca.issue(names);
                let paths = (dir.path().join("server.crt"), dir.path().join("server.key"));
                std::fs::write(&paths.0, cert).unwrap();
                std::fs::write(&paths.1, key).unwrap();
                paths
            }
            None => (PathBuf::from("-"), PathBuf::from("-")),
        };
        let script = dir.path().join("fhir_server.py");
        std::fs::write(&script, SERVER).unwrap();
        let log = dir.path().join("requests.jsonl");
        let child = Command::new("python3")
            .arg(&script)
            .args([&cert_path, &key_path, &log])
            .arg(patients.to_string())
            .arg(dir.path().join("go"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 fhir_server.py");
        FhirServer::listening(child, log, dir)
    }

    /// Waits for the server's `PORT n` line.
    fn listening(mut child: Child, log: PathBuf, dir: tempfile::TempDir) -> FhirServer {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fhir server did not start: {line:?}"));
        FhirServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Lets a pods watch send its second event (until then it has sent
    /// only the first, so a client that sees it has seen it streamed).
    pub fn release_watch(&self) {
        std::fs::write(self._dir.path().join("go"), "").unwrap();
    }

    /// Every request the server received: `{method, path, headers}`.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
