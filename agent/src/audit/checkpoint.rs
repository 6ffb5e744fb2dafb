//! Signed checkpoints: the agent's word, signed with its host key, that its
//! chain had event `seq` with hash `hash` at `time`.
//!
//! The chain alone is keyless: whoever can write the files can cut or
//! rewrite its newest end and recompute SHA-256 (see README.md). A
//! checkpoint shipped off the host fixes the end as of its signing: a
//! later copy of the chain must reach `seq` and have `hash` there, or it
//! was cut or rewritten. Checkpoints are written after the files they
//! cover, one object each, so (with Object Lock) none can be replaced.
use serde::{Deserialize, Serialize};

use super::layout::rfc3339;
use crate::signing::{SigningKey, TrustedKeys, encode_signature};

pub const FORMAT: &str = "loopgate-checkpoint-v1";

/// Where checkpoints live, relative to the store's prefix. The leading
/// underscore keeps query engines (Spark, Trino, pyarrow) out of it.
pub const DIR: &str = "_loopgate/checkpoints";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    /// The `host=` partition the chain's files are under.
    pub host: String,
    pub seq: u64,
    pub hash: String,
    /// When it was signed, µs since the epoch (and readable, in `time`).
    pub time_us: i64,
    pub time: String,
    /// The file whose last event is `seq`, relative to the prefix.
    pub file: Option<String>,
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::signed_bytes`], base64.
    pub signature: String,
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, host: &str, seq: u64, hash: &str, time_us: i64, file: Option<String>) -> Self {
        let mut c = Checkpoint {
            format: FORMAT.to_owned(),
            host: host.to_owned(),
            seq,
            hash: hash.to_owned(),
            time_us,
            time: rfc3339(time_us),
            file,
            key_id: key.public().id(),
            signature: String::new(),
        };
        c.signature = encode_signature(&key.sign(&c.signed_bytes()));
        c
    }

    /// The signed message: every field that carries meaning, one per line.
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "{FORMAT}\nhost={}\nseq={}\nhash={}\ntime_us={}\nfile={}\n",
            self.host,
            self.seq,
            self.hash,
            self.time_us,
            self.file.as_deref().unwrap_or("")
        )
        .into_bytes()
    }

    /// Checks format, consistency and signature against `trusted`.
    pub fn check(&self, trusted: &TrustedKeys) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("unknown checkpoint format {:?}", self.format));
        }
        if self.time != rfc3339(self.time_us) {
            return Err("time and time_us disagree".into());
        }
        trusted.check(&self.key_id, &self.signed_bytes(), &self.signature)
    }

    /// Object key relative to the prefix: per host, in seq then time order.
    pub fn relative_key(&self) -> String {
        format!(
            "{DIR}/host={}/{:020}-{:020}.json",
            self.host,
            self.seq,
            self.time_us.max(0)
        )
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The key prefix of `host`'s checkpoints, relative to the store's prefix.
pub fn host_dir(host: &str) -> String {
    format!("{DIR}/host={host}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pem(SigningKey::generate_pem().expect("gen").as_bytes(), "test").expect("key")
    }

    #[test]
    fn a_signed_checkpoint_checks_and_any_change_is_found() {
        let key = key();
        let trusted = TrustedKeys::from_keys(vec![key.public().clone()]);
        let c = Checkpoint::sign(
            &key,
            "db-1",
            42,
            &"ab".repeat(32),
            1_700_000_000_000_000,
            Some("f".into()),
        );
        c.check(&trusted).expect("checks");
        let back: Checkpoint = serde_json::from_slice(&c.to_json()).expect("json");
        assert_eq!(back, c);
        assert!(
            c.relative_key()
                .starts_with("_loopgate/checkpoints/host=db-1/00000000000000000042-")
        );

        let mut seq = c.clone();
        seq.seq = 43;
        assert!(seq.check(&trusted).unwrap_err().contains("does not verify"));
        let mut hash = c.clone();
        hash.hash = "cd".repeat(32);
        assert!(hash.check(&trusted).is_err());
        let mut host = c.clone();
        host.host = "db-2".into();
        assert!(host.check(&trusted).is_err());
        let mut time = c.clone();
        time.time = rfc3339(0);
        assert!(time.check(&trusted).unwrap_err().contains("disagree"));
        let stranger = TrustedKeys::from_keys(vec![self::key().public().clone()]);
        assert!(c.check(&stranger).unwrap_err().contains("not among"));
    }
}
