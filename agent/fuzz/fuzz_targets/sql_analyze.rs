//! Any text as SQL: analysis never panics, lineage never panics and
//! places every output column, and recorded text never holds a literal
//! the input did not have.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopgate::{
    mask::{MaskConfig, Masker},
    sql::{Analyzer, SqlConfig, StatementKind, lineage::ResultLineage},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(sql) = std::str::from_utf8(data) {
        let masker = Masker::new(&MaskConfig::default(), None).expect("default masker");
        let analysis = Analyzer::new(&SqlConfig::default(), masker).analyze(sql);
        for statement in &analysis.statements {
            let Ok(c) = &statement.classification else {
                continue;
            };
            // Whatever the result's width, every field gets a place.
            for fields in 0..6 {
                assert_eq!(c.lineage.align(fields).len(), fields);
            }
            // A query's every output column has its lineage entry (VALUES
            // lists no projected columns; lineage has them).
            if c.kind == StatementKind::Select
                && !c.explain
                && !c.columns.is_empty()
                && let ResultLineage::Columns(columns) = &c.lineage.result
            {
                assert_eq!(columns.len(), c.columns.len(), "{sql}");
            }
        }
    }
});
