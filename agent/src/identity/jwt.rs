//! Compact JWS parsing: split, decode, and refuse what must never reach a
//! signature check (`none`, HMAC, critical extensions, unknown types).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::TokenError;

/// Larger tokens are refused before any decoding work.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The header fields acted on. `jku`, `x5u`, `jwk` and `x5c` are ignored on
/// purpose: keys come only from the issuer's JWKS.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub crit: Option<Value>,
}

#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `<header>.<payload>` as sent: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

pub(crate) fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| TokenError::Malformed)?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(p)?).map_err(|_| TokenError::Malformed)?;
    let signature = b64(s)?;
    let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
    Ok(Jws {
        header,
        claims,
        signing_input,
        signature,
    })
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)
}

/// Checks done on the header alone, before any key is looked up.
pub(crate) fn check_header(header: &Header, allowed_algs: &[String]) -> Result<(), TokenError> {
    // `none` and HMAC are refused even if someone listed them: the config
    // validation refuses them too, this is the second lock.
    let alg = header.alg.as_str();
    if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    if !allowed_algs.iter().any(|a| a == alg) {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    // No extension is understood, so a critical one must be refused (RFC 7515 §4.1.11).
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    if let Some(typ) = &header.typ {
        // ID tokens (`JWT`) and RFC 9068 access tokens (`at+jwt`); other typed
        // JWTs (logout tokens, DPoP proofs, ...) must not pass as a login.
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "jwt" && typ != "at+jwt" {
            return Err(TokenError::UnsupportedType);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn header(alg: &str, typ: Option<&str>) -> Header {
        Header {
            alg: alg.into(),
            kid: None,
            typ: typ.map(Into::into),
            crit: None,
        }
    }

    #[test]
    fn parses_three_parts_and_keeps_signing_input() {
        let token = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","kid":"k"}"#),
            enc(r#"{"sub":"a"}"#),
            enc("sig")
        );
        let jws = parse(&token).unwrap();
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert_eq!(jws.claims["sub"], "a");
        assert_eq!(jws.signature, b"sig");
        assert_eq!(jws.signing_input, token.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let h = enc(r#"{"alg":"RS256"}"#);
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &format!("{h}.{}.x", enc("[1]")),
            &format!("{h}.{}.x", enc("not json")),
            &format!("{}.{}.x", enc(r#"{"kid":"k"}"#), enc("{}")),
            &format!("{h}.{}.x=", enc("{}")),
            &long,
        ] {
            assert_eq!(parse(bad).unwrap_err(), TokenError::Malformed, "{bad:.40}");
        }
    }

    #[test]
    fn header_rules() {
        let allowed = vec!["RS256".to_string(), "HS256".to_string()];
        assert!(check_header(&header("RS256", None), &allowed).is_ok());
        assert!(check_header(&header("RS256", Some("JWT")), &allowed).is_ok());
        assert!(check_header(&header("RS256", Some("at+jwt")), &allowed).is_ok());
        assert!(check_header(&header("RS256", Some("application/at+JWT")), &allowed).is_ok());
        for alg in ["none", "None", "HS256", "hs256", "RS384", "ES256"] {
            assert_eq!(
                check_header(&header(alg, None), &allowed),
                Err(TokenError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        assert_eq!(
            check_header(&header("RS256", Some("logout+jwt")), &allowed),
            Err(TokenError::UnsupportedType)
        );
        let mut crit = header("RS256", None);
        crit.crit = Some(serde_json::json!(["exp"]));
        assert_eq!(check_header(&crit, &allowed), Err(TokenError::Malformed));
    }
}
