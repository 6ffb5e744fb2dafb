//! Column lineage: for every output column of a statement, the source
//! columns its values derive from.
//!
//! Masking by column name only sees `SELECT ssn FROM patients`; a value
//! computed from `ssn` (`ssn || 'x'`, `reverse(ssn)`, `to_json(p)`,
//! `array_agg(ssn)`, a CTE or subquery over it) arrives with no table in its
//! RowDescription. Lineage follows values through expressions, functions,
//! casts, records, JSON and array constructors, aggregates, subqueries,
//! CTEs, set operations, `t.*` and whole-row references, LATERAL and table
//! functions, so the proxy can mask such a column whole.
//!
//! Failing closed: a call of a function whose body lineage cannot see
//! ([`super::functions`]) makes its result *opaque*; a whole-row reference
//! to a table (`to_json(p)`) derives from `table.*`, which counts as PHI;
//! a statement whose result lineage cannot describe ([`ResultLineage::Unknown`],
//! e.g. `FETCH`, `EXECUTE`) leaves every column without a table PHI.
use std::collections::BTreeSet;

use serde::Serialize;
use sqlparser::ast::{
    CopySource, Expr, FromTable, Function, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor, TableWithJoins, Visit, Visitor,
};

use super::{
    classify::{normalize_ident, normalize_name},
    functions::{self, FunctionClass},
};

/// A column a value derives from: `table.column`, or `table.*` for a whole
/// row (a table alias used as a value). `table` is as written (case-folded,
/// schema kept when given).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Source {
    pub table: String,
    pub column: String,
}

impl Source {
    pub fn whole_row(&self) -> bool {
        self.column == "*"
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// Where one value comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Derivation {
    pub sources: BTreeSet<Source>,
    /// A plain column reference: the server names its table in the
    /// RowDescription, and the catalog decides as for any table column.
    pub direct: bool,
    /// It passes through something lineage cannot see into (a function
    /// body): it may carry any value.
    pub opaque: bool,
    /// The outermost operation is on the safe list (`count`, `length`,
    /// `IS NULL`): it cannot carry its arguments' values.
    pub safe: bool,
}

impl Derivation {
    fn constant() -> Self {
        Derivation::default()
    }

    fn column(table: &str, column: &str) -> Self {
        Derivation {
            sources: BTreeSet::from([Source {
                table: table.to_owned(),
                column: column.to_owned(),
            }]),
            direct: true,
            ..Derivation::default()
        }
    }

    fn opaque() -> Self {
        Derivation {
            opaque: true,
            ..Derivation::default()
        }
    }

    /// The value computed from `self` and `other`. A safe part (`count`,
    /// `length`) contributes no value, only a count or a size.
    fn union(self, other: Derivation) -> Derivation {
        let (a, b) = (self.value_part(), other.value_part());
        let mut sources = a.sources;
        sources.extend(b.sources);
        Derivation {
            sources,
            direct: false,
            opaque: a.opaque || b.opaque,
            safe: false,
        }
    }

    /// What of this value can carry data: nothing when it is safe.
    fn value_part(self) -> Derivation {
        if self.safe { Derivation::constant() } else { self }
    }

    /// The value computed from `self` alone (a cast, an operator): no
    /// longer a plain column; computed from a safe value, a constant.
    fn derived(self) -> Derivation {
        Derivation {
            direct: false,
            ..self.value_part()
        }
    }

    fn unite(parts: impl IntoIterator<Item = Derivation>) -> Derivation {
        parts
            .into_iter()
            .fold(Derivation::constant(), Derivation::union)
            .derived()
    }
}

/// One output column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct OutputColumn {
    /// The name the column will most likely carry (alias, column name).
    pub name: Option<String>,
    pub derivation: Derivation,
    /// Stands for an unknown number of columns: a `*` or `t.*` over a table
    /// whose columns only the server knows.
    pub expands: bool,
}

/// What a statement's result rows are made of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "columns", rename_all = "snake_case")]
pub enum ResultLineage {
    /// Output columns in order (expanding ones stand for several).
    Columns(Vec<OutputColumn>),
    /// The statement returns no rows derived from table data (SET, SHOW,
    /// EXPLAIN, DDL, DML without RETURNING).
    NoData,
    /// The rows' origin is not visible in this statement (FETCH, EXECUTE,
    /// CALL): columns the server does not attribute to a table are PHI.
    Unknown,
}

/// Lineage facts of one statement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Lineage {
    pub result: ResultLineage,
    /// Columns used in WHERE, JOIN ... ON, HAVING and FILTER conditions,
    /// anywhere in the statement: each filter is an oracle on its values.
    pub predicate_sources: BTreeSet<Source>,
    /// For statements that store rows in a new object (CREATE TABLE AS,
    /// SELECT INTO, CREATE [MATERIALIZED] VIEW) or insert query results into
    /// a table: what the stored columns derive from. `None` when nothing is
    /// stored from a query.
    pub stored: Option<Vec<OutputColumn>>,
}

impl Lineage {
    pub fn unknown() -> Self {
        Lineage {
            result: ResultLineage::Unknown,
            predicate_sources: BTreeSet::new(),
            stored: None,
        }
    }

    /// Per result field, in order, the derivation lineage gives it, for a
    /// result of `fields` columns: `None` for a field lineage cannot place.
    /// Expanding columns take up the fields the others leave.
    pub fn align(&self, fields: usize) -> Vec<Option<Derivation>> {
        let ResultLineage::Columns(columns) = &self.result else {
            return vec![None; fields];
        };
        let fixed = columns.iter().filter(|c| !c.expands).count();
        let first = columns.iter().position(|c| c.expands);
        let Some(first) = first else {
            if fixed == fields {
                return columns.iter().map(|c| Some(c.derivation.clone())).collect();
            }
            return vec![None; fields];
        };
        if fixed > fields {
            return vec![None; fields];
        }
        let last = columns.iter().rposition(|c| c.expands).unwrap_or(first);
        let tail = columns.len() - last - 1;
        let middle = Derivation::unite(columns[first..=last].iter().map(|c| c.derivation.clone()));
        let middle = if first == last {
            columns[first].derivation.clone()
        } else {
            middle
        };
        let mut out = Vec::with_capacity(fields);
        out.extend(columns[..first].iter().map(|c| Some(c.derivation.clone())));
        out.extend(std::iter::repeat_n(Some(middle), fields - first - tail));
        out.extend(columns[last + 1..].iter().map(|c| Some(c.derivation.clone())));
        out
    }
}

/// Computes the lineage of one parsed statement. Never panics.
pub fn of_statement(statement: &Statement) -> Lineage {
    let mut walker = Walker::default();
    let top = Scope::default();
    let result = match statement {
        Statement::Query(query) => {
            let columns = walker.query(query, &top);
            if has_into(query) {
                walker.stored = Some(columns);
                ResultLineage::NoData
            } else {
                ResultLineage::Columns(columns)
            }
        }
        Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_) => {
            walker.dml(statement, &top)
        }
        Statement::Copy { source, to, .. } => match source {
            CopySource::Query(query) if *to => ResultLineage::Columns(walker.query(query, &top)),
            CopySource::Table { table_name, columns } if *to => {
                let table = normalize_name(table_name);
                ResultLineage::Columns(if columns.is_empty() {
                    vec![expanding(&table)]
                } else {
                    columns
                        .iter()
                        .map(|c| {
                            let name = normalize_ident(c);
                            OutputColumn {
                                derivation: Derivation::column(&table, &name),
                                name: Some(name),
                                expands: false,
                            }
                        })
                        .collect()
                })
            }
            _ => ResultLineage::NoData,
        },
        Statement::CreateTable(create) => {
            if let Some(query) = &create.query {
                walker.stored = Some(walker.query(query, &top));
            }
            ResultLineage::NoData
        }
        Statement::CreateView(view) => {
            walker.stored = Some(walker.query(&view.query, &top));
            ResultLineage::NoData
        }
        Statement::Declare { stmts, .. } => {
            for query in stmts.iter().filter_map(|d| d.for_query.as_deref()) {
                walker.query(query, &top);
            }
            ResultLineage::NoData
        }
        Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Prepare { .. }
        | Statement::Deallocate { .. }
        | Statement::Drop { .. }
        | Statement::Truncate(_)
        | Statement::AlterTable(_)
        | Statement::CreateIndex(_)
        | Statement::CreateFunction(_)
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Discard { .. }
        | Statement::LISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::UNLISTEN { .. }
        | Statement::Close { .. } => ResultLineage::NoData,
        _ => ResultLineage::Unknown,
    };
    Lineage {
        result,
        predicate_sources: walker.predicates,
        stored: walker.stored,
    }
}

fn has_into(query: &Query) -> bool {
    matches!(&*query.body, SetExpr::Select(s) if s.into.is_some())
}

fn expanding(table: &str) -> OutputColumn {
    OutputColumn {
        name: None,
        derivation: Derivation::column(table, "*"),
        expands: true,
    }
}

/// A relation in a FROM clause.
#[derive(Clone, Debug)]
struct Relation {
    alias: String,
    kind: RelationKind,
}

#[derive(Clone, Debug)]
enum RelationKind {
    /// A table or view, by the name written.
    Table(String),
    /// A subquery or CTE with known output columns.
    Derived(Vec<OutputColumn>),
    /// A table function: every column derives from its arguments.
    Function {
        columns: Vec<String>,
        derivation: Derivation,
    },
}

/// Relations and CTEs visible at one query level, and the enclosing level
/// (for correlated references).
#[derive(Default)]
struct Scope<'p> {
    relations: Vec<Relation>,
    ctes: Vec<(String, Vec<OutputColumn>)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn child(parent: &'p Scope<'p>) -> Scope<'p> {
        Scope {
            relations: Vec::new(),
            ctes: Vec::new(),
            parent: Some(parent),
        }
    }

    fn cte(&self, name: &str) -> Option<&[OutputColumn]> {
        match self.ctes.iter().rev().find(|(n, _)| n == name) {
            Some((_, columns)) => Some(columns),
            None => self.parent?.cte(name),
        }
    }

    fn relation(&self, alias: &str) -> Option<&Relation> {
        match self.relations.iter().rev().find(|r| r.alias == alias) {
            Some(r) => Some(r),
            None => self.parent?.relation(alias),
        }
    }
}

/// The whole row of a relation as one value.
fn whole_row(relation: &Relation) -> Derivation {
    match &relation.kind {
        RelationKind::Table(table) => Derivation::column(table, "*").derived(),
        RelationKind::Derived(columns) => Derivation::unite(columns.iter().map(|c| c.derivation.clone())),
        RelationKind::Function { derivation, .. } => derivation.clone().derived(),
    }
}

/// Column `name` of `relation`, if it may have one.
fn column_of(relation: &Relation, name: &str) -> Option<Derivation> {
    match &relation.kind {
        RelationKind::Table(table) => Some(Derivation::column(table, name)),
        RelationKind::Derived(columns) => {
            if let Some(c) = columns.iter().find(|c| !c.expands && c.name.as_deref() == Some(name)) {
                return Some(c.derivation.clone());
            }
            let open: Vec<Derivation> = columns
                .iter()
                .filter(|c| c.expands)
                .map(|c| substitute(&c.derivation, name))
                .collect();
            match open.len() {
                0 => None,
                1 => open.into_iter().next(),
                _ => Some(Derivation::unite(open)),
            }
        }
        RelationKind::Function { columns, derivation } => {
            (columns.is_empty() || columns.iter().any(|c| c == name) || relation.alias == name)
                .then(|| derivation.clone().derived())
        }
    }
}

/// Column `name` out of an expansion over `table.*`.
fn substitute(d: &Derivation, name: &str) -> Derivation {
    let mut out = d.clone();
    out.sources = d
        .sources
        .iter()
        .map(|s| {
            if s.whole_row() {
                Source {
                    table: s.table.clone(),
                    column: name.to_owned(),
                }
            } else {
                s.clone()
            }
        })
        .collect();
    out
}

/// Renames a relation's columns by a `AS alias(a, b)` list, by position.
fn rename(columns: Vec<OutputColumn>, alias: Option<&TableAlias>) -> Vec<OutputColumn> {
    let Some(alias) = alias.filter(|a| !a.columns.is_empty()) else {
        return columns;
    };
    if columns.iter().any(|c| c.expands) {
        // Positions unknown: every renamed column may be any of them.
        let all = Derivation::unite(columns.iter().map(|c| c.derivation.clone()));
        return alias
            .columns
            .iter()
            .map(|c| OutputColumn {
                name: Some(normalize_ident(&c.name)),
                derivation: all.clone(),
                expands: false,
            })
            .chain(std::iter::once(OutputColumn {
                name: None,
                derivation: all.clone(),
                expands: true,
            }))
            .collect();
    }
    columns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            if let Some(new) = alias.columns.get(i) {
                c.name = Some(normalize_ident(&new.name));
            }
            c
        })
        .collect()
}

#[derive(Default)]
struct Walker {
    predicates: BTreeSet<Source>,
    stored: Option<Vec<OutputColumn>>,
}

impl Walker {
    fn query(&mut self, query: &Query, outer: &Scope<'_>) -> Vec<OutputColumn> {
        let mut scope = Scope::child(outer);
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let name = normalize_ident(&cte.alias.name);
                let columns = if with.recursive {
                    self.recursive_cte(&name, cte, &scope)
                } else {
                    rename(self.query(&cte.query, &scope), Some(&cte.alias))
                };
                scope.ctes.push((name, columns));
            }
        }
        let columns = self.set_expr(&query.body, &scope);
        if let Some(order_by) = &query.order_by {
            // ORDER BY reveals order, not values; it is walked for the
            // subqueries it may hold.
            let mut probe = Probe::default();
            let _ = order_by.visit(&mut probe);
            for e in probe.top_exprs {
                self.expr(&e, &scope);
            }
        }
        columns
    }

    /// A recursive CTE refers to itself: its columns are computed until
    /// they stop changing (one more round per column at most).
    fn recursive_cte(&mut self, name: &str, cte: &sqlparser::ast::Cte, scope: &Scope<'_>) -> Vec<OutputColumn> {
        let mut current: Vec<OutputColumn> = cte
            .alias
            .columns
            .iter()
            .map(|c| OutputColumn {
                name: Some(normalize_ident(&c.name)),
                derivation: Derivation::constant(),
                expands: false,
            })
            .collect();
        for _ in 0..=current.len().max(1) + 1 {
            let inner = Scope {
                relations: Vec::new(),
                ctes: vec![(name.to_owned(), current.clone())],
                parent: Some(scope),
            };
            let next = rename(self.query(&cte.query, &inner), Some(&cte.alias));
            if next == current {
                break;
            }
            current = next;
        }
        current
    }

    fn set_expr(&mut self, body: &SetExpr, scope: &Scope<'_>) -> Vec<OutputColumn> {
        match body {
            SetExpr::Select(select) => self.select(select, scope),
            SetExpr::Query(query) => self.query(query, scope),
            SetExpr::SetOperation { left, right, .. } => {
                let left = self.set_expr(left, scope);
                let right = self.set_expr(right, scope);
                union_columns(left, right)
            }
            SetExpr::Values(values) => {
                let mut columns: Vec<OutputColumn> = Vec::new();
                for row in &values.rows {
                    for (i, e) in row.iter().enumerate() {
                        let d = self.expr(e, scope).derived();
                        match columns.get_mut(i) {
                            Some(c) => c.derivation = c.derivation.clone().union(d),
                            None => columns.push(OutputColumn {
                                name: Some(format!("column{}", i + 1)),
                                derivation: d,
                                expands: false,
                            }),
                        }
                    }
                }
                columns
            }
            SetExpr::Table(table) => match &table.table_name {
                Some(name) => {
                    let name = normalize_ident(name);
                    let full = match &table.schema_name {
                        Some(schema) => format!("{}.{name}", normalize_ident(schema)),
                        None => name.clone(),
                    };
                    match scope.cte(&name).filter(|_| table.schema_name.is_none()) {
                        Some(columns) => columns.to_vec(),
                        None => vec![expanding(&full)],
                    }
                }
                None => vec![OutputColumn {
                    name: None,
                    derivation: Derivation::opaque(),
                    expands: true,
                }],
            },
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement)
            | SetExpr::Merge(statement) => match self.dml(statement, scope) {
                ResultLineage::Columns(columns) => columns,
                _ => Vec::new(),
            },
        }
    }

    fn select(&mut self, select: &Select, outer: &Scope<'_>) -> Vec<OutputColumn> {
        let mut scope = Scope::child(outer);
        // CTEs stay visible: `scope` looks them up through `outer`.
        for table in &select.from {
            self.table_with_joins(table, &mut scope);
        }
        for e in [&select.selection, &select.having, &select.qualify, &select.prewhere]
            .into_iter()
            .flatten()
        {
            self.predicate(e, &scope);
        }
        if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
            for e in exprs {
                self.expr(e, &scope);
            }
        }
        let mut columns = Vec::new();
        for item in &select.projection {
            self.select_item(item, &scope, &mut columns);
        }
        columns
    }

    fn select_item(&mut self, item: &SelectItem, scope: &Scope<'_>, out: &mut Vec<OutputColumn>) {
        match item {
            SelectItem::UnnamedExpr(e) => out.push(OutputColumn {
                name: output_name(e),
                derivation: self.expr(e, scope),
                expands: false,
            }),
            SelectItem::ExprWithAlias { expr, alias } => out.push(OutputColumn {
                name: Some(normalize_ident(alias)),
                derivation: self.expr(expr, scope),
                expands: false,
            }),
            SelectItem::ExprWithAliases { expr, aliases } => {
                let d = self.expr(expr, scope);
                for alias in aliases {
                    out.push(OutputColumn {
                        name: Some(normalize_ident(alias)),
                        derivation: d.clone(),
                        expands: false,
                    });
                }
            }
            SelectItem::Wildcard(_) => {
                for relation in &scope.relations {
                    out.extend(expand(relation));
                }
            }
            SelectItem::QualifiedWildcard(kind, _) => match kind {
                SelectItemQualifiedWildcardKind::ObjectName(name) => {
                    let alias = last_part(name);
                    match scope.relation(&alias) {
                        Some(relation) => out.extend(expand(relation)),
                        None => out.push(OutputColumn {
                            name: None,
                            derivation: Derivation::opaque(),
                            expands: true,
                        }),
                    }
                }
                SelectItemQualifiedWildcardKind::Expr(e) => out.push(OutputColumn {
                    name: None,
                    derivation: self.expr(e, scope).derived(),
                    expands: true,
                }),
            },
        }
    }

    fn table_with_joins(&mut self, table: &TableWithJoins, scope: &mut Scope<'_>) {
        self.factor(&table.relation, scope);
        for join in &table.joins {
            self.factor(&join.relation, scope);
            if let Some(JoinConstraint::On(e)) = join_constraint(&join.join_operator) {
                self.predicate(e, scope);
            }
        }
    }

    /// Adds the relations of `factor` to `scope`. LATERAL references and
    /// table-function arguments see the relations before them.
    fn factor(&mut self, factor: &TableFactor, scope: &mut Scope<'_>) {
        let relation = match factor {
            TableFactor::Table { name, alias, args, .. } => {
                let full = normalize_name(name);
                let base = last_part(name);
                let alias_name = alias.as_ref().map(|a| normalize_ident(&a.name)).unwrap_or(base.clone());
                if let Some(args) = args {
                    let derivation = self.call(name, args.args.iter(), scope);
                    Relation {
                        alias: alias_name,
                        kind: RelationKind::Function {
                            columns: alias_columns(alias.as_ref()),
                            derivation,
                        },
                    }
                } else if let Some(columns) = (name.0.len() == 1).then(|| scope.cte(&full)).flatten() {
                    Relation {
                        alias: alias_name,
                        kind: RelationKind::Derived(rename(columns.to_vec(), alias.as_ref())),
                    }
                } else if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
                    Relation {
                        alias: alias_name,
                        kind: RelationKind::Derived(rename(vec![expanding(&full)], alias.as_ref())),
                    }
                } else {
                    Relation {
                        alias: alias_name,
                        kind: RelationKind::Table(full),
                    }
                }
            }
            TableFactor::Derived { subquery, alias, .. } => {
                let columns = rename(self.query(subquery, scope), alias.as_ref());
                Relation {
                    alias: alias.as_ref().map(|a| normalize_ident(&a.name)).unwrap_or_default(),
                    kind: RelationKind::Derived(columns),
                }
            }
            TableFactor::Function { name, args, alias, .. } => {
                let derivation = self.call(name, args.iter(), scope);
                Relation {
                    alias: alias
                        .as_ref()
                        .map(|a| normalize_ident(&a.name))
                        .unwrap_or_else(|| last_part(name)),
                    kind: RelationKind::Function {
                        columns: alias_columns(alias.as_ref()),
                        derivation,
                    },
                }
            }
            TableFactor::UNNEST { alias, array_exprs, .. } => {
                let derivation = Derivation::unite(array_exprs.iter().map(|e| self.expr(e, scope)));
                Relation {
                    alias: alias
                        .as_ref()
                        .map(|a| normalize_ident(&a.name))
                        .unwrap_or_else(|| "unnest".into()),
                    kind: RelationKind::Function {
                        columns: alias_columns(alias.as_ref()),
                        derivation,
                    },
                }
            }
            TableFactor::TableFunction { expr, alias } => {
                let derivation = self.expr(expr, scope).derived();
                Relation {
                    alias: alias.as_ref().map(|a| normalize_ident(&a.name)).unwrap_or_default(),
                    kind: RelationKind::Function {
                        columns: alias_columns(alias.as_ref()),
                        derivation,
                    },
                }
            }
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.table_with_joins(table_with_joins, scope);
                return;
            }
            other => {
                // JSON_TABLE, PIVOT and the like: whatever they read, opaque.
                let mut probe = Probe::default();
                let _ = other.visit(&mut probe);
                for e in probe.top_exprs {
                    self.expr(&e, scope);
                }
                Relation {
                    alias: String::new(),
                    kind: RelationKind::Function {
                        columns: Vec::new(),
                        derivation: Derivation::opaque(),
                    },
                }
            }
        };
        scope.relations.push(relation);
    }

    /// Lineage of a data-modifying statement's RETURNING list.
    fn dml(&mut self, statement: &Statement, outer: &Scope<'_>) -> ResultLineage {
        let mut scope = Scope::child(outer);
        let returning = match statement {
            Statement::Insert(insert) => {
                if let Some(source) = &insert.source {
                    let columns = self.query(source, &scope);
                    self.stored = Some(columns);
                }
                if let sqlparser::ast::TableObject::TableName(name) = &insert.table {
                    let alias = insert
                        .table_alias
                        .as_ref()
                        .map(|a| normalize_ident(&a.alias))
                        .unwrap_or_else(|| last_part(name));
                    scope.relations.push(Relation {
                        alias,
                        kind: RelationKind::Table(normalize_name(name)),
                    });
                }
                &insert.returning
            }
            Statement::Update(update) => {
                self.table_with_joins(&update.table, &mut scope);
                if let Some(
                    sqlparser::ast::UpdateTableFromKind::AfterSet(from)
                    | sqlparser::ast::UpdateTableFromKind::BeforeSet(from),
                ) = &update.from
                {
                    for t in from {
                        self.table_with_joins(t, &mut scope);
                    }
                }
                for a in &update.assignments {
                    self.expr(&a.value, &scope);
                }
                if let Some(e) = &update.selection {
                    self.predicate(e, &scope);
                }
                &update.returning
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                for t in from.iter().chain(delete.using.iter().flatten()) {
                    self.table_with_joins(t, &mut scope);
                }
                if let Some(e) = &delete.selection {
                    self.predicate(e, &scope);
                }
                &delete.returning
            }
            _ => return ResultLineage::Unknown,
        };
        match returning {
            Some(items) => {
                let mut columns = Vec::new();
                for item in items {
                    self.select_item(item, &scope, &mut columns);
                }
                ResultLineage::Columns(columns)
            }
            None => ResultLineage::NoData,
        }
    }

    fn predicate(&mut self, e: &Expr, scope: &Scope<'_>) {
        let d = self.expr(e, scope);
        self.predicates.extend(d.sources);
        // The safe parts of a condition (`ssn IS NULL`) still filter on it.
        let mut probe = Probe::default();
        let _ = e.visit(&mut probe);
        for parts in probe.columns {
            self.predicates.extend(self.resolve(&parts, scope).sources);
        }
    }

    fn expr(&mut self, e: &Expr, scope: &Scope<'_>) -> Derivation {
        match e {
            Expr::Identifier(ident) => self.resolve(&[normalize_ident(ident)], scope),
            Expr::CompoundIdentifier(parts) => {
                let parts: Vec<String> = parts.iter().map(normalize_ident).collect();
                self.resolve(&parts, scope)
            }
            Expr::Nested(inner) => self.expr(inner, scope),
            Expr::Value(_) | Expr::TypedString(_) => Derivation::constant(),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let d = self.expr(inner, scope);
                Derivation {
                    sources: d.sources,
                    safe: true,
                    ..Derivation::default()
                }
            }
            Expr::Function(f) => self.function(f, scope),
            Expr::Subquery(query) => {
                let columns = self.query(query, scope);
                Derivation::unite(columns.into_iter().map(|c| c.derivation)).derived()
            }
            Expr::Wildcard(_) => Derivation::unite(scope.relations.iter().map(whole_row)),
            Expr::QualifiedWildcard(name, _) => match scope.relation(&last_part(name)) {
                Some(r) => whole_row(r),
                None => Derivation::opaque(),
            },
            Expr::Cast { expr, .. } => self.expr(expr, scope).derived(),
            Expr::BinaryOp { left, right, .. } => {
                let l = self.expr(left, scope);
                let r = self.expr(right, scope);
                l.union(r).derived()
            }
            Expr::UnaryOp { expr, .. } => self.expr(expr, scope).derived(),
            other => {
                let mut probe = Probe::children(other);
                let _ = other.visit(&mut probe);
                let mut parts: Vec<Derivation> = probe.exprs.iter().map(|c| self.expr(c, scope)).collect();
                for q in &probe.queries {
                    let columns = self.query(q, scope);
                    parts.extend(columns.into_iter().map(|c| c.derivation));
                }
                Derivation::unite(parts).derived()
            }
        }
    }

    fn function(&mut self, f: &Function, scope: &Scope<'_>) -> Derivation {
        let mut parts = Vec::new();
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(query) => {
                let columns = self.query(query, scope);
                parts.extend(columns.into_iter().map(|c| c.derivation));
            }
            FunctionArguments::List(list) => {
                for arg in &list.args {
                    parts.push(self.arg(arg, scope));
                }
                // ORDER BY inside an aggregate, LIMIT, ...: their columns
                // shape the result.
                let mut probe = Probe::default();
                for clause in &list.clauses {
                    let _ = clause.visit(&mut probe);
                }
                for c in std::mem::take(&mut probe.top_exprs) {
                    parts.push(self.expr(&c, scope));
                }
            }
        }
        if let Some(filter) = &f.filter {
            self.predicate(filter, scope);
        }
        for o in &f.within_group {
            parts.push(self.expr(&o.expr, scope));
        }
        let (schema, name) = function_name(&f.name);
        let all = Derivation::unite(parts);
        match functions::classify(schema.as_deref(), &name) {
            FunctionClass::Safe => Derivation {
                sources: all.sources,
                safe: true,
                ..Derivation::default()
            },
            FunctionClass::Known => all.derived(),
            FunctionClass::Opaque => Derivation {
                opaque: true,
                ..all.derived()
            },
        }
    }

    fn arg(&mut self, arg: &FunctionArg, scope: &Scope<'_>) -> Derivation {
        let arg = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } | FunctionArg::Unnamed(arg) => arg,
        };
        match arg {
            FunctionArgExpr::Expr(e) => self.expr(e, scope),
            FunctionArgExpr::QualifiedWildcard(name) => match scope.relation(&last_part(name)) {
                Some(r) => whole_row(r),
                None => Derivation::opaque(),
            },
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                Derivation::unite(scope.relations.iter().map(whole_row))
            }
        }
    }

    /// A table function in FROM: its rows derive from its arguments.
    fn call<'a>(
        &mut self,
        name: &ObjectName,
        args: impl Iterator<Item = &'a FunctionArg>,
        scope: &Scope<'_>,
    ) -> Derivation {
        let all = Derivation::unite(args.map(|a| self.arg(a, scope)).collect::<Vec<_>>());
        let (schema, base) = function_name(name);
        match functions::classify(schema.as_deref(), &base) {
            FunctionClass::Opaque => Derivation {
                opaque: true,
                ..all.derived()
            },
            _ => all.derived(),
        }
    }

    /// A column reference (`x`, `t.x`, `s.t.x`) or a whole-row reference
    /// (`t`), looked up from the innermost query outwards.
    fn resolve(&self, parts: &[String], scope: &Scope<'_>) -> Derivation {
        match parts {
            [] => Derivation::constant(),
            [name] => {
                // Every level that may have the column counts (fail closed:
                // a table's columns are known only to the server).
                let mut found = Vec::new();
                let mut whole = None;
                let mut level = Some(scope);
                while let Some(s) = level {
                    found.extend(s.relations.iter().filter_map(|r| column_of(r, name)));
                    // A name that is also a table alias may be the whole
                    // row (`to_json(p)`): count it as both.
                    if whole.is_none() {
                        whole = s.relations.iter().find(|r| &r.alias == name).map(whole_row);
                    }
                    level = s.parent;
                }
                found.extend(whole);
                match found.len() {
                    // Not a column of anything in scope (`current_user`).
                    0 => Derivation::constant(),
                    1 => found.pop().unwrap_or_default(),
                    _ => Derivation::unite(found),
                }
            }
            [.., qualifier, column] => {
                if let Some(r) = scope.relation(qualifier) {
                    if column == "*" {
                        return whole_row(r);
                    }
                    return column_of(r, column).unwrap_or_else(|| whole_row(r).derived());
                }
                // `schema.table.column`, or a field of a composite column.
                let table = parts[..parts.len() - 1].join(".");
                let mut level = Some(scope);
                while let Some(s) = level {
                    if let Some(r) = s
                        .relations
                        .iter()
                        .find(|r| matches!(&r.kind, RelationKind::Table(t) if *t == table))
                    {
                        return column_of(r, column).unwrap_or_default();
                    }
                    level = s.parent;
                }
                self.resolve(&parts[..1], scope).derived()
            }
        }
    }
}

/// Column-wise union of the two sides of UNION / INTERSECT / EXCEPT.
fn union_columns(left: Vec<OutputColumn>, right: Vec<OutputColumn>) -> Vec<OutputColumn> {
    let expands = left.iter().chain(&right).any(|c| c.expands);
    if expands || left.len() != right.len() {
        let all = Derivation::unite(left.iter().chain(&right).map(|c| c.derivation.clone()));
        return vec![OutputColumn {
            name: None,
            derivation: all,
            expands: true,
        }];
    }
    left.into_iter()
        .zip(right)
        .map(|(l, r)| OutputColumn {
            name: l.name,
            derivation: l.derivation.union(r.derivation).derived(),
            expands: false,
        })
        .collect()
}

/// The columns `*` or `t.*` stands for in one relation.
fn expand(relation: &Relation) -> Vec<OutputColumn> {
    match &relation.kind {
        RelationKind::Table(table) => vec![expanding(table)],
        RelationKind::Derived(columns) => columns.clone(),
        RelationKind::Function { columns, derivation } => {
            if columns.is_empty() {
                vec![OutputColumn {
                    name: None,
                    derivation: derivation.clone().derived(),
                    expands: true,
                }]
            } else {
                columns
                    .iter()
                    .map(|c| OutputColumn {
                        name: Some(c.clone()),
                        derivation: derivation.clone().derived(),
                        expands: false,
                    })
                    .collect()
            }
        }
    }
}

fn alias_columns(alias: Option<&TableAlias>) -> Vec<String> {
    alias
        .map(|a| a.columns.iter().map(|c| normalize_ident(&c.name)).collect())
        .unwrap_or_default()
}

fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => normalize_ident(ident),
        Some(other) => other.to_string().to_lowercase(),
        None => String::new(),
    }
}

/// `(schema, name)` of a function, lower-case.
fn function_name(name: &ObjectName) -> (Option<String>, String) {
    let lower = |p: &ObjectNamePart| match p {
        ObjectNamePart::Identifier(Ident { value, .. }) => value.to_lowercase(),
        other => other.to_string().to_lowercase(),
    };
    match name.0.as_slice() {
        [] => (None, String::new()),
        [one] => (None, lower(one)),
        [.., schema, last] => (Some(lower(schema)), lower(last)),
    }
}

fn output_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(normalize_ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize_ident),
        Expr::Function(f) => Some(function_name(&f.name).1),
        _ => None,
    }
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c) => Some(c),
        _ => None,
    }
}

/// Collects, below one node: its immediate child expressions (`exprs`, when
/// made with [`Probe::children`]) or the outermost expressions
/// (`top_exprs`), the outermost subqueries (not those inside a child
/// expression), and every column reference outside subqueries.
#[derive(Default)]
struct Probe {
    /// Address of the node whose children are wanted (compared only).
    root: Option<*const Expr>,
    expr_depth: usize,
    query_depth: usize,
    exprs: Vec<Expr>,
    top_exprs: Vec<Expr>,
    queries: Vec<Query>,
    columns: Vec<Vec<String>>,
}

impl Probe {
    fn children(root: &Expr) -> Probe {
        Probe {
            root: Some(root as *const Expr),
            ..Probe::default()
        }
    }
}

impl Visitor for Probe {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
        if self.query_depth == 0 {
            let is_root = self.root.is_some_and(|r| std::ptr::eq(r, expr));
            if !is_root {
                let depth_of_children = usize::from(self.root.is_some());
                if self.expr_depth == depth_of_children {
                    if self.root.is_some() {
                        self.exprs.push(expr.clone());
                    } else {
                        self.top_exprs.push(expr.clone());
                    }
                }
            }
            match expr {
                Expr::Identifier(i) => self.columns.push(vec![normalize_ident(i)]),
                Expr::CompoundIdentifier(parts) => self.columns.push(parts.iter().map(normalize_ident).collect()),
                _ => {}
            }
        }
        self.expr_depth += 1;
        std::ops::ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> std::ops::ControlFlow<()> {
        self.expr_depth = self.expr_depth.saturating_sub(1);
        std::ops::ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> std::ops::ControlFlow<()> {
        let depth_of_children = usize::from(self.root.is_some());
        if self.query_depth == 0 && self.expr_depth <= depth_of_children {
            self.queries.push(query.clone());
        }
        self.query_depth += 1;
        std::ops::ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> std::ops::ControlFlow<()> {
        self.query_depth = self.query_depth.saturating_sub(1);
        std::ops::ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests;
