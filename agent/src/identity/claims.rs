//! Claim checks after the signature has verified: issuer, audience, time
//! window, and the caller's identity (subject, client, email, groups).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::TokenError;

/// Who presented the token, once every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedToken {
    pub subject: String,
    pub issuer: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// `azp`, else `client_id` (RFC 9068 access tokens).
    pub client_id: Option<String>,
    pub expires_at: SystemTime,
}

pub(crate) struct ClaimRules<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub groups_claim: &'a str,
    pub leeway_secs: u64,
}

pub(crate) fn check(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: SystemTime,
) -> Result<ValidatedToken, TokenError> {
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim("iss"))?;
    if issuer != rules.issuer {
        return Err(TokenError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == rules.audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(rules.audience)),
        _ => return Err(TokenError::MissingClaim("aud")),
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }

    let now = unix_secs(now);
    let leeway = rules.leeway_secs as i64;
    let exp = time_claim(claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if now > exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid);
    }
    // Both OIDC and RFC 9068 require `iat`; one in the future means a broken
    // or forged clock on the issuer side.
    let iat = time_claim(claims, "iat")?.ok_or(TokenError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(TokenError::IssuedInFuture);
    }

    let subject = match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => return Err(TokenError::MissingClaim("sub")),
    };
    let client_id = ["azp", "client_id"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .map(str::to_string);
    let email = claims.get("email").and_then(Value::as_str).map(str::to_string);
    let groups = groups(claims, rules.groups_claim);
    // Checked: an absurd `exp` must not overflow time arithmetic later.
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp.max(0) as u64))
        .and_then(|t| t.checked_add(Duration::from_secs(rules.leeway_secs)).map(|_| t))
        .ok_or(TokenError::MissingClaim("exp"))?;
    Ok(ValidatedToken {
        subject,
        issuer: issuer.to_string(),
        email,
        groups,
        client_id,
        expires_at,
    })
}

/// A NumericDate: integer or (from some issuers) fractional seconds.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f as i64)),
                _ => Err(TokenError::MissingClaim(name)),
            }
        }
        Some(_) => Err(TokenError::MissingClaim(name)),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

/// Groups from `name` (exact claim name first, so URL-like names such as
/// `https://example.com/groups` work) or its dotted path; an array of
/// strings or one string. Anything else yields no groups rather than an error.
fn groups(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    let value = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.as_object()?.get(p))
    });
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> ClaimRules<'static> {
        ClaimRules {
            issuer: "https://idp",
            audience: "loopgate",
            groups_claim: "groups",
            leeway_secs: 60,
        }
    }

    fn run(v: Value) -> Result<ValidatedToken, TokenError> {
        run_with(v, &rules())
    }

    fn run_with(v: Value, rules: &ClaimRules<'_>) -> Result<ValidatedToken, TokenError> {
        check(v.as_object().unwrap(), rules, UNIX_EPOCH + Duration::from_secs(NOW))
    }

    fn base() -> Value {
        json!({"iss": "https://idp", "aud": "loopgate", "sub": "bot", "exp": NOW + 300, "iat": NOW - 10})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    #[test]
    fn accepts_and_extracts() {
        let mut v = with("aud", json!(["other", "loopgate"]));
        v["azp"] = json!("etl");
        v["email"] = json!("bot@example.com");
        v["groups"] = json!(["phi-readers", 7, "ops"]);
        let t = run(v).unwrap();
        assert_eq!(t.subject, "bot");
        assert_eq!(t.client_id.as_deref(), Some("etl"));
        assert_eq!(t.email.as_deref(), Some("bot@example.com"));
        assert_eq!(t.groups, ["phi-readers", "ops"]);
        assert_eq!(t.expires_at, UNIX_EPOCH + Duration::from_secs(NOW + 300));
    }

    #[test]
    fn time_window_with_leeway() {
        assert!(run(with("exp", json!(NOW - 30))).is_ok());
        assert_eq!(run(with("exp", json!(NOW - 61))), Err(TokenError::Expired));
        assert!(run(with("nbf", json!(NOW + 30))).is_ok());
        assert_eq!(run(with("nbf", json!(NOW + 61))), Err(TokenError::NotYetValid));
        assert_eq!(run(with("iat", json!(NOW + 61))), Err(TokenError::IssuedInFuture));
        assert!(run(with("exp", json!((NOW + 10) as f64 + 0.5))).is_ok());
        assert_eq!(
            run(with("exp", json!("tomorrow"))),
            Err(TokenError::MissingClaim("exp"))
        );
        assert_eq!(run(with("exp", json!(1e300))), Err(TokenError::MissingClaim("exp")));
        assert_eq!(run(with("iat", Value::Null)), Err(TokenError::MissingClaim("iat")));
        // Far-future exp: accepted or refused, never an overflow panic.
        let _ = run(with("exp", json!(i64::MAX)));
        let _ = run(with("exp", json!(u64::MAX)));
    }

    #[test]
    fn issuer_audience_subject() {
        assert_eq!(run(with("iss", json!("https://idp/"))), Err(TokenError::WrongIssuer));
        assert_eq!(run(with("aud", json!("other"))), Err(TokenError::WrongAudience));
        assert_eq!(run(with("aud", json!(["a", "b"]))), Err(TokenError::WrongAudience));
        assert_eq!(run(with("aud", json!(5))), Err(TokenError::MissingClaim("aud")));
        assert_eq!(run(with("sub", json!(""))), Err(TokenError::MissingClaim("sub")));
        assert_eq!(
            run(with("client_id", json!("cc"))).unwrap().client_id.as_deref(),
            Some("cc")
        );
    }

    #[test]
    fn groups_from_custom_and_nested_claims() {
        let mut r = rules();
        r.groups_claim = "https://example.com/groups";
        let t = run_with(with("https://example.com/groups", json!("admins")), &r).unwrap();
        assert_eq!(t.groups, ["admins"]);
        r.groups_claim = "realm_access.roles";
        let t = run_with(with("realm_access", json!({"roles": ["a", "b"]})), &r).unwrap();
        assert_eq!(t.groups, ["a", "b"]);
        assert!(run_with(base(), &r).unwrap().groups.is_empty());
    }
}
