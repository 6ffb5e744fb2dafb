//! A real OIDC issuer in-process, for tests: discovery and JWKS over HTTP on
//! 127.0.0.1, token minting with any header and claims, key rotation, and
//! stop/restart to play an outage. Not compiled into the agent binary
//! (feature `test-issuer`).
//!
//! RSA keys are fixed (generated once with `openssl genpkey`) because
//! generating 2048-bit keys in a debug build takes seconds; they protect
//! nothing. The P-256 key is generated per issuer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::config::OidcConfig;
use crate::http::server::{self, Answer, Ask};

const RSA_KEYS: [&str; 3] = [
    "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDkL79ULdrptWz2
O06yOWsog35HZFjllS6da6Rk8vBctn74oFQGeh2Tq+qSvHWsoVvJwvmnNRMEjJzj
PpSmigIHksM7R5cEWgJR7NS+lo1WWHipk+19SbcQSCtXBalIkNO+FNinN+tDEAEg
w0ZLWT4MD+/SXBIlQ5rw5kv4wwKPPhW2IJfBkkbe6wczkJMbz2XUKCEqJwUkm2IS
RJUNNQeyUj1glun42ZaVm1aX2cQtOFaIgZm5WELB3M3vF6D+nktAv/jD5qk8onI1
+jpjdTwAwvWJLuqfpmU9CH47RdIPOOzEYTmJtn6UShd9u+vaMgyXRVX88gOcgevA
Zs2gsfNvAgMBAAECggEARDOROBPMjnXPb3kieFp5EM7ce3Ier9/64so9hH6oIM3a
/WzOMHFnTa/gmKMDeOlxichg3f0bBg0RB0q5G128ZY8UEy++j2pnrxzeKWjOLbSb
u/Oe1AeoU5F+grAKfMnsv69zYedwxcaOz8ANzo+J4AkTYQhr0/902/O5WUzQAwe2
x0FiD/q8Q0GFSZLtP/jbrIkrKvaBPfckIjFT+csWenvKh25JgvlreDL8TVsbYfSn
8+JwaXDT8RiWuigmt0x23LQb1OWQ0GLhBL3Phw1Rrh8MxeD9EdNdxpcY4ak30zK2
YzzvGxl8j6HXbxeE33fW8+68T6sT4x6Bf8UdFJwZ4QKBgQD9uPRRfzLzzpvFEUNw
ixqaB4xmV425zBb4zqSqZcVdDAGeqi5jJWQ7kFma+kPPJV7xvrYKj/d6dbSJ8whX
DbA5IqWvB2qoJ9OZD9y0zxqnelHCeNhGoleEoLPRLJc2vklwifxCE3a8SS+J0Ayx
XQesXwjteMX0sFTfDj8+gJBoKwKBgQDmPBy7IfND0zoUPyfFvGHWV0m2EFDjXGF2
eQhWaIHNmjWUXzMjvqqKn6aRhzgO5NK6xtYdg2H3ene6kKU1JGGTEcder6iFk+Ws
xVBU2J3MeAEUeD3tZtl3+qB8Av8ywcSmVnnYxmG+TkLfAlWgVmtFqn3AT2Fi9IJO
HepU6zYbzQKBgEP+e+MXPnVeChqezL7tWFys5zBKCF4hVoqo/jH4AhM0c36sxq+l
Rp47yfehV+i8cBxC6pAcEstLne1WJwcFUROOuG4Wg7u6qJcdTB1cXx1Ax4ZhUjxj
pyaQ1n+Y/pEaH548LFEc3DYLOuUozy3862CDO2ZAdnRjiOsZ61L5qzlvAoGBAMTG
ydOS78SfavtVAxw4pvI4BnMKPOgl09MbHOolRhPA4lxehWnekwoJ66ZkCKCKKCWk
venZmciXrm8RI3JpFtBJGLovrfwE7P8eYUszHKNeSaYCIwOdrO6jkbiMIytxey6j
qF6DJ5UsdHEAIMj6M5MGZZYRAm4+BoTXgqlzovpdAoGAeO6jF8U2uO9HNul4x1T6
/rNMZzZJ3t2yyfOAH8490r0lucK6HHsEMVVe7FC6mqGcbL+Y1eI/WRplIZt9QNBr
3nOZvSBWODEAmw7oX+MGIZ7RnHY3IWEcrt5HjaFIMfCna9W0G68UT+4Rwm7FxVOf
psIFCbf0IqRLbwG4MIOzjT8=
-----END PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCxkjYWCZ7bpGfr
XVL/K0eznJvGEm3N1BgU/J9GhqFfIYLQJBmqe0SS7Opx0oRCSJUgZpIQ2+NCVOzZ
H+O2gq0TrrzNYq7aklZQ5qxvUWl7PMULYMd9m6MM8goypNqnMhcsbDMV6cK56EzX
Ef7qpfVL+3OsBR4n39npLb8xN2FYqOpPVJ4Kf7LV4WwpcbGDtmYKTQa2+ia2lnVE
TaEsXJ3Kl2w3FzosFk6NS3FyW+vH4keokPZJMerXxmr0umPe/siiGluH9m65fOWR
iVS4rOh5x7lOAaXqi60iXfye5xQw2bMeprRx9spc3O2Pi41jFH9sHeeoK/tDrZMd
NQzcupk9AgMBAAECggEANapRE0b0DkB5Ma5CO6D6agN+JpYCPm8Hmiwg/OEKWyRX
Ew2d/iKD/n2Ae0batueVvjWRlmvGGpFtBU+4c7u5kBXCtLXKz37jfE7CtV/e56Jd
kMs+by0+0VZDE7wz4szmKQRISiqcMbBNrMAhEQx3/m8vrcDcNMPX6TtsqXSpxG/C
+InR1MBsX8WzaRlB3atAE1rdtzpFMVv+N/27ed+BGVrHybxd2yJN+BtZyO1AxA4s
q/Tz1QhOCyy8lm8thpODpPft3Je5oKPKiAYnIHh0mRrdNxUs8FTPBl5AV1o1FPf2
lGgRMg5BYprf/LDDy7yoTboeTend+G9Nx68CBhgX1wKBgQDpzvNCO+6n9/XQjoXy
avqdOTfVd1h4rZR6phyyvuTh8F2wV394HrAeO1hobNRZulQfHVPJFrFBKKE3UUrO
eZlxG/kuWDuny26DBaZPidsBxBp+74LuYFBfpd1oJV6ZHuAxd4K9uVXCb/NBsg1d
ldDxwO2NOwQU6mCak7MP0pBU+wKBgQDCbNCCX9PyhR/Q8w38QkeUIFv9CV9UghZS
blFAOPDIoXQsMsbD5o6s1bC0jYUeZUdEm+QrwZ6xdXayfTaLvN9BK5haqA+JZT7e
/b9lmIAi7uPQFKYtRi89L4ERhEyPobap98IyhhljyRtmN70ja2pXSBZKGgUMhOFh
RNvuYaJFJwKBgCWuRqIMCqBjY+hir8+r0gv4prjubQG159IEZ2efQD/xfwfmchKn
z3Zv1gWuVGLJlrkU/uXPlG2N4L2LimTQUBxch8IiUirurDbNeEolS3hzZFnEu/My
7oEbuB0KuL4wra0LN7Tf46RcanXR/jlw5aWwlBhIxJWiWENRPnB0XPJ1AoGAfw41
RL3y+C3fGOF9Zji6JibvdnDFh6hrhfrpxhpv3+0Cyk90bVkiK/iJvbQuJirxY/is
J5wkZLvqkcIZ/z+ydhhTPAtP++3aJEeW6IG8WxfacITOBBA1lrqQki3vCn4XrQNo
OTRBK2ClMyuBwr/Tgq5tQoe2fPPphXNGdoX/UUkCgYBoCuEFg2m2tccu6mqJT6WH
Q6ypQsLrlQLzr8vsA4nhjdKUn0rIDfTzIgLysP78kLgBjlS1FAdqCgg3qiYpsnks
WMgsk8+Y38R27tBQ/G4VQAt37w1lFGAVdOMatprcWGec5m768V1IBXiB6r/FkXfl
sgm9/avqxZ3yf8ZFsTkpEg==
-----END PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDEHP/72p75p3os
j55mJe2u5ia0Z6h/TIzdjFA+PJwf5kC7ytU2YDigz9ZSAvt4jFBGOm7w0V+eT3el
apJca1Tl4SZwIB5guRbF3HbSq7dNABeN60JMRzvKzWK5h8WkHQ8iKbfyr5FjG1pw
QOoiByeeDS/f/3JiEyMEDT2+oAwp+ivj+8fxM9rxRz++3vlGcDQpKSuU4ICjWrm2
KeTqnF1i8ijulIjieXdOVGnoF50VYCGQ42ytbLPZBGLPy4GrWBsQkGuDToGrudFS
pXpFjFP2qnW54hduBdaf9Q2i+PRo0eV+4L9rdtKg4DB6ulN6uSi9XJAmgYDDR0/q
wC9y6HUjAgMBAAECggEADYolr5EJHMS6o0z0a1T/CJjh3zQGPBO1k1jWnsAMf19O
5NLneYOXJUh0IYwMfzwgvAMuGaOQQxvKxOQ2CqTBDcXyThd0QXVF5I8zXO7MuZzi
A22p/B4xkJoxe2Grpt2ivSxoLhx/oHoI+msLlHct/bQnXq2s4Kc1lFgIWprY0XpR
2VtdhS6uTTZE+qvU4taixxTFQ58eL2XW08dsLw5iR4nRGJ1NAM2UFjHl2Rxwd9uY
pe0neW9yihvgR3Y+2m9rqieFvNnCaC8pGFmZfnISSoBWEo5yc7g3n9ZwJZhoxcHG
PCkrAtXAZ2g5/M4DP5ExVXs2lYn9DP8sy0DUngdSgQKBgQDtPyEITxDelvrZ+OIj
tK2Wc1TKZGRtaSeQiSynuOriKEjgnLE6eaBpm5FQyIRjGyjZ8Mo4skjYdh1QeBqJ
2kHwzdg53n/hSmR6vNWRq9oZ0eOgY1Db80m0ra9DWZmybc3595+e8R8k6E5wtvtS
+g/JhtDLjKF8c7aZaOluZuBgoQKBgQDTnYGH5CJCtH2I6YLM0X60ny+aT87ENtdq
Q04JHVSd3BgHHeNw6q6bWLoxqL5TWHj1PGr5cfqOUD7vc7mDMDLmxHGqSUqJyiRE
xZAiYjK7fO26IT2gmFgjc7ilW48aQLokTKKG4qFsx0gnz6pUL/46DyyF+39iekAo
F9TgHeBLQwKBgDT7oDjmz3Gmbic3uekXdJzg7NK2UOdOUJOqzto2Jd6T+JKQ69OP
Tg/HulA8N7SaYCkr6T14M2SEHE/YQrT+lTNeBSgHVK/PmVj/ywJZSr/xa9Bp3akB
UDiVgUqdPAHpG9LzRiaM2tO3Pa1WcBI73kK3ZPHQWlAc126zS05okzuBAoGBAMUW
lwNneHlD/P887LOyEh5LfFxuJBcfNLYlhVJ73MlBqadHMQODr6fDlXaWwNyDM/TD
lqZIf6F4H4WI9Ki4hU/kejCtHh0DBZB/qGQ9rR5tlkOanfkqqjwqlTh88+Txj+wq
69xQyyOy3wMlKHBMWqzcYQ1QVS30yjgNKhip+rJdAoGAcG7AD76jneUgZ0Luhxek
7oKeSqyFpePVGWSK9QFD8AUH8hmhlVe/H5iDkjGeu6uXx6mCWXKP6CUM4XivizRT
BSoMK9mAXoZqFNLc/UpN7Bk1DerldPoysZ+AC8zsQPYDSxswPX92fpZZGjNhJupR
+3M9QFwU35DumBt/xpCnSu4=
-----END PRIVATE KEY-----",
];

enum KeyKind {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct TestKey {
    kid: String,
    kind: KeyKind,
    published: bool,
}

struct Inner {
    issuer: String,
    tls: Option<TlsAcceptor>,
    keys: Mutex<Keys>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
}

struct Keys {
    all: Vec<TestKey>,
    /// Index of the RSA key `mint` signs with.
    current: usize,
}

pub struct TestIssuer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

fn rsa_key(pem: &str) -> RsaKeyPair {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("embedded test key is PEM");
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("embedded test key is RSA PKCS#8")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TestIssuer {
    /// Listens on 127.0.0.1 (random port) with one RSA key (`rsa-1`) and one
    /// P-256 key (`ec-1`) published.
    pub async fn start() -> std::io::Result<TestIssuer> {
        Self::start_inner(None).await
    }

    /// The same over https, with a leaf for 127.0.0.1 from a local CA kept in
    /// `ca_dir`; trust `<ca_dir>/ca.pem` (returned) through `ca_file`.
    pub async fn start_tls(ca_dir: &Path) -> std::io::Result<(TestIssuer, std::path::PathBuf)> {
        let ca = crate::tls::LocalCa::load_or_create(ca_dir).map_err(std::io::Error::other)?;
        let server = ca
            .server_config(&["127.0.0.1".into()], &[b"http/1.1"])
            .map_err(std::io::Error::other)?;
        let issuer = Self::start_inner(Some(TlsAcceptor::from(server))).await?;
        Ok((issuer, ca.cert_path()))
    }

    async fn start_inner(tls: Option<TlsAcceptor>) -> std::io::Result<TestIssuer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let rng = SystemRandom::new();
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| std::io::Error::other("P-256 key generation failed"))?;
        let ec = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref(), &rng)
            .map_err(|_| std::io::Error::other("P-256 key load failed"))?;
        let mut all: Vec<TestKey> = RSA_KEYS
            .iter()
            .enumerate()
            .map(|(i, pem)| TestKey {
                kid: format!("rsa-{}", i + 1),
                kind: KeyKind::Rsa(rsa_key(pem)),
                published: i == 0,
            })
            .collect();
        all.push(TestKey {
            kid: "ec-1".into(),
            kind: KeyKind::Ec(ec),
            published: true,
        });
        let inner = Arc::new(Inner {
            issuer: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
            tls,
            keys: Mutex::new(Keys { all, current: 0 }),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
        });
        let server = serve(listener, inner.clone());
        Ok(TestIssuer {
            inner,
            addr,
            server: Mutex::new(Some(server)),
        })
    }

    /// `http://127.0.0.1:<port>` (`https` from `start_tls`): also the `iss` of minted tokens.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// A validator config for this issuer with every other value defaulted.
    pub fn oidc_config(&self, audience: &str) -> OidcConfig {
        OidcConfig::new(self.issuer(), audience)
    }

    /// The kid `mint` signs with.
    pub fn kid(&self) -> String {
        let keys = self.inner.keys.lock().unwrap();
        keys.all[keys.current].kid.clone()
    }

    /// Publish the next embedded RSA key and sign with it from now on; the
    /// old key stays published. Returns the new kid.
    pub fn rotate(&self) -> String {
        let mut keys = self.inner.keys.lock().unwrap();
        let next = keys.current + 1;
        assert!(next < RSA_KEYS.len(), "the test issuer has {} RSA keys", RSA_KEYS.len());
        keys.all[next].published = true;
        keys.current = next;
        keys.all[next].kid.clone()
    }

    /// Standard claims valid for five minutes.
    pub fn claims(&self, subject: &str, audience: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": self.issuer(),
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + 300,
            "jti": format!("{now}-{}", self.inner.jwks_requests.load(Ordering::Relaxed)),
        })
    }

    /// An ID token (`typ: JWT`, RS256, current key).
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with(json!({"alg": "RS256", "typ": "JWT", "kid": self.kid()}), claims)
    }

    /// Signs `header`'s `alg` with the key named by its `kid` when that key
    /// fits the alg, else with the first key that does (so a header can lie
    /// about its kid). `alg: none` gets an empty signature. HMAC: see `mint_hmac`.
    pub fn mint_with(&self, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let alg = header["alg"].as_str().unwrap_or("none").to_string();
        let rsa_alg: Option<&'static dyn signature::RsaEncoding> = match alg.as_str() {
            "RS256" => Some(&signature::RSA_PKCS1_SHA256),
            "RS384" => Some(&signature::RSA_PKCS1_SHA384),
            "RS512" => Some(&signature::RSA_PKCS1_SHA512),
            "PS256" => Some(&signature::RSA_PSS_SHA256),
            "PS384" => Some(&signature::RSA_PSS_SHA384),
            "PS512" => Some(&signature::RSA_PSS_SHA512),
            _ => None,
        };
        let keys = self.inner.keys.lock().unwrap();
        let kid = header["kid"].as_str();
        let pick = |want_rsa: bool| {
            let fits = |k: &&TestKey| matches!(k.kind, KeyKind::Rsa(_)) == want_rsa;
            keys.all
                .iter()
                .filter(fits)
                .find(|k| Some(k.kid.as_str()) == kid)
                .or_else(|| {
                    if want_rsa {
                        Some(&keys.all[keys.current])
                    } else {
                        keys.all.iter().find(fits)
                    }
                })
                .expect("a key of the type")
        };
        let rng = SystemRandom::new();
        let sig = if let Some(encoding) = rsa_alg {
            let KeyKind::Rsa(key) = &pick(true).kind else {
                unreachable!()
            };
            let mut sig = vec![0u8; key.public().modulus_len()];
            key.sign(encoding, &rng, input.as_bytes(), &mut sig)
                .expect("RSA signing");
            sig
        } else if alg == "ES256" {
            let KeyKind::Ec(key) = &pick(false).kind else {
                unreachable!()
            };
            key.sign(&rng, input.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec()
        } else if alg.eq_ignore_ascii_case("none") {
            Vec::new()
        } else {
            panic!("the test issuer cannot sign {alg}");
        };
        format!("{input}.{}", b64(&sig))
    }

    /// HS256 over header and claims with `secret`: the algorithm-confusion attack.
    pub fn mint_hmac(&self, header: Value, claims: &Value, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    /// The current RSA key's public key (PKCS#1 DER) and its JWK `n`: what
    /// any attacker has, used as an HMAC secret in confusion attacks.
    pub fn public_key_bytes(&self) -> Vec<Vec<u8>> {
        let keys = self.inner.keys.lock().unwrap();
        let KeyKind::Rsa(key) = &keys.all[keys.current].kind else {
            unreachable!()
        };
        let parts: PublicKeyComponents<Vec<u8>> = key.public().into();
        vec![
            key.public().as_ref().to_vec(),
            parts.n,
            jwks_json(&keys).to_string().into_bytes(),
        ]
    }

    /// How many times the JWKS was served.
    pub fn jwks_requests(&self) -> usize {
        self.inner.jwks_requests.load(Ordering::Relaxed)
    }

    pub fn discovery_requests(&self) -> usize {
        self.inner.discovery_requests.load(Ordering::Relaxed)
    }

    /// Stop answering: connects are refused until `restart`.
    pub async fn stop(&self) {
        let handle = self.server.lock().unwrap().take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(64)?;
        *self.server.lock().unwrap() = Some(serve(listener, self.inner.clone()));
        Ok(())
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(handle) = self.server.get_mut().ok().and_then(Option::take) {
            handle.abort();
        }
    }
}

fn jwks_json(keys: &Keys) -> Value {
    let published: Vec<Value> = keys
        .all
        .iter()
        .filter(|k| k.published)
        .map(|k| match &k.kind {
            KeyKind::Rsa(key) => {
                let parts: PublicKeyComponents<Vec<u8>> = key.public().into();
                json!({"kty": "RSA", "use": "sig", "kid": k.kid, "n": b64(&parts.n), "e": b64(&parts.e)})
            }
            KeyKind::Ec(key) => {
                // Uncompressed point: 0x04 || x || y.
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "use": "sig", "crv": "P-256", "kid": k.kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        })
        .collect();
    json!({ "keys": published })
}

fn serve(listener: TcpListener, inner: Arc<Inner>) -> JoinHandle<()> {
    let tls = inner.tls.clone();
    server::spawn(listener, tls, move |ask| {
        let inner = inner.clone();
        async move { answer(&ask, &inner) }
    })
}

fn answer(ask: &Ask, inner: &Inner) -> Answer {
    match ask.path.as_str() {
        "/.well-known/openid-configuration" => {
            inner.discovery_requests.fetch_add(1, Ordering::Relaxed);
            let issuer = &inner.issuer;
            let doc = json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/jwks"),
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
            });
            Answer::json(200, &doc)
        }
        "/jwks" => {
            inner.jwks_requests.fetch_add(1, Ordering::Relaxed);
            Answer::json(200, &jwks_json(&inner.keys.lock().unwrap()))
        }
        _ => Answer::json(404, &json!({})),
    }
}
