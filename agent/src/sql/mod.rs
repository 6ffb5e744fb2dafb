//! SQL statement analysis, protocol-independent.
//!
//! [`Analyzer::analyze`] splits a (possibly multi-statement) string and, for
//! each statement, gives its [`Classification`] (or a [`SqlError`] when it
//! cannot be parsed), a shape [`Fingerprint`], and two recordable texts:
//!
//! - `normalized_text`: literals and parameters replaced by `?`, comments
//!   dropped. It can never carry a data value, and it groups executions of
//!   the same shape. **This is what the audit record should carry by
//!   default**: detectors cannot recognise names, addresses or diagnoses in
//!   literals, so only the normalized text guarantees invariant 3 ("no raw
//!   PHI leaves the agent").
//! - `masked_text`: the statement as written with detector-found PHI masked
//!   inside literals and comments. More useful for an investigation (which
//!   row was touched), but only as safe as the detectors; record it only
//!   where `record_masked_text = true` is a deliberate choice.
//!
//! [`AnalysisCache`] keys analyses by exact statement text so each distinct
//! statement is parsed once.
mod cache;
mod classify;
mod functions;
pub mod lineage;
mod routine;
mod tokens;

pub use cache::{AnalysisCache, CacheStats, ShapeCache};
pub use tokens::ShapeKey;

use std::{collections::HashSet, fmt, sync::Arc};

use serde::{Deserialize, Serialize, ser::SerializeStruct};
use sqlparser::{dialect::PostgreSqlDialect, parser::Parser};

use crate::mask::Masker;

/// `[sql]` in the agent config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Functions (matched by name without schema, case-insensitive) that run
    /// SQL text or read tables named at run time; a statement calling one is
    /// dynamic SQL. Default: the dblink family, the `*_to_xml` family and
    /// `ts_stat` / `ts_rewrite`.
    pub dynamic_functions: Vec<String>,
    /// Distinct statement texts whose analysis is kept. Default 10 000.
    pub cache_entries: usize,
    /// Distinct statement shapes (same SQL up to literal values) whose
    /// classification is kept, so statements with inline literals are
    /// parsed once per shape. Default 10 000.
    pub shape_cache_entries: usize,
    /// Texts longer than this many bytes are analyzed but not cached
    /// (bulk INSERTs would crowd out the hot statements). Default 65 536.
    pub cache_max_text_bytes: usize,
    /// SQL longer than this many bytes is refused without parsing.
    /// Default 4 MiB.
    pub max_text_bytes: usize,
    /// Parser nesting limit (parentheses, subqueries); deeper SQL is
    /// refused. Default 50.
    pub max_nesting: usize,
    /// Record `masked_text` (literals kept, detector-found PHI masked) in
    /// the audit record besides `normalized_text`. Default `false`.
    pub record_masked_text: bool,
}

/// Functions whose arguments are SQL text or table names resolved at run time.
pub const DEFAULT_DYNAMIC_FUNCTIONS: &[&str] = &[
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            dynamic_functions: DEFAULT_DYNAMIC_FUNCTIONS.iter().map(|s| s.to_string()).collect(),
            cache_entries: 10_000,
            shape_cache_entries: 10_000,
            cache_max_text_bytes: 64 * 1024,
            max_text_bytes: 4 * 1024 * 1024,
            max_nesting: 50,
            record_masked_text: false,
        }
    }
}

/// What a statement does. Serialized in snake_case (`drop_table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    CopyTo,
    CopyFrom,
    /// CREATE TABLE, CREATE TABLE AS and SELECT ... INTO.
    CreateTable,
    CreateView,
    CreateIndex,
    CreateFunction,
    CreateOther,
    DropTable,
    DropDatabase,
    DropSchema,
    DropOther,
    Truncate,
    Alter,
    Grant,
    Revoke,
    DoBlock,
    Call,
    Prepare,
    Execute,
    Deallocate,
    DeclareCursor,
    Fetch,
    Explain,
    Set,
    Show,
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Other,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::CopyTo => "copy_to",
            StatementKind::CopyFrom => "copy_from",
            StatementKind::CreateTable => "create_table",
            StatementKind::CreateView => "create_view",
            StatementKind::CreateIndex => "create_index",
            StatementKind::CreateFunction => "create_function",
            StatementKind::CreateOther => "create_other",
            StatementKind::DropTable => "drop_table",
            StatementKind::DropDatabase => "drop_database",
            StatementKind::DropSchema => "drop_schema",
            StatementKind::DropOther => "drop_other",
            StatementKind::Truncate => "truncate",
            StatementKind::Alter => "alter",
            StatementKind::Grant => "grant",
            StatementKind::Revoke => "revoke",
            StatementKind::DoBlock => "do_block",
            StatementKind::Call => "call",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::Deallocate => "deallocate",
            StatementKind::DeclareCursor => "declare_cursor",
            StatementKind::Fetch => "fetch",
            StatementKind::Explain => "explain",
            StatementKind::Set => "set",
            StatementKind::Show => "show",
            StatementKind::Begin => "begin",
            StatementKind::Commit => "commit",
            StatementKind::Rollback => "rollback",
            StatementKind::Savepoint => "savepoint",
            StatementKind::Other => "other",
        }
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a statement counts as dynamic SQL: it runs code the classifier cannot see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DynamicSql {
    /// `DO $$ ... $$`: an anonymous PL/pgSQL block.
    DoBlock,
    /// `EXECUTE name`: runs a prepared statement by name.
    Execute,
    /// Calls a function from `dynamic_functions` (`dblink`, `query_to_xml`).
    Function { name: String },
    /// `COPY ... TO/FROM PROGRAM`: runs a shell command on the server.
    CopyProgram,
    /// `CREATE FUNCTION` whose body cannot be analysed: another language,
    /// PL/pgSQL that runs `EXECUTE`, SQL that does not parse.
    FunctionBody { language: String },
}

/// One output column as written in the statement. Literals inside the
/// expression are replaced by `?`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProjectedColumn {
    /// `*`, `t.*`, `p.ssn`, `upper(name)`; identifiers case-folded.
    pub expr: String,
    pub alias: Option<String>,
}

impl ProjectedColumn {
    /// The name the result column will most likely carry: the alias, else
    /// the last identifier part, else the expression.
    pub fn output_name(&self) -> &str {
        if let Some(alias) = &self.alias {
            return alias;
        }
        match self.expr.rsplit_once('.') {
            Some((_, last)) if !self.expr.contains('(') => last,
            _ => &self.expr,
        }
    }
}

/// What one statement does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Classification {
    /// For a query whose CTE modifies data (`WITH d AS (DELETE ...) SELECT`),
    /// the kind of that modification.
    pub kind: StatementKind,
    /// Tables (and views) read, `schema.table` as written, case-folded,
    /// without CTE names; sorted. A DML target appears here only if it is also read
    /// elsewhere in the statement (e.g. in a subquery).
    pub tables_read: Vec<String>,
    /// Tables created, changed, emptied or dropped (including DML inside
    /// CTEs); sorted.
    pub tables_written: Vec<String>,
    /// Output columns (SELECT list, RETURNING, COPY column list; `*` for all).
    pub columns: Vec<ProjectedColumn>,
    /// The statement (or its data-modifying part) has a WHERE clause.
    pub has_where: bool,
    /// The query has LIMIT or FETCH FIRST.
    pub has_limit: bool,
    /// The limit, when it is a literal.
    pub limit: Option<u64>,
    /// Set when the statement runs SQL the classifier cannot see.
    pub dynamic: Option<DynamicSql>,
    /// The statement is wrapped in EXPLAIN (with ANALYZE the kind and tables
    /// are the wrapped statement's, because it runs).
    pub explain: bool,
    /// For `COPY ... TO`: a query with the same result columns (rendered
    /// from the parse tree), so the proxy can learn the columns' real names
    /// without running anything.
    pub copy_query: Option<String>,
    /// For `COPY`: the data format and its options, so COPY data can be
    /// read field by field.
    pub copy_format: Option<CopyFormat>,
    /// Everything the statement may do, sorted: its own kind, each
    /// data-modifying CTE's, what the body of a function it creates does
    /// (`CREATE FUNCTION ... AS 'TRUNCATE t'` has `truncate`), and `call`
    /// when it calls a function not known to be read-only (whose body
    /// loopgate cannot see: it counts as a write).
    pub effects: Vec<StatementKind>,
    /// `delete` / `update` when the statement (or a CTE of it, or the body
    /// of a function it creates) deletes or updates without a WHERE: every
    /// row of the table, as irreversible as TRUNCATE.
    pub unbounded_writes: Vec<StatementKind>,
    /// Functions called that are not known built-ins (see `sql::functions`);
    /// their results are masked as PHI and their calls count as writes.
    pub unknown_functions: Vec<String>,
    /// `table.column` of every column used in a WHERE, JOIN ... ON, HAVING
    /// or FILTER condition, anywhere in the statement (as resolved by
    /// lineage; an unqualified column of a join names each table that may
    /// hold it). A filter on a PHI column is an oracle on its values.
    pub predicate_columns: Vec<String>,
    /// The statement stores rows derived from PHI in a table or view
    /// (CREATE TABLE AS, SELECT INTO, CREATE VIEW, INSERT ... SELECT into a
    /// column not itself masked): the new object's columns would no longer
    /// be recognisable as PHI. Decided with the mask rules by name; a `*`
    /// over a table or an unknown function counts as PHI.
    pub stores_phi: bool,
    /// Where each output column's values come from (see `sql::lineage`).
    #[serde(skip)]
    pub lineage: Arc<lineage::Lineage>,
    /// What the statement does to the session's SQL-level prepared
    /// statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`), so
    /// a proxy can judge and mask `EXECUTE name` as the statement it runs.
    #[serde(skip)]
    pub prepared: Option<PreparedOp>,
}

impl Classification {
    /// Whether this classification depends on the statement's literal
    /// values, not only on its shape: a function body is a string
    /// (`CREATE FUNCTION ... AS 'TRUNCATE t'`), COPY options are strings
    /// (`DELIMITER '|'`). Such a classification is not shared by statements
    /// of the same shape, nor a decision on it by statements of the same
    /// normalized text.
    pub fn depends_on_literals(&self) -> bool {
        self.copy_format.is_some()
            || self
                .effects
                .iter()
                .any(|k| matches!(k, StatementKind::CreateFunction | StatementKind::CreateOther))
    }

    /// Whether this classification is of the statement an `EXECUTE name`
    /// runs in one session: the same text means another statement in
    /// another session, so a decision on it is never reused by text.
    pub fn is_executed_prepared(&self) -> bool {
        matches!(self.prepared, Some(PreparedOp::Execute { .. }))
    }
}

/// A statement's effect on SQL-level prepared statements. Names are
/// case-folded as PostgreSQL folds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreparedOp {
    /// `PREPARE name AS statement`: what `statement` does when executed.
    Prepare {
        name: String,
        statement: Arc<Classification>,
    },
    /// `EXECUTE name (...)`.
    Execute { name: String },
    /// `DEALLOCATE name`, or every one (`DEALLOCATE ALL`, `DISCARD ALL`)
    /// when `name` is `None`.
    Deallocate { name: Option<String> },
}

/// A COPY statement's data format (`WITH (FORMAT csv, HEADER, ...)` or the
/// older `CSV HEADER` spelling). Unset options take PostgreSQL's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyFormat {
    pub kind: CopyFormatKind,
    pub delimiter: Option<char>,
    pub null: Option<String>,
    pub header: bool,
    pub quote: Option<char>,
    pub escape: Option<char>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormatKind {
    #[default]
    Text,
    Csv,
    Binary,
}

/// Why SQL could not be analyzed. Messages never quote the SQL's values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum SqlError {
    #[error("SQL could not be tokenized at line {line}, column {column}: {message}")]
    Tokenize { message: String, line: u64, column: u64 },
    #[error("SQL could not be parsed{}: {message}", position(*line, *column))]
    Parse {
        message: String,
        line: Option<u64>,
        column: Option<u64>,
    },
    #[error("SQL is nested too deeply")]
    TooDeep,
    #[error("SQL text is too long ({len} bytes, limit {limit})")]
    TooLong { len: usize, limit: usize },
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        _ => String::new(),
    }
}

/// Stable 64-bit hash of a statement's shape (see [`Analyzer`]); shown as
/// 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One statement of an analyzed string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyzedStatement {
    pub fingerprint: Fingerprint,
    /// Literals and parameters as `?`, comments dropped: safe to record.
    pub normalized_text: String,
    /// Literals kept, detector-found PHI masked (see the module docs).
    pub masked_text: String,
    /// What it does, or why it could not be parsed.
    pub classification: Result<Classification, SqlError>,
}

impl Serialize for AnalyzedStatement {
    // Flat shape for policy engines: `classification` or `error` is null.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("AnalyzedStatement", 5)?;
        st.serialize_field("fingerprint", &self.fingerprint)?;
        st.serialize_field("normalized_text", &self.normalized_text)?;
        st.serialize_field("masked_text", &self.masked_text)?;
        st.serialize_field("classification", &self.classification.as_ref().ok())?;
        st.serialize_field("error", &self.classification.as_ref().err())?;
        st.end()
    }
}

impl AnalyzedStatement {
    pub fn kind(&self) -> Option<StatementKind> {
        self.classification.as_ref().ok().map(|c| c.kind)
    }
}

/// All statements of one SQL string, in order. Empty for a string with no
/// statements (only whitespace, comments or `;`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Analysis {
    pub statements: Vec<AnalyzedStatement>,
}

impl Analysis {
    /// Whether every statement parsed.
    pub fn all_parsed(&self) -> bool {
        self.statements.iter().all(|s| s.classification.is_ok())
    }
}

/// Parses and classifies SQL (PostgreSQL dialect). Cheap to share.
#[derive(Clone, Debug)]
pub struct Analyzer {
    config: SqlConfig,
    dynamic_functions: Arc<HashSet<String>>,
    masker: Masker,
}

impl Analyzer {
    /// `masker` produces `masked_text`.
    pub fn new(config: &SqlConfig, masker: Masker) -> Self {
        Analyzer {
            dynamic_functions: Arc::new(config.dynamic_functions.iter().map(|f| f.to_lowercase()).collect()),
            config: config.clone(),
            masker,
        }
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// Analyzes every statement in `sql`. Never panics; SQL that cannot be
    /// tokenized as a whole yields one statement carrying the error.
    pub fn analyze(&self, sql: &str) -> Analysis {
        self.analyze_with(sql, None)
    }

    /// Like [`Analyzer::analyze`], reusing the classification of a statement
    /// of the same shape (same tokens up to literal values) from `shapes`:
    /// only tokenizing and the recordable texts are per-text work then.
    pub fn analyze_with(&self, sql: &str, shapes: Option<&ShapeCache>) -> Analysis {
        self.analyze_shapes(sql, shapes).0
    }

    /// [`Analyzer::analyze_with`], also telling whether every statement's
    /// classification came from `shapes` (nothing was parsed).
    pub(crate) fn analyze_shapes(&self, sql: &str, shapes: Option<&ShapeCache>) -> (Analysis, bool) {
        if sql.len() > self.config.max_text_bytes {
            let error = SqlError::TooLong {
                len: sql.len(),
                limit: self.config.max_text_bytes,
            };
            return (Analysis::unanalyzable(error), false);
        }
        let all = match tokens::tokenize(sql) {
            Ok(t) => t,
            Err(e) => return (Analysis::unanalyzable(e), false),
        };
        let mut all_from_shapes = true;
        let statements = tokens::split(all)
            .into_iter()
            .map(|toks| {
                let (fingerprint, key) = tokens::shape(&toks);
                let normalized_text = tokens::normalized_text(&toks);
                let masked_text = tokens::masked_text(&toks, &self.masker);
                let classification = match shapes.and_then(|cache| cache.get(&key)) {
                    Some(hit) => Ok(hit),
                    None => {
                        all_from_shapes = false;
                        let fresh = self.classify_tokens(toks);
                        // Errors carry positions in this text: not shared.
                        if let (Ok(c), Some(cache)) = (&fresh, shapes)
                            && !c.depends_on_literals()
                        {
                            cache.put(key, c);
                        }
                        fresh
                    }
                };
                AnalyzedStatement {
                    fingerprint,
                    normalized_text,
                    masked_text,
                    classification,
                }
            })
            .collect();
        (Analysis { statements }, all_from_shapes)
    }

    fn classify_tokens(&self, toks: Vec<sqlparser::tokenizer::TokenWithSpan>) -> Result<Classification, SqlError> {
        if tokens::is_do_block(&toks) {
            return Ok(Classification {
                kind: StatementKind::DoBlock,
                tables_read: Vec::new(),
                tables_written: Vec::new(),
                columns: Vec::new(),
                has_where: false,
                has_limit: false,
                limit: None,
                dynamic: Some(DynamicSql::DoBlock),
                explain: false,
                copy_query: None,
                copy_format: None,
                effects: vec![StatementKind::DoBlock],
                unbounded_writes: Vec::new(),
                unknown_functions: Vec::new(),
                predicate_columns: Vec::new(),
                stores_phi: false,
                lineage: Arc::new(lineage::Lineage::unknown()),
                prepared: None,
            });
        }
        let parsed = Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(self.config.max_nesting)
            .with_tokens_with_locations(tokens::plain_catalog_operators(toks))
            .parse_statements()
            .map_err(|e| self.parse_error(e))?;
        match parsed.as_slice() {
            [one] => Ok(self.classify_statement(one)),
            [] => Err(SqlError::Parse {
                message: "no statement".to_string(),
                line: None,
                column: None,
            }),
            // Two statements without a `;` between them: refuse rather than guess.
            _ => Err(SqlError::Parse {
                message: "expected one statement".to_string(),
                line: None,
                column: None,
            }),
        }
    }

    fn classify_statement(&self, statement: &sqlparser::ast::Statement) -> Classification {
        let mut c = classify::classify(statement, &self.dynamic_functions);
        routine::analyse(statement, &mut c, self);
        c.stores_phi = stores_phi(statement, &c.lineage, &self.masker);
        c.prepared = self.prepared_op(statement);
        c
    }

    /// See [`Classification::prepared`]: a PREPARE's statement is
    /// classified as a statement of its own.
    fn prepared_op(&self, statement: &sqlparser::ast::Statement) -> Option<PreparedOp> {
        use sqlparser::ast::{DiscardObject, Statement};
        match statement {
            Statement::Prepare { name, statement, .. } => Some(PreparedOp::Prepare {
                name: classify::normalize_ident(name),
                statement: Arc::new(self.classify_statement(statement)),
            }),
            Statement::Execute {
                name: Some(name),
                immediate: false,
                ..
            } => Some(PreparedOp::Execute {
                name: classify::normalize_name(name),
            }),
            Statement::Deallocate { name, .. } => Some(PreparedOp::Deallocate {
                name: (name.quote_style.is_some() || !name.value.eq_ignore_ascii_case("all"))
                    .then(|| classify::normalize_ident(name)),
            }),
            Statement::Discard {
                object_type: DiscardObject::ALL,
            } => Some(PreparedOp::Deallocate { name: None }),
            _ => None,
        }
    }

    /// Keeps the parser's expectation, drops the echoed token (it may be a
    /// value), masks what is left.
    fn parse_error(&self, e: sqlparser::parser::ParserError) -> SqlError {
        use sqlparser::parser::ParserError;
        let raw = match e {
            ParserError::RecursionLimitExceeded => return SqlError::TooDeep,
            ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        };
        let (line, column) = parse_location(&raw);
        let without_location = raw.split(" at Line: ").next().unwrap_or("");
        let expectation = without_location.split(", found:").next().unwrap_or("");
        SqlError::Parse {
            message: self.masker.mask_free_text(expectation).into_owned(),
            line,
            column,
        }
    }
}

/// Whether `statement` stores PHI-derived rows: see
/// [`Classification::stores_phi`].
fn stores_phi(statement: &sqlparser::ast::Statement, lineage: &lineage::Lineage, masker: &Masker) -> bool {
    let Some(stored) = &lineage.stored else {
        return false;
    };
    let phi = |d: &lineage::Derivation| {
        !d.safe
            && (d.opaque
                || d.sources
                    .iter()
                    .any(|s| s.whole_row() || masker.masks_column(&s.column, Some(&s.table), &[])))
    };
    // INSERT into named columns: a column masked by name stays masked.
    let targets: Vec<String> = match statement {
        sqlparser::ast::Statement::Insert(insert) => {
            insert.columns.iter().map(|c| c.to_string().to_lowercase()).collect()
        }
        _ => Vec::new(),
    };
    stored.iter().enumerate().any(|(i, column)| {
        let target_masked = targets.get(i).is_some_and(|t| masker.masks_column(t, None, &[]));
        !target_masked && (column.expands || phi(&column.derivation))
    })
}

/// `... at Line: 3, Column: 14` → (3, 14).
fn parse_location(message: &str) -> (Option<u64>, Option<u64>) {
    let Some((_, tail)) = message.rsplit_once("Line: ") else {
        return (None, None);
    };
    let mut parts = tail.split(", Column: ");
    let line = parts.next().and_then(|l| l.trim().parse().ok());
    let column = parts
        .next()
        .and_then(|c| c.trim().split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|c| c.parse().ok());
    (line, column)
}

impl Analysis {
    fn unanalyzable(error: SqlError) -> Self {
        Analysis {
            statements: vec![AnalyzedStatement {
                fingerprint: Fingerprint(0),
                normalized_text: String::new(),
                masked_text: String::new(),
                classification: Err(error),
            }],
        }
    }
}

#[cfg(test)]
mod tests;
