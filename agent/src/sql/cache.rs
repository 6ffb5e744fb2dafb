//! Bounded LRU cache of analyses keyed by exact statement text, so a
//! statement executed many times is parsed and classified once.
use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;

use super::{Analysis, Analyzer};

/// Hit/miss counters for status output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// Shared by all sessions. Analysis runs outside the lock, so a slow parse
/// never blocks other sessions' hits.
#[derive(Debug)]
pub struct AnalysisCache {
    analyzer: Analyzer,
    entries: Option<Mutex<LruCache<Box<str>, Arc<Analysis>>>>,
    max_text_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AnalysisCache {
    /// Capacity and text limit come from the analyzer's config
    /// (`cache_entries = 0` disables caching).
    pub fn new(analyzer: Analyzer) -> Self {
        let config = analyzer.config();
        let entries = NonZeroUsize::new(config.cache_entries).map(|n| Mutex::new(LruCache::new(n)));
        AnalysisCache {
            max_text_bytes: config.cache_max_text_bytes,
            analyzer,
            entries,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    /// The analysis of `sql`, from the cache when this exact text was seen.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let cacheable = sql.len() <= self.max_text_bytes;
        if let (true, Some(entries)) = (cacheable, &self.entries) {
            let mut entries = entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(hit) = entries.get(sql) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(hit);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(self.analyzer.analyze(sql));
        if let (true, Some(entries)) = (cacheable, &self.entries) {
            let mut entries = entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            entries.put(sql.into(), Arc::clone(&analysis));
        }
        analysis
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.as_ref().map_or(0, |e| {
            e.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .len()
        });
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mask::{MaskConfig, Masker},
        sql::SqlConfig,
    };

    fn cache(config: SqlConfig) -> AnalysisCache {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        AnalysisCache::new(Analyzer::new(&config, masker))
    }

    #[test]
    fn repeated_text_is_analyzed_once() {
        let c = cache(SqlConfig::default());
        let a = c.analyze("select * from t where id = 1");
        let b = c.analyze("select * from t where id = 1");
        assert!(Arc::ptr_eq(&a, &b));
        c.analyze("select * from t where id = 2");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 2,
                entries: 2
            }
        );
    }

    #[test]
    fn capacity_is_bounded_least_recently_used_goes() {
        let c = cache(SqlConfig {
            cache_entries: 2,
            ..SqlConfig::default()
        });
        c.analyze("select 1");
        c.analyze("select 2");
        c.analyze("select 1"); // refresh
        c.analyze("select 3"); // evicts "select 2"
        assert_eq!(c.stats().entries, 2);
        c.analyze("select 1");
        assert_eq!(c.stats().hits, 2);
        c.analyze("select 2");
        assert_eq!(c.stats().misses, 4);
    }

    #[test]
    fn long_texts_and_disabled_cache_are_not_stored() {
        let c = cache(SqlConfig {
            cache_max_text_bytes: 10,
            ..SqlConfig::default()
        });
        c.analyze("select * from a_long_table_name");
        assert_eq!(c.stats().entries, 0);
        let off = cache(SqlConfig {
            cache_entries: 0,
            ..SqlConfig::default()
        });
        off.analyze("select 1");
        off.analyze("select 1");
        assert_eq!(off.stats().misses, 2);
    }
}
