//! Validated tokens by SHA-256 of the token, until they expire: a client that
//! reconnects with the same token costs one hash, not a signature check.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::claims::ValidatedToken;

pub(crate) type TokenHash = [u8; 32];

pub(crate) fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) struct TokenCache {
    entries: Mutex<LruCache<TokenHash, ValidatedToken>>,
    /// Same leeway as the claim check, so a cached token expires when a
    /// fresh check of it would fail.
    leeway: Duration,
}

impl TokenCache {
    pub fn new(capacity: usize, leeway: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        TokenCache {
            entries: Mutex::new(LruCache::new(capacity)),
            leeway,
        }
    }

    pub fn get(&self, key: &TokenHash, now: SystemTime) -> Option<ValidatedToken> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let leeway = self.leeway;
        let fresh = entries
            .get(key)
            .map(|t| t.expires_at.checked_add(leeway).is_some_and(|deadline| now <= deadline))?;
        if fresh {
            entries.get(key).cloned()
        } else {
            entries.pop(key);
            None
        }
    }

    pub fn insert(&self, key: TokenHash, token: ValidatedToken) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).put(key, token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn token(exp: u64) -> ValidatedToken {
        ValidatedToken {
            subject: "s".into(),
            issuer: "i".into(),
            email: None,
            groups: vec![],
            client_id: None,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        }
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let cache = TokenCache::new(2, Duration::from_secs(60));
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        cache.insert(hash("a"), token(1000));
        assert!(cache.get(&hash("a"), at(1060)).is_some());
        assert!(cache.get(&hash("a"), at(1061)).is_none());
        assert!(cache.get(&hash("a"), at(0)).is_none(), "expired entries are dropped");
        cache.insert(hash("b"), token(1000));
        cache.insert(hash("c"), token(1000));
        cache.insert(hash("d"), token(1000));
        assert!(cache.get(&hash("b"), at(0)).is_none());
        assert!(cache.get(&hash("d"), at(0)).is_some());
    }
}
