//! SCRAM-SHA-256 client (RFC 5802, RFC 7677) as PostgreSQL uses it.
//!
//! - No channel binding: the gs2 header is `n,,` (`c=biws`). A server that
//!   only offers `SCRAM-SHA-256-PLUS` is refused by the caller.
//! - The user name in client-first is empty, as libpq sends it: PostgreSQL
//!   takes the user from the StartupMessage and ignores this field.
//! - SASLprep is not applied: the password is used as its UTF-8 bytes. That
//!   is exact for ASCII passwords (which SASLprep leaves unchanged), and is
//!   also what PostgreSQL itself falls back to for passwords SASLprep rejects.
//! - The server must prove it knows the password (ServerSignature); a server
//!   that cannot is refused, so a spoofed server cannot complete the login.
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// PBKDF2 rounds above this are refused: a hostile server could otherwise
/// make the agent burn CPU for minutes per login. PostgreSQL uses 4096.
pub const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM server-first message: {0}")]
    BadServerFirst(&'static str),
    #[error("malformed SCRAM server-final message: {0}")]
    BadServerFinal(&'static str),
    #[error("SCRAM server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("SCRAM iteration count {0} is outside 1..={MAX_ITERATIONS}")]
    Iterations(u64),
    #[error("the server rejected the SCRAM exchange ({0})")]
    ServerRejected(String),
    #[error("the server's SCRAM signature is wrong: it does not know the password")]
    ServerSignature,
    #[error("cannot get random bytes for the SCRAM nonce: {0}")]
    Random(String),
}

/// The first step: holds the password and client nonce until server-first.
pub struct ScramClient {
    password: Vec<u8>,
    client_first_bare: String,
    nonce: String,
}

/// The second step: holds what is needed to check the server's signature.
pub struct ScramClientFinal {
    server_key: [u8; 32],
    auth_message: String,
}

impl ScramClient {
    /// Starts an exchange with a fresh 18-byte random nonce.
    pub fn new(password: &str) -> Result<ScramClient, ScramError> {
        let mut raw = [0u8; 18];
        getrandom::fill(&mut raw).map_err(|e| ScramError::Random(e.to_string()))?;
        Ok(Self::with_nonce(password, "", &B64.encode(raw)))
    }

    /// `user` must already be SCRAM-escaped; PostgreSQL callers pass "".
    fn with_nonce(password: &str, user: &str, nonce: &str) -> ScramClient {
        ScramClient {
            password: password.as_bytes().to_vec(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
        }
    }

    /// The SASLInitialResponse payload.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Takes server-first and returns the client-final payload. Runs PBKDF2:
    /// call it off the async executor.
    pub fn handle_server_first(self, server_first: &[u8]) -> Result<(ScramClientFinal, Vec<u8>), ScramError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::BadServerFirst("not UTF-8"))?;
        let mut parts = server_first.split(',');
        let nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .ok_or(ScramError::BadServerFirst("expected r="))?;
        let salt = parts
            .next()
            .and_then(|p| p.strip_prefix("s="))
            .ok_or(ScramError::BadServerFirst("expected s="))?;
        let iterations = parts
            .next()
            .and_then(|p| p.strip_prefix("i="))
            .ok_or(ScramError::BadServerFirst("expected i="))?;
        // Extensions would be further attributes; none are defined that we
        // could honour, and a mandatory one ('m=') must be refused.
        if parts.next().is_some() {
            return Err(ScramError::BadServerFirst("unexpected attribute"));
        }
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(ScramError::BadServerFirst("nonce has invalid characters"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::BadServerFirst("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::BadServerFirst("empty salt"));
        }
        let iterations: u64 = iterations
            .parse()
            .map_err(|_| ScramError::BadServerFirst("iteration count is not a number"))?;
        if iterations == 0 || iterations > u64::from(MAX_ITERATIONS) {
            return Err(ScramError::Iterations(iterations));
        }

        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations as u32, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let client_final = format!("{without_proof},p={}", B64.encode(proof));
        Ok((
            ScramClientFinal {
                server_key,
                auth_message,
            },
            client_final.into_bytes(),
        ))
    }
}

impl ScramClientFinal {
    /// Checks server-final (the AuthenticationSASLFinal payload).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::BadServerFinal("not UTF-8"))?;
        if let Some(err) = text.strip_prefix("e=") {
            // RFC 5802 error tokens are short fixed words; keep it bounded.
            let token: String = err.chars().take(64).collect();
            return Err(ScramError::ServerRejected(token));
        }
        let verifier = text
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("v="))
            .ok_or(ScramError::BadServerFinal("expected v="))?;
        let verifier = B64
            .decode(verifier)
            .map_err(|_| ScramError::BadServerFinal("signature is not base64"))?;
        // ServerSignature = HMAC(ServerKey, AuthMessage); verify_slice
        // compares in constant time.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.server_key).expect("HMAC takes any key length");
        mac.update(self.auth_message.as_bytes());
        mac.verify_slice(&verifier).map_err(|_| ScramError::ServerSignature)
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail here.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    fn rfc_client() -> ScramClient {
        ScramClient::with_nonce("pencil", "user", "rOprNGfwEbeRWgbNEkqO")
    }

    #[test]
    fn rfc7677_vector() {
        let client = rfc_client();
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let (fin, client_final) = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        fin.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn server_without_the_password_is_refused() {
        let (fin, _) = rfc_client().handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        // Same shape, wrong signature (last byte changed).
        assert_eq!(
            fin.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G8="),
            Err(ScramError::ServerSignature)
        );
        assert_eq!(fin.verify_server_final(b"v="), Err(ScramError::ServerSignature));
        assert!(matches!(
            fin.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::ServerRejected(t)) if t == "invalid-proof"
        ));
        assert!(fin.verify_server_final(b"garbage").is_err());
        assert!(fin.verify_server_final(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn malformed_server_first_is_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"r=other-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,m=ext",
            b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            b"\xff\xff",
        ];
        for case in cases {
            assert!(
                rfc_client().handle_server_first(case).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn fresh_nonces_differ() {
        let a = ScramClient::new("pw").unwrap().client_first();
        let b = ScramClient::new("pw").unwrap().client_first();
        assert!(a.starts_with(b"n,,n=,r="));
        assert_ne!(a, b);
    }
}
