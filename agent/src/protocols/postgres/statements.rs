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
            }
            Target::Portal(name) => {
                self.portals.remove(name);
            }
        }
    }

    /// Follows what a statement about to run does to prepared statements:
    /// `PREPARE`/`DEALLOCATE` for `EXECUTE`, and `DEALLOCATE name` /
    /// `DISCARD ALL`, which close protocol-level statements too (one
    /// namespace on the server).
    pub fn runs(&mut self, stmt: &AnalyzedStatement) {
        note_prepared(&mut self.sql_prepared, stmt);
        let Some(PreparedOp::Deallocate { name }) = stmt.classification.as_ref().ok().and_then(|c| c.prepared.as_ref())
        else {
            return;
        };
        match name {
            Some(name) => {
                let key = Bytes::copy_from_slice(name.trim_matches('"').as_bytes());
                self.prepared.remove(&key);
                self.described.remove(&key);
            }
            None => {
                self.prepared.retain(|name, _| name.is_empty());
                self.described.retain(|name| name.is_empty());
            }
        }
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
                note_prepared(&mut known, s);
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

/// Follows what `stmt` does to the SQL-level prepared statements in `known`.
fn note_prepared(known: &mut HashMap<String, Option<Arc<Classification>>>, stmt: &AnalyzedStatement) {
    match stmt.classification.as_ref().ok().and_then(|c| c.prepared.as_ref()) {
        Some(PreparedOp::Prepare { name, statement }) => match known.entry(name.clone()) {
            Entry::Occupied(mut e) => {
                e.insert(None);
            }
            Entry::Vacant(e) => {
                e.insert(Some(Arc::clone(statement)));
            }
        },
        Some(PreparedOp::Deallocate { name: Some(name) }) => {
            known.remove(name);
        }
        Some(PreparedOp::Deallocate { name: None }) => known.clear(),
        Some(PreparedOp::Execute { .. }) | None => {}
    }
}
