//! The session's prepared statements and portals as the client named them:
//! what each name holds (its analysis and decision), which portals were
//! bound from which statement, which have been described, and the
//! SQL-level `PREPARE`d statements an `EXECUTE name` runs. The frontend
//! consults it per message; masking follows from it on the server side.
use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Arc,
};

use bytes::Bytes;

use super::pending::{GateProgress, Target};
use crate::{
    policy::PolicyDecision,
    sql::{Analysis, AnalyzedStatement, Classification, PreparedOp},
};

/// A prepared statement as the client named it.
pub(super) struct Prepared {
    pub analysis: Arc<Analysis>,
    pub decision: PolicyDecision,
    /// Parsed under a name loopgate already knew: the server refuses that
    /// (42P05) unless the earlier Parse failed there, and which of the two
    /// texts a Bind then runs is not known here, so an Execute of it is
    /// refused until the client closes the name.
    pub ambiguous: bool,
}

impl Prepared {
    /// The one statement of the Parse (None for an empty statement).
    pub fn statement(&self) -> Option<&AnalyzedStatement> {
        self.analysis.statements.first()
    }
}

/// A bound portal: its statement and the parameter values as recorded.
pub(super) struct Portal {
    pub prepared: Arc<Prepared>,
    pub parameters: Vec<String>,
    /// Row-threshold progress across the portal's Executes; only for a
    /// statement whose hold has a row threshold.
    pub gate: Option<Arc<GateProgress>>,
    /// A Describe of the portal or its statement went ahead of its rows,
    /// so the server side knows their columns.
    pub described: bool,
}

#[derive(Default)]
pub(super) struct Statements {
    prepared: HashMap<Bytes, Arc<Prepared>>,
    /// Statements described since they were parsed.
    described: HashSet<Bytes>,
    portals: HashMap<Bytes, Portal>,
    /// SQL-level prepared statements (`PREPARE name AS ...`) by name: what
    /// `EXECUTE name` runs. `None` when the name was prepared twice: the
    /// second PREPARE fails at the server unless the first one did, and
    /// which of them runs is not known here, so its EXECUTE stays refused.
    sql_prepared: HashMap<String, Option<Arc<Classification>>>,
}

impl Statements {
    /// A simple Query closes the unnamed statement and portal.
    pub fn forget_unnamed(&mut self) {
        self.prepared.remove(&b""[..]);
        self.described.remove(&b""[..]);
        self.portals.remove(&b""[..]);
    }

    /// Parse: `name` now holds this statement (ambiguous if it was known).
    pub fn parsed(&mut self, name: Bytes, analysis: Arc<Analysis>, decision: PolicyDecision) {
        let ambiguous = !name.is_empty() && self.prepared.contains_key(&name);
        self.shadow_sql_name(&name);
        self.described.remove(&name);
        let prepared = Prepared {
            analysis,
            decision,
            ambiguous,
        };
        self.prepared.insert(name, Arc::new(prepared));
    }

    /// Bind: `portal` runs `statement` with these recorded parameters. A
    /// statement loopgate does not know leaves no portal (the server answers
    /// with its own error; an Execute of it is refused).
    pub fn bound(&mut self, portal: Bytes, statement: &Bytes, parameters: Vec<String>) {
        let Some(prepared) = self.prepared.get(statement).cloned() else {
            self.portals.remove(&portal);
            return;
        };
        let gate =
            matches!(&prepared.decision, PolicyDecision::Hold(h) if h.row_threshold.is_some()).then(Arc::default);
        let described = self.described.contains(statement);
        self.portals.insert(
            portal,
            Portal {
                prepared,
                parameters,
                gate,
                described,
            },
        );
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// A Describe of `target` went to the server.
    pub fn described(&mut self, target: &Target) {
        match target {
            Target::Statement(name) => {
                if self.prepared.contains_key(name) {
                    self.described.insert(name.clone());
                }
            }
            Target::Portal(name) => {
                if let Some(p) = self.portals.get_mut(name) {
                    p.described = true;
                }
            }
        }
    }

    /// True once per bound portal whose columns nobody described: the
    /// caller sends loopgate's own Describe ahead of its Execute.
    pub fn needs_describe(&mut self, portal: &[u8]) -> bool {
        match self.portals.get_mut(portal) {
            Some(p) if !p.described => {
                p.described = true;
                true
            }
            _ => false,
        }
    }

    pub fn closed(&mut self, target: &Target) {
        match target {
            Target::Statement(name) => {
                self.prepared.remove(name);
                self.described.remove(name);
                self.shadow_sql_name(name);
            }
            Target::Portal(name) => {
                self.portals.remove(name);
            }
        }
    }

    /// Protocol-level and SQL-level prepared statements share one name
    /// space on the server: a Parse or Close of `name` makes what a
    /// `PREPARE` of the same name held unknown here (its `EXECUTE` stays
    /// dynamic, refused), whichever of them the server kept.
    fn shadow_sql_name(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(name);
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        for key in [name.into_owned(), quoted] {
            if let Some(entry) = self.sql_prepared.get_mut(&key) {
                *entry = None;
            }
        }
    }

    /// Follows what a statement about to run does to SQL-level prepared
    /// statements (for `EXECUTE`). Whether it succeeds at the server is not
    /// known here, so nothing is forgotten: a `DEALLOCATE` or `DISCARD ALL`
    /// makes the names unknown (a later `EXECUTE` of them stays dynamic),
    /// and protocol-level statements stay as they are (a re-Parse of their
    /// name is ambiguous).
    pub fn runs(&mut self, stmt: &AnalyzedStatement) {
        let prepared = &self.prepared;
        note_prepared(&mut self.sql_prepared, stmt, |name| {
            prepared.contains_key(name.as_bytes())
        });
    }

    /// `EXECUTE name` of a statement this session prepared with `PREPARE`
    /// (earlier, or earlier in the same string) is decided, recorded and
    /// masked as the statement it runs; an unknown name stays dynamic SQL,
    /// which the built-in policy and the HIPAA pack refuse. (An EXECUTE
    /// sent by Parse is not resolved: the name could be prepared again
    /// before the portal runs.)
    pub fn resolve_executes(&self, analysis: Arc<Analysis>) -> Arc<Analysis> {
        let touches = |s: &AnalyzedStatement| s.classification.as_ref().is_ok_and(|c| c.prepared.is_some());
        if !analysis.statements.iter().any(touches) {
            return analysis;
        }
        let mut known = self.sql_prepared.clone();
        let statements = analysis
            .statements
            .iter()
            .map(|s| {
                let op = s.classification.as_ref().ok().and_then(|c| c.prepared.clone());
                let runs = match &op {
                    Some(PreparedOp::Execute { name }) => known.get(name).cloned().flatten(),
                    _ => None,
                };
                note_prepared(&mut known, s, |name| self.prepared.contains_key(name.as_bytes()));
                match runs {
                    // Marked as an EXECUTE's: its decision is not cached by
                    // text (the same text runs another statement in another
                    // session).
                    Some(c) => AnalyzedStatement {
                        classification: Ok(Classification {
                            prepared: op,
                            ..(*c).clone()
                        }),
                        ..s.clone()
                    },
                    None => s.clone(),
                }
            })
            .collect();
        Arc::new(Analysis { statements })
    }
}

/// Follows what `stmt` does to the SQL-level prepared statements in `known`;
/// `protocol_has(server_name)`: a protocol-level statement holds that name,
/// so a `PREPARE` of it fails at the server.
fn note_prepared(
    known: &mut HashMap<String, Option<Arc<Classification>>>,
    stmt: &AnalyzedStatement,
    protocol_has: impl Fn(&str) -> bool,
) {
    match stmt.classification.as_ref().ok().and_then(|c| c.prepared.as_ref()) {
        Some(PreparedOp::Prepare { name, statement }) => {
            let taken = protocol_has(&server_name(name));
            match known.entry(name.clone()) {
                Entry::Occupied(mut e) => {
                    e.insert(None);
                }
                Entry::Vacant(e) => {
                    e.insert((!taken).then(|| Arc::clone(statement)));
                }
            }
        }
        Some(PreparedOp::Deallocate { name: Some(name) }) => {
            known.insert(name.clone(), None);
        }
        Some(PreparedOp::Deallocate { name: None }) => known.values_mut().for_each(|v| *v = None),
        Some(PreparedOp::Execute { .. }) | None => {}
    }
}

/// The server's name for a folded SQL identifier (`q`, or `"Q"` quoted).
fn server_name(key: &str) -> String {
    match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mask::{MaskConfig, Masker},
        sql::{Analyzer, SqlConfig},
    };

    fn analyze(sql: &str) -> Arc<Analysis> {
        let masker = Masker::new(&MaskConfig::default(), None).unwrap();
        Arc::new(Analyzer::new(&SqlConfig::default(), masker).analyze(sql))
    }

    /// The tables `EXECUTE s` would be decided and masked by: `None` when
    /// it stays dynamic (an unresolved EXECUTE reads no known table).
    fn executes(st: &Statements, sql: &str) -> Option<Vec<String>> {
        let resolved = st.resolve_executes(analyze(sql));
        let c = resolved.statements[0].classification.as_ref().ok()?;
        let tables: Vec<String> = c.tables_read.to_vec();
        (!tables.is_empty()).then_some(tables)
    }

    fn run(st: &mut Statements, sql: &str) {
        let analysis = st.resolve_executes(analyze(sql));
        for s in &analysis.statements {
            st.runs(s);
        }
    }

    #[test]
    fn sql_and_protocol_names_share_one_name_space() {
        let mut st = Statements::default();
        run(&mut st, "PREPARE s AS SELECT name FROM visits");
        assert_eq!(executes(&st, "EXECUTE s"), Some(vec!["visits".to_owned()]));
        // A Close of the protocol statement "s" is the same name: what
        // EXECUTE s runs is no longer known.
        st.closed(&Target::Statement(Bytes::from_static(b"s")));
        assert_eq!(executes(&st, "EXECUTE s"), None);

        // A PREPARE of a name a Parse holds fails at the server.
        let mut st = Statements::default();
        st.parsed(
            Bytes::from_static(b"Q"),
            analyze("SELECT ssn FROM patients"),
            PolicyDecision::allow(),
        );
        run(&mut st, "PREPARE \"Q\" AS SELECT name FROM visits");
        assert_eq!(executes(&st, "EXECUTE \"Q\""), None);
    }

    #[test]
    fn a_deallocate_that_may_have_failed_forgets_nothing() {
        let mut st = Statements::default();
        run(&mut st, "PREPARE q AS SELECT ssn FROM patients");
        // `SELECT 1/0; DEALLOCATE q` never deallocates at the server.
        run(&mut st, "DEALLOCATE q");
        run(&mut st, "PREPARE q AS SELECT name FROM visits");
        assert_eq!(executes(&st, "EXECUTE q"), None);
        run(&mut st, "PREPARE r AS SELECT name FROM visits");
        run(&mut st, "DISCARD ALL");
        assert_eq!(executes(&st, "EXECUTE r"), None);
    }
}
