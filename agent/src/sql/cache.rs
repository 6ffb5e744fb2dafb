//! Bounded LRU caches of analyses: by statement shape, so a statement run
//! many times with different literals is parsed and classified once, and by
//! exact text, so a text that repeats is not even tokenized again.
use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;

use super::{Analysis, Analyzer, Classification, ShapeKey};

/// Classifications by statement shape (full 256-bit shape key, see
/// [`ShapeKey`]), bounded LRU. Statements of one shape differ only in
/// literal values and in the letter case of unquoted words, which
/// PostgreSQL folds; the classification reused is the first one seen (its
/// projected expressions keep that statement's letter case).
#[derive(Debug)]
pub struct ShapeCache {
    entries: Option<Mutex<LruCache<ShapeKey, Classification>>>,
    hits: AtomicU64,
}

impl ShapeCache {
    /// `entries = 0` disables it.
    pub fn new(entries: usize) -> Self {
        ShapeCache {
            entries: NonZeroUsize::new(entries).map(|n| Mutex::new(LruCache::new(n))),
            hits: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, key: &ShapeKey) -> Option<Classification> {
        let mut entries = self.entries.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        let hit = entries.get(key).cloned();
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub(crate) fn put(&self, key: ShapeKey, classification: &Classification) {
        if let Some(entries) = &self.entries {
            let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.put(key, classification.clone());
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Hit/miss counters for status output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Exact-text hits.
    pub hits: u64,
    /// Exact-text misses (analyzed, possibly with a shape hit).
    pub misses: u64,
    /// Misses whose classification came from the shape cache (no parse).
    pub shape_hits: u64,
    pub entries: usize,
}

/// Shared by all sessions. Analysis runs outside the lock, so a slow parse
/// never blocks other sessions' hits.
#[derive(Debug)]
pub struct AnalysisCache {
    analyzer: Analyzer,
    entries: Option<Mutex<LruCache<Box<str>, Arc<Analysis>>>>,
    shapes: ShapeCache,
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
            shapes: ShapeCache::new(config.shape_cache_entries),
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

    /// The analysis of `sql`, from the cache when this exact text was seen
    /// (and its shape was new then).
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let cacheable = sql.len() <= self.max_text_bytes;
        if let (true, Some(entries)) = (cacheable, &self.entries) {
            let mut entries = entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(hit) = entries.get(sql) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Arc::clone(hit);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (analysis, from_shapes) = self.analyzer.analyze_shapes(sql, Some(&self.shapes));
        let analysis = Arc::new(analysis);
        // A text whose shape was known is usually one more literal value
        // (pgbench, ORMs that inline): keeping it would only churn the
        // exact-text entries. It is tokenized again if it does repeat.
        if let (true, false, Some(entries)) = (cacheable, from_shapes, &self.entries) {
            let mut entries = entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            entries.put(sql.into(), Arc::clone(&analysis));
        }
        analysis
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self
            .entries
            .as_ref()
            .map_or(0, |e| e.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len());
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            shape_hits: self.shapes.hits(),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mask::{MaskConfig, Masker},
        sql::{SqlConfig, StatementKind},
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
        // A new literal in a known shape: classified from the shape cache,
        // not kept by exact text.
        let c2 = c.analyze("select * from t where id = 2");
        assert_eq!(c2.statements[0].classification, a.statements[0].classification);
        c.analyze("select * from t where id = 2");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                shape_hits: 2,
                entries: 1
            }
        );
    }

    #[test]
    fn same_shape_reuses_classification_but_keeps_its_own_texts() {
        let c = cache(SqlConfig::default());
        let a = c.analyze("select name from patients where ssn = '123-45-6789' limit 5");
        let b = c.analyze("SELECT name FROM patients WHERE ssn = '987-65-4321' LIMIT 5");
        assert_eq!(c.stats().shape_hits, 1);
        let (sa, sb) = (&a.statements[0], &b.statements[0]);
        assert_eq!(sa.classification, sb.classification);
        assert_eq!(sa.fingerprint, sb.fingerprint);
        assert_eq!(sb.normalized_text, "SELECT name FROM patients WHERE ssn = ? LIMIT ?");
        // A different limit is classified afresh (the value is part of it).
        let d = c.analyze("select name from patients where ssn = '1' limit 50");
        assert_eq!(d.statements[0].classification.as_ref().unwrap().limit, Some(50));
        assert_eq!(c.stats().shape_hits, 1);
        // Unparseable statements are never shared (their errors carry positions).
        c.analyze("selec 1");
        c.analyze("selec 2");
        assert_eq!(c.stats().shape_hits, 1);
    }

    /// A function body and COPY options are literals that decide what the
    /// statement does: statements of one shape but other literals are
    /// classified afresh.
    #[test]
    fn literal_bodies_and_copy_options_are_not_shared_by_shape() {
        let c = cache(SqlConfig::default());
        let body = |b: &str| format!("create or replace function f() returns void language sql as '{b}'");
        let harmless = c.analyze(&body("select 1"));
        let truncates = c.analyze(&body("truncate visits"));
        let effects = |a: &Analysis| a.statements[0].classification.as_ref().unwrap().effects.clone();
        assert!(!effects(&harmless).contains(&StatementKind::Truncate));
        assert!(effects(&truncates).contains(&StatementKind::Truncate));
        let comma = c.analyze("copy patients to stdout (format csv, delimiter ',')");
        let pipe = c.analyze("copy patients to stdout (format csv, delimiter '|')");
        let delimiter = |a: &Analysis| {
            let c = a.statements[0].classification.as_ref().unwrap();
            c.copy_format.as_ref().and_then(|f| f.delimiter)
        };
        assert_eq!((delimiter(&comma), delimiter(&pipe)), (Some(','), Some('|')));
        assert_eq!(c.stats().shape_hits, 0);
    }

    #[test]
    fn capacity_is_bounded_least_recently_used_goes() {
        let c = cache(SqlConfig {
            cache_entries: 2,
            ..SqlConfig::default()
        });
        c.analyze("select a");
        c.analyze("select b");
        c.analyze("select a"); // refresh
        c.analyze("select c"); // evicts "select b"
        assert_eq!(c.stats().entries, 2);
        c.analyze("select a");
        assert_eq!(c.stats().hits, 2);
        c.analyze("select b");
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
