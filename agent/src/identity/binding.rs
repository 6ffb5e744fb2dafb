//! Token-to-process binding: the second factor of identity. A bound subject's
//! token is accepted only from the systemd units / uids its rule lists.

use super::claims::ValidatedToken;
use super::config::BindingRule;
use super::error::TokenError;

/// `Ok` when no rule names the token's subject or client, or when one of
/// the rules that do is satisfied (each list given must match).
pub(crate) fn check(
    rules: &[BindingRule],
    token: &ValidatedToken,
    uid: u32,
    unit: Option<&str>,
) -> Result<(), TokenError> {
    let mut bound = false;
    for rule in rules {
        let applies = rule.subject.as_deref() == Some(token.subject.as_str())
            || (rule.client_id.is_some() && rule.client_id.as_deref() == token.client_id.as_deref());
        if !applies {
            continue;
        }
        bound = true;
        let unit_ok = rule.units.is_empty() || unit.is_some_and(|u| rule.units.iter().any(|r| r == u));
        let uid_ok = rule.uids.is_empty() || rule.uids.contains(&uid);
        if unit_ok && uid_ok {
            return Ok(());
        }
    }
    if bound {
        tracing::warn!(subject = %token.subject, uid, unit = unit.unwrap_or("-"), "token refused: process does not match its binding");
        return Err(TokenError::BindingRefused);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn token(subject: &str, client: Option<&str>) -> ValidatedToken {
        ValidatedToken {
            subject: subject.into(),
            issuer: "i".into(),
            email: None,
            groups: vec![],
            client_id: client.map(Into::into),
            expires_at: UNIX_EPOCH,
        }
    }

    fn rules() -> Vec<BindingRule> {
        vec![
            BindingRule {
                subject: Some("etl".into()),
                client_id: None,
                units: vec!["etl.service".into()],
                uids: vec![],
            },
            BindingRule {
                subject: None,
                client_id: Some("reporter".into()),
                units: vec!["report.service".into()],
                uids: vec![1001],
            },
        ]
    }

    #[test]
    fn subject_binding() {
        let t = token("etl", None);
        assert!(check(&rules(), &t, 0, Some("etl.service")).is_ok());
        assert_eq!(
            check(&rules(), &t, 0, Some("other.service")),
            Err(TokenError::BindingRefused)
        );
        assert_eq!(check(&rules(), &t, 0, None), Err(TokenError::BindingRefused));
        assert!(check(&rules(), &token("unbound", None), 5, None).is_ok());
    }

    #[test]
    fn client_binding_needs_unit_and_uid() {
        let t = token("svc-account-7", Some("reporter"));
        assert!(check(&rules(), &t, 1001, Some("report.service")).is_ok());
        assert_eq!(
            check(&rules(), &t, 1002, Some("report.service")),
            Err(TokenError::BindingRefused)
        );
        assert_eq!(
            check(&rules(), &t, 1001, Some("etl.service")),
            Err(TokenError::BindingRefused)
        );
        // A token without a client id is not matched by a client_id rule.
        assert!(check(&rules(), &token("x", None), 1, None).is_ok());
    }
}
