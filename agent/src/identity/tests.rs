//! The validator against the in-process issuer: real HTTP, real keys, real signatures.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::test_issuer::{TestIssuer, now_secs};
use super::*;

const AUD: &str = "loopgate";

async fn setup() -> (TestIssuer, OidcValidator) {
    let issuer = TestIssuer::start().await.unwrap();
    let validator = OidcValidator::new(issuer.oidc_config(AUD), vec![]).unwrap();
    (issuer, validator)
}

fn set(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

#[tokio::test]
async fn valid_id_token() {
    let (issuer, v) = setup().await;
    let mut claims = issuer.claims("etl-bot", AUD);
    claims["email"] = json!("etl@example.com");
    claims["groups"] = json!(["phi-readers"]);
    claims["azp"] = json!("etl-client");
    let t = v.validate(&issuer.mint(&claims)).await.unwrap();
    assert_eq!(t.subject, "etl-bot");
    assert_eq!(t.issuer, issuer.issuer());
    assert_eq!(t.email.as_deref(), Some("etl@example.com"));
    assert_eq!(t.groups, ["phi-readers"]);
    assert_eq!(t.client_id.as_deref(), Some("etl-client"));
    assert_eq!(issuer.discovery_requests(), 1);
    assert_eq!(issuer.jwks_requests(), 1);
}

#[tokio::test]
async fn valid_access_token_and_other_algs() {
    let (issuer, v) = setup().await;
    let claims = set(issuer.claims("svc", AUD), "client_id", json!("reporter"));
    let claims = set(claims, "aud", json!(["https://api", AUD]));
    let at = issuer.mint_with(json!({"alg": "RS256", "typ": "at+jwt", "kid": issuer.kid()}), &claims);
    assert_eq!(v.validate(&at).await.unwrap().client_id.as_deref(), Some("reporter"));
    let ps = issuer.mint_with(json!({"alg": "PS256", "kid": issuer.kid()}), &issuer.claims("a", AUD));
    v.validate(&ps).await.unwrap();
    let es = issuer.mint_with(json!({"alg": "ES256", "kid": "ec-1"}), &issuer.claims("b", AUD));
    v.validate(&es).await.unwrap();
    // One published RSA key and no kid: the key is found by type.
    let no_kid = issuer.mint_with(json!({"alg": "RS256"}), &issuer.claims("c", AUD));
    v.validate(&no_kid).await.unwrap();
}

#[tokio::test]
async fn time_audience_and_issuer_are_checked() {
    let (issuer, v) = setup().await;
    let now = now_secs();
    let cases = [
        (
            set(
                set(issuer.claims("a", AUD), "exp", json!(now - 3600)),
                "iat",
                json!(now - 7200),
            ),
            TokenError::Expired,
        ),
        (
            set(issuer.claims("a", AUD), "nbf", json!(now + 3600)),
            TokenError::NotYetValid,
        ),
        (
            set(issuer.claims("a", AUD), "iat", json!(now + 3600)),
            TokenError::IssuedInFuture,
        ),
        (issuer.claims("a", "someone-else"), TokenError::WrongAudience),
        (
            set(issuer.claims("a", AUD), "iss", json!("https://evil.example.com")),
            TokenError::WrongIssuer,
        ),
    ];
    for (claims, want) in cases {
        assert_eq!(v.validate(&issuer.mint(&claims)).await, Err(want.clone()), "{want}");
    }
}

#[tokio::test]
async fn tampered_payload_fails_signature() {
    let (issuer, v) = setup().await;
    let token = issuer.mint(&issuer.claims("reader", AUD));
    let forged = issuer.mint(&set(issuer.claims("admin", AUD), "groups", json!(["admins"])));
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap();
    assert_eq!(v.validate(&parts.join(".")).await, Err(TokenError::BadSignature));
    // The genuine token still passes: the failure was the tampering.
    v.validate(&token).await.unwrap();
}

#[tokio::test]
async fn none_and_hmac_algorithms_are_refused() {
    let (issuer, v) = setup().await;
    v.refresh().await.unwrap();
    let claims = issuer.claims("admin", AUD);
    for alg in ["none", "None", "NONE"] {
        let token = issuer.mint_with(json!({"alg": alg, "kid": issuer.kid()}), &claims);
        assert_eq!(v.validate(&token).await, Err(TokenError::UnsupportedAlgorithm), "{alg}");
    }
    // Algorithm confusion: HS256 keyed with what the attacker can see of the public key.
    for secret in issuer.public_key_bytes() {
        for header in [json!({"alg": "HS256", "kid": issuer.kid()}), json!({"alg": "HS256"})] {
            let token = issuer.mint_hmac(header, &claims, &secret);
            assert_eq!(v.validate(&token).await, Err(TokenError::UnsupportedAlgorithm));
        }
    }
    assert_eq!(v.stats().signature_checks, 0, "refused before any key was tried");
}

#[tokio::test]
async fn alg_must_fit_key_and_config() {
    let (issuer, v) = setup().await;
    let claims = issuer.claims("a", AUD);
    // ES256 header naming the RSA key, and RS256 naming the EC key.
    let es_on_rsa = issuer.mint_with(json!({"alg": "ES256", "kid": issuer.kid()}), &claims);
    assert_eq!(v.validate(&es_on_rsa).await, Err(TokenError::UnsupportedAlgorithm));
    let rs_on_ec = issuer.mint_with(json!({"alg": "RS256", "kid": "ec-1"}), &claims);
    assert_eq!(v.validate(&rs_on_ec).await, Err(TokenError::UnsupportedAlgorithm));

    let mut config = issuer.oidc_config(AUD);
    config.allowed_algs = vec!["RS256".into()];
    let strict = OidcValidator::new(config, vec![]).unwrap();
    let rs384 = issuer.mint_with(json!({"alg": "RS384", "kid": issuer.kid()}), &claims);
    assert_eq!(strict.validate(&rs384).await, Err(TokenError::UnsupportedAlgorithm));
    v.validate(&rs384).await.unwrap(); // RS384 is in the default list

    let logout = issuer.mint_with(
        json!({"alg": "RS256", "typ": "logout+jwt", "kid": issuer.kid()}),
        &claims,
    );
    assert_eq!(v.validate(&logout).await, Err(TokenError::UnsupportedType));
}

#[tokio::test]
async fn unknown_kid_refetches_and_accepts_rotated_key() {
    let (issuer, v) = setup().await;
    v.refresh().await.unwrap();
    assert_eq!(issuer.jwks_requests(), 1);
    let new_kid = issuer.rotate();
    assert_ne!(new_kid, "rsa-1");
    let token = issuer.mint(&issuer.claims("a", AUD));
    v.validate(&token).await.unwrap();
    assert_eq!(issuer.jwks_requests(), 2);
}

#[tokio::test]
async fn bogus_kid_flood_is_rate_limited() {
    let (issuer, v) = setup().await;
    v.refresh().await.unwrap();
    for i in 0..50 {
        let token = issuer.mint_with(
            json!({"alg": "RS256", "kid": format!("bogus-{i}")}),
            &issuer.claims("a", AUD),
        );
        assert_eq!(v.validate(&token).await, Err(TokenError::UnknownKey));
    }
    assert_eq!(
        issuer.jwks_requests(),
        2,
        "one refetch for the first unknown kid, none after"
    );
}

#[tokio::test]
async fn issuer_down_with_cached_keys_still_validates() {
    let (issuer, v) = setup().await;
    v.refresh().await.unwrap();
    issuer.stop().await;
    assert!(v.refresh().await.is_err());
    // A token never seen before, so the signature path runs on cached keys.
    let t = v
        .validate(&issuer.mint(&issuer.claims("during-outage", AUD)))
        .await
        .unwrap();
    assert_eq!(t.subject, "during-outage");
    issuer.restart().await.unwrap();
    v.refresh().await.unwrap();
}

#[tokio::test]
async fn issuer_down_without_keys_fails_closed() {
    let (issuer, v) = setup().await;
    issuer.stop().await;
    let token = issuer.mint(&issuer.claims("a", AUD));
    let err = v.validate(&token).await.unwrap_err();
    assert_eq!(err, TokenError::KeysUnavailable);
    assert!(err.to_string().contains("keys are unavailable"));
    assert!(!err.to_string().contains(&token[..20]));
}

#[tokio::test]
async fn groups_from_custom_claim() {
    let issuer = TestIssuer::start().await.unwrap();
    let mut config = issuer.oidc_config(AUD);
    config.groups_claim = "roles".into();
    let v = OidcValidator::new(config, vec![]).unwrap();
    let claims = set(issuer.claims("a", AUD), "roles", json!(["phi-admin", "ops"]));
    let claims = set(claims, "groups", json!(["ignored"]));
    assert_eq!(
        v.validate(&issuer.mint(&claims)).await.unwrap().groups,
        ["phi-admin", "ops"]
    );
}

#[tokio::test]
async fn binding_rules_restrict_processes() {
    let issuer = TestIssuer::start().await.unwrap();
    let rules = vec![
        BindingRule {
            subject: Some("etl-bot".into()),
            client_id: None,
            units: vec!["etl.service".into()],
            uids: vec![],
        },
        BindingRule {
            subject: None,
            client_id: Some("reporter".into()),
            units: vec![],
            uids: vec![1001],
        },
    ];
    let v = OidcValidator::new(issuer.oidc_config(AUD), rules).unwrap();
    let etl = v.validate(&issuer.mint(&issuer.claims("etl-bot", AUD))).await.unwrap();
    assert!(v.check_binding(&etl, 0, Some("etl.service")).is_ok());
    assert_eq!(
        v.check_binding(&etl, 0, Some("cron.service")),
        Err(TokenError::BindingRefused)
    );
    assert_eq!(v.check_binding(&etl, 0, None), Err(TokenError::BindingRefused));
    let rep = set(issuer.claims("svc-7", AUD), "client_id", json!("reporter"));
    let rep = v.validate(&issuer.mint(&rep)).await.unwrap();
    assert!(v.check_binding(&rep, 1001, None).is_ok());
    assert_eq!(
        v.check_binding(&rep, 1002, Some("etl.service")),
        Err(TokenError::BindingRefused)
    );
    let free = v.validate(&issuer.mint(&issuer.claims("unbound", AUD))).await.unwrap();
    assert!(v.check_binding(&free, 4242, None).is_ok());
}

#[tokio::test]
async fn second_validation_is_a_cache_hit() {
    let (issuer, v) = setup().await;
    let token = issuer.mint(&issuer.claims("a", AUD));
    let first = v.validate(&token).await.unwrap();
    let after_first = v.stats();
    assert_eq!(after_first.signature_checks, 1);
    assert_eq!(after_first.cache_hits, 0);
    issuer.stop().await; // a hit needs no issuer either
    assert_eq!(v.validate(&token).await.unwrap(), first);
    let after_second = v.stats();
    assert_eq!(after_second.signature_checks, 1, "no second signature check");
    assert_eq!(after_second.key_fetches, after_first.key_fetches, "no fetch");
    assert_eq!(after_second.cache_hits, 1);
    // Failures are not cached as successes.
    let bad = issuer.mint(&issuer.claims("a", "other"));
    assert!(v.validate(&bad).await.is_err());
    assert!(v.validate(&bad).await.is_err());
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let issuer = TestIssuer::start().await.unwrap();
    // Same server, but the configured issuer string differs (trailing slash):
    // the discovery document's issuer does not match, so no keys are taken.
    let config = OidcConfig::new(format!("{}/", issuer.issuer()), AUD);
    let v = OidcValidator::new(config, vec![]).unwrap();
    let err = v.refresh().await.unwrap_err();
    assert!(matches!(err, KeyFetchError::BadDiscovery(_)), "{err}");
    assert_eq!(
        v.validate(&issuer.mint(&issuer.claims("a", AUD))).await,
        Err(TokenError::KeysUnavailable)
    );
}

#[tokio::test]
async fn periodic_refresh_runs_until_the_validator_is_dropped() {
    let issuer = TestIssuer::start().await.unwrap();
    let mut config = issuer.oidc_config(AUD);
    config.refresh_secs = 1;
    let v = Arc::new(OidcValidator::new(config, vec![]).unwrap());
    v.refresh().await.unwrap();
    let task = v.spawn_refresh();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(issuer.jwks_requests(), 2);
    drop(v);
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("refresh task ends")
        .unwrap();
}

#[tokio::test]
async fn https_issuer_with_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, ca_pem) = TestIssuer::start_tls(dir.path()).await.unwrap();
    assert!(issuer.issuer().starts_with("https://127.0.0.1:"));
    let mut config = issuer.oidc_config(AUD);
    config.ca_file = Some(ca_pem);
    let v = OidcValidator::new(config, vec![]).unwrap();
    let t = v.validate(&issuer.mint(&issuer.claims("over-tls", AUD))).await.unwrap();
    assert_eq!(t.subject, "over-tls");

    // Without the private CA (public web roots only) the issuer is not trusted.
    let untrusted = OidcValidator::new(issuer.oidc_config(AUD), vec![]).unwrap();
    let err = untrusted.refresh().await.unwrap_err();
    assert!(err.to_string().contains("tls"), "{err}");
    let token = issuer.mint(&issuer.claims("x", AUD));
    assert_eq!(untrusted.validate(&token).await, Err(TokenError::KeysUnavailable));
}
