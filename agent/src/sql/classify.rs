//! Turns one parsed statement into a [`Classification`]: kind, tables read
//! and written, projected columns, WHERE / LIMIT, dynamic SQL.
use std::{collections::HashSet, ops::ControlFlow};

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable, Ident, LimitClause,
    ObjectName, ObjectNamePart, ObjectType, Query, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableFactor, TableObject, Value, ValueWithSpan, Visit, VisitMut, Visitor, VisitorMut,
};

use super::{Classification, CopyFormat, CopyFormatKind, DynamicSql, ProjectedColumn, StatementKind};

/// PostgreSQL's rendering of an identifier after case folding: unquoted
/// names have ASCII letters lower-cased (as PostgreSQL folds them); the
/// result is written bare when it reads back the same unquoted, else in
/// double quotes (like `quote_ident`), so `"Patients"` and `Patients` stay
/// distinct while `"patients"` and `PATIENTS` are the same name.
pub(crate) fn normalize_ident(ident: &Ident) -> String {
    let folded = if ident.quote_style.is_none() {
        ident.value.to_ascii_lowercase()
    } else {
        ident.value.clone()
    };
    let plain = folded
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && folded
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        folded
    } else {
        format!("\"{}\"", folded.replace('"', "\"\""))
    }
}

pub(crate) fn normalize_name(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => normalize_ident(ident),
            other => other.to_string(),
        })
        .collect();
    parts.join(".")
}

/// Last part of a name, lower-cased: how a function is looked up in the
/// dynamic-SQL list regardless of schema.
fn base_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident.value.to_lowercase(),
        Some(other) => other.to_string().to_lowercase(),
        None => String::new(),
    }
}

/// CTE names in scope while one query is visited.
struct QueryScope {
    /// The query's own CTEs: name and identity of the CTE's query (pointers
    /// only compared, never dereferenced).
    ctes: Vec<(String, *const Query)>,
    recursive: bool,
    /// CTE names from enclosing queries that this query can see.
    inherited: HashSet<String>,
}

impl QueryScope {
    fn visible_in_body(&self) -> HashSet<String> {
        let mut names = self.inherited.clone();
        names.extend(self.ctes.iter().map(|(n, _)| n.clone()));
        names
    }

    /// Names visible inside `child`: a CTE sees the CTEs before it (all of
    /// them with RECURSIVE); any other subquery sees all of them.
    fn visible_in_child(&self, child: *const Query) -> HashSet<String> {
        match self.ctes.iter().position(|(_, q)| std::ptr::eq(*q, child)) {
            Some(i) if !self.recursive => {
                let mut names = self.inherited.clone();
                names.extend(self.ctes[..i].iter().map(|(n, _)| n.clone()));
                names
            }
            _ => self.visible_in_body(),
        }
    }

    fn hides(&self, table: &str) -> bool {
        !table.contains('.') && (self.inherited.contains(table) || self.ctes.iter().any(|(n, _)| n == table))
    }
}

/// `TABLE name` in a query body (not a table factor, so collected here).
fn table_commands(body: &SetExpr, out: &mut Vec<String>) {
    match body {
        SetExpr::Table(table) => {
            if let Some(name) = &table.table_name {
                let name = normalize_ident(name);
                out.push(match &table.schema_name {
                    Some(schema) => format!("{}.{name}", normalize_ident(schema)),
                    None => name,
                });
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            table_commands(left, out);
            table_commands(right, out);
        }
        _ => {}
    }
}

/// Walks the whole statement (subqueries, CTEs, nested DML) collecting
/// tables and dynamic-SQL calls.
struct Collector<'a> {
    dynamic_functions: &'a HashSet<String>,
    /// Every table in a FROM/JOIN/UPDATE/DELETE/MERGE position, in order.
    factors: Vec<String>,
    /// DML targets that also appear as table factors (UPDATE, DELETE, MERGE).
    factor_targets: Vec<String>,
    written: Vec<String>,
    /// One frame per query being visited, for CTE name scoping.
    scopes: Vec<QueryScope>,
    dynamic: Option<DynamicSql>,
    /// First data-modifying statement met (the top one or one in a CTE):
    /// its kind and whether it has a WHERE.
    first_dml: Option<(StatementKind, bool)>,
    /// Every data-modifying statement's kind (the top one and CTEs') and
    /// whether it has a WHERE.
    dml_kinds: Vec<(StatementKind, bool)>,
    /// Functions called that are not known built-ins.
    unknown_functions: Vec<String>,
}

impl Collector<'_> {
    fn note_function(&mut self, name: &ObjectName) {
        let base = base_name(name);
        let schema = (name.0.len() > 1).then(|| match &name.0[name.0.len() - 2] {
            ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
            other => other.to_string().to_lowercase(),
        });
        if super::functions::classify(schema.as_deref(), &base) == super::functions::FunctionClass::Opaque {
            self.unknown_functions.push(normalize_name(name));
        }
        if self.dynamic.is_none() && self.dynamic_functions.contains(&base) {
            self.dynamic = Some(DynamicSql::Function { name: base });
        }
    }

    fn note_target(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, .. } = factor {
            let name = normalize_name(name);
            self.factor_targets.push(name.clone());
            self.written.push(name);
        }
    }

    fn note_dml(&mut self, kind: StatementKind, has_where: bool) {
        self.dml_kinds.push((kind, has_where));
        if self.first_dml.is_none() {
            self.first_dml = Some((kind, has_where));
        }
    }
}

impl Visitor for Collector<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let inherited = match self.scopes.last() {
            Some(parent) => parent.visible_in_child(query),
            None => HashSet::new(),
        };
        let (ctes, recursive) = match &query.with {
            Some(with) => (
                with.cte_tables
                    .iter()
                    .map(|cte| (normalize_ident(&cte.alias.name), &*cte.query as *const Query))
                    .collect(),
                with.recursive,
            ),
            None => (Vec::new(), false),
        };
        let scope = QueryScope {
            ctes,
            recursive,
            inherited,
        };
        let mut tables = Vec::new();
        table_commands(&query.body, &mut tables);
        self.factors.extend(tables.into_iter().filter(|t| !scope.hides(t)));
        self.scopes.push(scope);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, args, .. } = factor {
            if args.is_some() {
                // `FROM dblink(...)`: a function call, not a table.
                self.note_function(name);
            } else {
                let name = normalize_name(name);
                if !self.scopes.last().is_some_and(|scope| scope.hides(&name)) {
                    self.factors.push(name);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.note_function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                match &insert.table {
                    TableObject::TableName(name) => self.written.push(normalize_name(name)),
                    TableObject::TableFunction(f) => self.note_function(&f.name),
                    TableObject::TableQuery(_) => {}
                }
                self.note_dml(StatementKind::Insert, false);
            }
            Statement::Update(update) => {
                self.note_target(&update.table.relation);
                self.note_dml(StatementKind::Update, update.selection.is_some());
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                if let Some(first) = from.first() {
                    self.note_target(&first.relation);
                }
                for name in &delete.tables {
                    self.written.push(normalize_name(name));
                }
                self.note_dml(StatementKind::Delete, delete.selection.is_some());
            }
            Statement::Merge(merge) => {
                self.note_target(&merge.table);
                self.note_dml(StatementKind::Merge, true);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Replaces every literal with `?` (for projected expressions, which end up
/// in policy input and audit records).
struct LiteralStripper;

impl VisitorMut for LiteralStripper {
    type Break = ();
    fn post_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
        value.value = Value::Placeholder("?".to_string());
        ControlFlow::Continue(())
    }
}

fn render_expr(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => normalize_ident(ident),
        Expr::CompoundIdentifier(parts) => parts.iter().map(normalize_ident).collect::<Vec<_>>().join("."),
        other => {
            let mut stripped = other.clone();
            let _ = VisitMut::visit(&mut stripped, &mut LiteralStripper);
            stripped.to_string()
        }
    }
}

fn project(items: &[SelectItem]) -> Vec<ProjectedColumn> {
    items
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) => ProjectedColumn {
                expr: render_expr(expr),
                alias: None,
            },
            SelectItem::ExprWithAlias { expr, alias } => ProjectedColumn {
                expr: render_expr(expr),
                alias: Some(normalize_ident(alias)),
            },
            SelectItem::ExprWithAliases { expr, aliases } => ProjectedColumn {
                expr: render_expr(expr),
                alias: aliases.first().map(normalize_ident),
            },
            SelectItem::QualifiedWildcard(kind, _) => ProjectedColumn {
                expr: match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        format!("{}.*", normalize_name(name))
                    }
                    SelectItemQualifiedWildcardKind::Expr(expr) => {
                        format!("{}.*", render_expr(expr))
                    }
                },
                alias: None,
            },
            SelectItem::Wildcard(_) => ProjectedColumn {
                expr: "*".to_string(),
                alias: None,
            },
        })
        .collect()
}

fn set_expr_projection(body: &SetExpr) -> Vec<ProjectedColumn> {
    match body {
        SetExpr::Select(select) => project(&select.projection),
        SetExpr::Query(query) => set_expr_projection(&query.body),
        SetExpr::SetOperation { left, .. } => set_expr_projection(left),
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => returning(s),
        SetExpr::Table(_) => vec![ProjectedColumn {
            expr: "*".to_string(),
            alias: None,
        }],
        SetExpr::Values(_) => Vec::new(),
    }
}

fn returning(statement: &Statement) -> Vec<ProjectedColumn> {
    let items = match statement {
        Statement::Insert(i) => i.returning.as_deref(),
        Statement::Update(u) => u.returning.as_deref(),
        Statement::Delete(d) => d.returning.as_deref(),
        _ => None,
    };
    items.map(project).unwrap_or_default()
}

fn set_expr_has_where(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.selection.is_some(),
        SetExpr::Query(query) => set_expr_has_where(&query.body),
        SetExpr::SetOperation { left, right, .. } => set_expr_has_where(left) && set_expr_has_where(right),
        _ => false,
    }
}

fn literal_count(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: Value::Number(n, _),
            ..
        }) => n.parse().ok(),
        Expr::Nested(inner) => literal_count(inner),
        _ => None,
    }
}

/// (has_limit, literal value) from LIMIT or FETCH FIRST.
fn query_limit(query: &Query) -> (bool, Option<u64>) {
    let limit = match &query.limit_clause {
        Some(LimitClause::LimitOffset { limit: Some(e), .. }) => Some(e),
        Some(LimitClause::OffsetCommaLimit { limit, .. }) => Some(limit),
        _ => None,
    };
    if let Some(e) = limit {
        return (true, literal_count(e));
    }
    match &query.fetch {
        Some(fetch) => (true, fetch.quantity.as_ref().and_then(literal_count)),
        None => (false, None),
    }
}

/// `SELECT ... INTO new_table`: the table it creates.
fn select_into_target(query: &Query) -> Option<String> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let into = select.into.as_ref()?;
    into.targets.first().map(|t| match t {
        Expr::Identifier(i) => normalize_ident(i),
        Expr::CompoundIdentifier(parts) => parts.iter().map(normalize_ident).collect::<Vec<_>>().join("."),
        other => other.to_string(),
    })
}

fn drop_kind(object_type: &ObjectType) -> StatementKind {
    match object_type {
        ObjectType::Table | ObjectType::ForeignTable => StatementKind::DropTable,
        ObjectType::Database => StatementKind::DropDatabase,
        ObjectType::Schema => StatementKind::DropSchema,
        _ => StatementKind::DropOther,
    }
}

/// Sorted and deduplicated: stable output for policies and audit records.
fn dedup(mut names: Vec<String>) -> Vec<String> {
    names.sort_unstable();
    names.dedup();
    names
}

/// Classifies one parsed statement.
pub(crate) fn classify(statement: &Statement, dynamic_functions: &HashSet<String>) -> Classification {
    let mut c = Collector {
        dynamic_functions,
        factors: Vec::new(),
        factor_targets: Vec::new(),
        written: Vec::new(),
        scopes: Vec::new(),
        dynamic: None,
        first_dml: None,
        dml_kinds: Vec::new(),
        unknown_functions: Vec::new(),
    };
    let _ = statement.visit(&mut c);
    let lineage = super::lineage::of_statement(statement);

    let mut extra_reads = Vec::new();
    let mut copy_query = None;
    let mut copy_format = None;
    let mut columns = Vec::new();
    let mut has_where = false;
    let (mut has_limit, mut limit) = (false, None);
    let mut clear_writes = false;

    let kind = match statement {
        Statement::Query(query) => {
            columns = set_expr_projection(&query.body);
            has_where = set_expr_has_where(&query.body);
            (has_limit, limit) = query_limit(query);
            if let Some(target) = select_into_target(query) {
                c.written.push(target);
                StatementKind::CreateTable
            } else if let Some((kind, dml_where)) = c.first_dml {
                // `WITH d AS (DELETE ...) SELECT ...` is a DELETE.
                has_where = dml_where;
                kind
            } else {
                StatementKind::Select
            }
        }
        Statement::Insert(insert) => {
            columns = returning(statement);
            if let Some(source) = &insert.source {
                has_where = set_expr_has_where(&source.body);
            }
            StatementKind::Insert
        }
        Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_) => {
            columns = returning(statement);
            let (kind, dml_where) = c.first_dml.unwrap_or((StatementKind::Other, false));
            has_where = dml_where;
            kind
        }
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => {
            copy_format = Some(copy_format_of(options, legacy_options));
            if let CopyTarget::Program { .. } = target {
                c.dynamic.get_or_insert(DynamicSql::CopyProgram);
            }
            match source {
                CopySource::Table {
                    table_name,
                    columns: cols,
                } => {
                    let name = normalize_name(table_name);
                    if *to {
                        let list = if cols.is_empty() {
                            "*".to_string()
                        } else {
                            cols.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        };
                        copy_query = Some(format!("SELECT {list} FROM {table_name}"));
                        extra_reads.push(name);
                    } else {
                        c.written.push(name);
                    }
                    columns = if cols.is_empty() {
                        vec![ProjectedColumn {
                            expr: "*".to_string(),
                            alias: None,
                        }]
                    } else {
                        cols.iter()
                            .map(|i| ProjectedColumn {
                                expr: normalize_ident(i),
                                alias: None,
                            })
                            .collect()
                    };
                }
                CopySource::Query(query) => {
                    if *to {
                        copy_query = Some(query.to_string());
                    }
                    columns = set_expr_projection(&query.body);
                    has_where = set_expr_has_where(&query.body);
                    (has_limit, limit) = query_limit(query);
                }
            }
            if *to {
                StatementKind::CopyTo
            } else {
                StatementKind::CopyFrom
            }
        }
        Statement::CreateTable(create) => {
            c.written.push(normalize_name(&create.name));
            StatementKind::CreateTable
        }
        Statement::CreateView(view) => {
            c.written.push(normalize_name(&view.name));
            StatementKind::CreateView
        }
        Statement::CreateIndex(index) => {
            c.written.push(normalize_name(&index.table_name));
            StatementKind::CreateIndex
        }
        Statement::CreateFunction(_) => StatementKind::CreateFunction,
        Statement::Drop { object_type, names, .. } => {
            let kind = drop_kind(object_type);
            if kind != StatementKind::DropDatabase {
                c.written.extend(names.iter().map(normalize_name));
            }
            kind
        }
        Statement::Truncate(truncate) => {
            c.written
                .extend(truncate.table_names.iter().map(|t| normalize_name(&t.name)));
            StatementKind::Truncate
        }
        Statement::AlterTable(alter) => {
            c.written.push(normalize_name(&alter.name));
            StatementKind::Alter
        }
        Statement::Grant(_) | Statement::GrantRole(_) => StatementKind::Grant,
        Statement::Revoke(_) | Statement::RevokeRole(_) => StatementKind::Revoke,
        Statement::Set(_) => StatementKind::Set,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => StatementKind::Show,
        Statement::StartTransaction { .. } => StatementKind::Begin,
        Statement::Commit { .. } => StatementKind::Commit,
        Statement::Rollback { .. } => StatementKind::Rollback,
        Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => StatementKind::Savepoint,
        Statement::Prepare { .. } => StatementKind::Prepare,
        Statement::Execute { .. } => {
            c.dynamic.get_or_insert(DynamicSql::Execute);
            StatementKind::Execute
        }
        Statement::Deallocate { .. } => StatementKind::Deallocate,
        Statement::Call(_) => StatementKind::Call,
        Statement::Declare { stmts, .. } => {
            // A cursor's rows arrive by FETCH, statements of their own: the
            // cursor's query is described here so a policy can judge it.
            if let Some(query) = stmts.iter().find_map(|d| d.for_query.as_deref()) {
                columns = set_expr_projection(&query.body);
                has_where = set_expr_has_where(&query.body);
                (has_limit, limit) = query_limit(query);
            }
            StatementKind::DeclareCursor
        }
        Statement::Fetch { .. } => StatementKind::Fetch,
        Statement::Explain { analyze, statement, .. } => {
            if *analyze {
                // EXPLAIN ANALYZE runs the statement: classify it as that.
                let inner = classify(statement, dynamic_functions);
                let lineage = super::lineage::Lineage {
                    result: super::lineage::ResultLineage::NoData,
                    ..(*inner.lineage).clone()
                };
                return Classification {
                    explain: true,
                    lineage: std::sync::Arc::new(lineage),
                    ..inner
                };
            }
            clear_writes = true;
            StatementKind::Explain
        }
        Statement::ExplainTable { table_name, .. } => {
            extra_reads.push(normalize_name(table_name));
            StatementKind::Explain
        }
        other => {
            let text = other.to_string();
            let head = text.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            if head.starts_with("CREATE") {
                StatementKind::CreateOther
            } else if head.starts_with("ALTER") {
                StatementKind::Alter
            } else {
                StatementKind::Other
            }
        }
    };

    // Reads: every table factor (CTE references excluded by scope), minus
    // one occurrence per DML target that is itself a factor.
    let mut reads = c.factors;
    for target in &c.factor_targets {
        if let Some(pos) = reads.iter().position(|r| r == target) {
            reads.remove(pos);
        }
    }
    reads.extend(extra_reads);
    let mut written = c.written;
    if clear_writes {
        reads.append(&mut written);
    }

    let unknown_functions = dedup(c.unknown_functions);
    let mut effects = vec![kind];
    let mut unbounded_writes = Vec::new();
    if !clear_writes {
        effects.extend(c.dml_kinds.iter().map(|(k, _)| *k));
        unbounded_writes.extend(
            c.dml_kinds
                .iter()
                .filter(|(k, has_where)| !has_where && matches!(k, StatementKind::Delete | StatementKind::Update))
                .map(|(k, _)| *k),
        );
        if !unknown_functions.is_empty() {
            effects.push(StatementKind::Call);
        }
    }
    effects.sort_by_key(|k| k.as_str());
    effects.dedup();
    unbounded_writes.sort_by_key(|k| k.as_str());
    unbounded_writes.dedup();
    let predicate_columns = dedup(lineage.predicate_sources.iter().map(ToString::to_string).collect());
    Classification {
        kind,
        tables_read: dedup(reads),
        tables_written: dedup(written),
        columns,
        has_where,
        has_limit,
        limit,
        dynamic: c.dynamic,
        explain: clear_writes,
        copy_query,
        copy_format,
        effects,
        unbounded_writes,
        unknown_functions,
        predicate_columns,
        stores_phi: false,
        lineage: std::sync::Arc::new(lineage),
        prepared: None,
    }
}

/// The data format a COPY statement's options name.
fn copy_format_of(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> CopyFormat {
    let mut f = CopyFormat::default();
    for o in options {
        match o {
            CopyOption::Format(name) => {
                f.kind = match name.value.to_ascii_lowercase().as_str() {
                    "csv" => CopyFormatKind::Csv,
                    "binary" => CopyFormatKind::Binary,
                    _ => CopyFormatKind::Text,
                }
            }
            CopyOption::Delimiter(c) => f.delimiter = Some(*c),
            CopyOption::Null(n) => f.null = Some(n.clone()),
            CopyOption::Header(h) => f.header = *h,
            CopyOption::Quote(c) => f.quote = Some(*c),
            CopyOption::Escape(c) => f.escape = Some(*c),
            _ => {}
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => f.kind = CopyFormatKind::Binary,
            CopyLegacyOption::Delimiter(c) => f.delimiter = Some(*c),
            CopyLegacyOption::Null(n) => f.null = Some(n.clone()),
            CopyLegacyOption::Header => f.header = true,
            CopyLegacyOption::Csv(csv) => {
                f.kind = CopyFormatKind::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => f.header = true,
                        CopyLegacyCsvOption::Quote(q) => f.quote = Some(*q),
                        CopyLegacyCsvOption::Escape(e) => f.escape = Some(*e),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    f
}
