//! Rules every policy is subject to, the built-in one and any pack: they
//! protect what masking relies on, so no pack can switch them off.
//!
//! - `loopgate.refuse_phi_copy`: a statement that stores rows derived from
//!   PHI in a table or view (CREATE [TEMP] TABLE AS, SELECT INTO, CREATE
//!   [TEMP | MATERIALIZED] VIEW, INSERT ... SELECT into a column whose name
//!   no mask rule matches) is refused. The new object's columns carry
//!   names no rule knows, so its rows would be served unmasked; refusing
//!   the copy keeps "derived from PHI is PHI" true without tracking the
//!   object per session. A `*` over a table counts as PHI (its columns are
//!   known only to the server): list the non-PHI columns instead.
use super::{PolicyDecision, PolicyInput};

pub const PHI_COPY: &str = "loopgate.refuse_phi_copy";

/// The invariant `input` breaks, if any.
pub fn check(input: &PolicyInput<'_>) -> Option<PolicyDecision> {
    let c = input.statement()?.classification.as_ref().ok()?;
    c.stores_phi.then(|| {
        PolicyDecision::deny(
            PHI_COPY,
            "storing values derived from PHI columns (or from `*`, or from a function loopgate cannot see into) \
             in a table or view is not allowed: the copy would no longer be masked; list non-PHI columns",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        mask::{MaskConfig, Masker},
        policy::{BuiltinPolicy, PolicyEngine, PolicyHandle, Principal, ProcessInfo, TargetInfo},
        sql::{Analyzer, SqlConfig},
    };

    fn rule(sql: &str) -> Option<String> {
        let analyzer = Analyzer::new(
            &SqlConfig::default(),
            Masker::new(&MaskConfig::default(), None).unwrap(),
        );
        let handle = PolicyHandle::new(Arc::new(BuiltinPolicy::default()));
        let analysis = analyzer.analyze(sql);
        let input = PolicyInput {
            principal: &Principal::default(),
            process: &ProcessInfo::default(),
            target: &TargetInfo::default(),
            action: crate::policy::Action::Sql {
                statement: &analysis.statements[0],
            },
            session: None,
            time: std::time::SystemTime::now(),
        };
        handle.decide(&input).rule_id().map(str::to_owned)
    }

    #[test]
    fn copies_of_phi_into_new_objects_are_refused() {
        for sql in [
            "create temp table t as select ssn as s from patients",
            "create temp view v as select reverse(email) as e from patients",
            "create materialized view m as select id, mrn as x from patients",
            "select dob::text as d into temp t from patients",
            "create temp table t as select * from patients",
            "create temp view v as select to_json(p) from patients p",
            "create temp view v as select f(id) from patients",
            "insert into notes (body) select ssn from patients",
            "insert into notes select phone from patients",
        ] {
            assert_eq!(rule(sql).as_deref(), Some(PHI_COPY), "{sql}");
        }
        for sql in [
            "create temp table t as select id, city from patients",
            "create temp view v as select count(*) as n from patients",
            "insert into archive (ssn) select ssn from patients",
            "insert into notes (body) values ('ok')",
            "select ssn from patients",
        ] {
            assert_eq!(rule(sql), None, "{sql}");
        }
    }
}
