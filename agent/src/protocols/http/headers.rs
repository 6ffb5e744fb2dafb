//! What loopgate changes in the headers it relays: the client's
//! credentials never reach the upstream (loopgate's own go instead), the
//! upstream's session cookies never reach the client, hop-by-hop headers
//! stay on their hop, and bodies come uncompressed and as JSON, so they can
//! be masked.
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The client's credentials: a bearer token or basic password, cookies,
/// and requests to act as someone else (Kubernetes impersonation).
fn is_client_credential(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "x-api-key"
            | "x-auth-token"
            | "x-amz-security-token"
            | "x-goog-api-key"
    ) || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
}

/// The client's bearer token, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The request headers as loopgate forwards them: hop-by-hop headers and
/// the client's credentials removed (and counted), loopgate's token added,
/// identity encoding asked for, protobuf replaced by JSON in `Accept`.
pub fn upstream_request(headers: &mut HeaderMap, token: Option<&str>) -> usize {
    strip_hop_by_hop(headers);
    let credentials: Vec<HeaderName> = headers.keys().filter(|n| is_client_credential(n)).cloned().collect();
    let stripped = credentials.iter().map(|n| headers.get_all(n).iter().count()).sum();
    for name in credentials {
        headers.remove(name);
    }
    if let Some(token) = token
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        let mut value = value;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let asks_protobuf = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().map_or(true, |s| s.contains("protobuf")));
    if asks_protobuf {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
    stripped
}

/// FHIR: a client asking for XML (or anything but JSON) is asked JSON for,
/// the one format whose resources loopgate masks by path.
pub fn prefer_fhir_json(headers: &mut HeaderMap) {
    let json = headers
        .get_all(header::ACCEPT)
        .iter()
        .all(|v| v.to_str().is_ok_and(|s| s.contains("json") && !s.contains("xml")));
    if !json || !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/fhir+json"));
    }
}

/// Kubernetes impersonation of `subject` with `groups` (after the
/// client's own `Impersonate-*` headers were removed). A name that cannot
/// be a header value is left out: the request then runs as loopgate.
pub fn impersonate(headers: &mut HeaderMap, subject: &str, groups: &[String]) {
    let Ok(user) = HeaderValue::from_str(subject) else {
        return;
    };
    headers.insert("impersonate-user", user);
    for group in groups {
        if let Ok(g) = HeaderValue::from_str(group) {
            headers.append("impersonate-group", g);
        }
    }
}

/// The response headers as loopgate returns them: hop-by-hop headers, the
/// length (the masked body has another) and the upstream's cookies removed.
pub fn client_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::SET_COOKIE);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Headers by which a client asks a server to run another method than
/// the request line's (some FHIR and REST servers honour them): the
/// policy would decide a GET the server runs as a DELETE.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

pub fn overrides_method(headers: &HeaderMap) -> bool {
    METHOD_OVERRIDES.iter().any(|h| headers.contains_key(*h))
}

/// Why a response's body cannot be masked as it comes, if it cannot: a
/// content or transfer coding other than identity (anywhere in any of the
/// headers: `gzip, identity`, two headers, unknown codings), or content
/// types that disagree.
pub fn unmaskable_coding(headers: &HeaderMap) -> Option<&'static str> {
    let codings = |name: header::HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| {
                v.to_str().map_or_else(
                    |_| vec!["?".to_owned()],
                    |s| s.split(',').map(|c| c.trim().to_ascii_lowercase()).collect(),
                )
            })
            .filter(|c| !c.is_empty())
            .collect()
    };
    if codings(header::CONTENT_ENCODING).iter().any(|c| c != "identity") {
        return Some("the upstream sent an encoded (compressed) body, which cannot be masked");
    }
    // hyper removes chunked framing; any other transfer coding would reach
    // the masker still encoded.
    if codings(header::TRANSFER_ENCODING)
        .iter()
        .any(|c| c != "chunked" && c != "identity")
    {
        return Some("the upstream sent a transfer-encoded (compressed) body, which cannot be masked");
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    if let Some(first) = types.next()
        && types.any(|t| t != first)
    {
        return Some("the upstream sent content types that disagree");
    }
    None
}

/// Response headers whose values are URLs a FHIR server fills with the
/// search or the resource (`Location: Patient/123-45-6789/_history/1`,
/// `Content-Location: Patient?identifier=...`, RFC 8288 `Link` paging).
const URL_HEADERS: [&str; 3] = ["location", "content-location", "link"];
/// Response headers that carry no data of a patient's and that clients
/// parse byte for byte: left alone.
const PLAIN_HEADERS: [&str; 10] = [
    "content-type",
    "content-length",
    "date",
    "etag",
    "last-modified",
    "cache-control",
    "vary",
    "expires",
    "age",
    "strict-transport-security",
];

/// Every response header value through the detectors (decoded forms
/// too); URL headers of a FHIR server also lose their search values. A
/// value that is not text is dropped. Returns how many values changed.
pub fn mask_response_values(headers: &mut HeaderMap, masker: &crate::mask::Masker, fhir: bool) -> u64 {
    let mut masked = 0;
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        if PLAIN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut out = Vec::with_capacity(values.len());
        for value in values {
            let Ok(text) = value.to_str() else {
                masked += 1;
                continue;
            };
            let new = if fhir && URL_HEADERS.contains(&name.as_str()) {
                super::url::mask_header_urls(masker, text)
            } else {
                super::url::mask_text(masker, text)
            };
            match new {
                std::borrow::Cow::Borrowed(_) => out.push(value),
                std::borrow::Cow::Owned(m) => {
                    masked += 1;
                    if let Ok(v) = HeaderValue::from_str(&m) {
                        out.push(v);
                    }
                }
            }
        }
        headers.remove(&name);
        for v in out {
            headers.append(&name, v);
        }
    }
    masked
}

/// How a response body is inspected, by its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON, `+json`, NDJSON: the streaming JSON masker.
    Json,
    /// Text, XML, forms: the detectors, line by line.
    Text,
    /// Protobuf (Kubernetes' binary encoding): cannot be masked, refused.
    Protobuf,
    /// Anything else with a body: cannot be inspected, refused.
    Opaque,
}

pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return BodyKind::Text;
    };
    let ct = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.contains("protobuf") {
        BodyKind::Protobuf
    } else if essence == "application/json"
        || essence.ends_with("+json")
        || essence.ends_with("ndjson")
        || essence == "application/json-patch+json"
    {
        BodyKind::Json
    } else if essence.starts_with("text/")
        || essence.ends_with("/xml")
        || essence.ends_with("+xml")
        || essence == "application/x-www-form-urlencoded"
        || essence.is_empty()
    {
        BodyKind::Text
    } else {
        BodyKind::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn client_credentials_are_replaced_by_loopgates() {
        let mut h = map(&[
            ("authorization", "Bearer client-token"),
            ("cookie", "session=1"),
            ("impersonate-user", "admin"),
            ("impersonate-group", "system:masters"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("accept", "application/vnd.kubernetes.protobuf, application/json"),
            ("accept-encoding", "gzip"),
            ("x-request-id", "r1"),
        ]);
        assert_eq!(upstream_request(&mut h, Some("loopgate-token")), 4);
        assert_eq!(h.get("authorization").unwrap(), "Bearer loopgate-token");
        for gone in [
            "cookie",
            "impersonate-user",
            "impersonate-group",
            "connection",
            "x-private",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h.get("accept").unwrap(), "application/json");
        assert_eq!(h.get("accept-encoding").unwrap(), "identity");
        assert_eq!(h.get("x-request-id").unwrap(), "r1");
        let mut h = map(&[("authorization", "Basic dTpw")]);
        upstream_request(&mut h, None);
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn bearer_tokens_and_body_kinds() {
        assert_eq!(bearer(&map(&[("authorization", "bearer  abc ")])), Some("abc"));
        assert_eq!(bearer(&map(&[("authorization", "Basic abc")])), None);
        let kind = |ct: &str| body_kind(&map(&[("content-type", ct)]));
        assert_eq!(kind("application/fhir+json; charset=utf-8"), BodyKind::Json);
        assert_eq!(kind("application/fhir+ndjson"), BodyKind::Json);
        assert_eq!(kind("application/vnd.kubernetes.protobuf"), BodyKind::Protobuf);
        assert_eq!(kind("text/plain"), BodyKind::Text);
        assert_eq!(kind("image/png"), BodyKind::Opaque);
        assert_eq!(body_kind(&HeaderMap::new()), BodyKind::Text);
    }

    #[test]
    fn fhir_clients_are_answered_json() {
        for (accept, want) in [
            (Some("application/fhir+xml"), "application/fhir+json"),
            (Some("*/*"), "application/fhir+json"),
            (None, "application/fhir+json"),
            (Some("application/json"), "application/json"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(a) = accept {
                h.insert(header::ACCEPT, HeaderValue::from_static(a));
            }
            prefer_fhir_json(&mut h);
            assert_eq!(h.get(header::ACCEPT).unwrap(), want, "{accept:?}");
        }
    }

    #[test]
    fn responses_lose_cookies_and_length() {
        let mut h = map(&[("set-cookie", "s=1"), ("content-length", "10"), ("etag", "\"1\"")]);
        client_response(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn only_identity_codings_pass() {
        assert_eq!(unmaskable_coding(&map(&[("content-encoding", "identity")])), None);
        assert_eq!(
            unmaskable_coding(&map(&[("content-encoding", "Identity, identity")])),
            None
        );
        assert_eq!(unmaskable_coding(&map(&[("transfer-encoding", "chunked")])), None);
        assert_eq!(unmaskable_coding(&HeaderMap::new()), None);
        for bad in [
            &[("content-encoding", "gzip")][..],
            &[("content-encoding", "gzip, identity")],
            &[("content-encoding", "identity, gzip")],
            &[("content-encoding", "identity"), ("content-encoding", "br")],
            &[("content-encoding", "x-unknown")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("content-type", "text/plain"), ("content-type", "application/json")],
        ] {
            assert!(unmaskable_coding(&map(bad)).is_some(), "{bad:?}");
        }
        let mut h = map(&[("content-encoding", "identity")]);
        h.append(header::CONTENT_ENCODING, HeaderValue::from_bytes(b"\xffgzip").unwrap());
        assert!(unmaskable_coding(&h).is_some());
    }

    #[test]
    fn response_header_values_are_masked() {
        let masker = crate::mask::Masker::new(&crate::mask::MaskConfig::default(), None).unwrap();
        let mut h = map(&[
            ("location", "https://f/fhir/Patient/123-45-6789/_history/1"),
            (
                "content-location",
                "https://f/fhir/Patient?identifier=urn%3Aoid%3A1%7C123456789&name=Zed&_count=5",
            ),
            ("link", "<https://f/fhir/Patient?name=Zed&_getpages=a1>; rel=\"next\""),
            ("x-note", "call 555-867-5309"),
            ("x-id", "123%2D45%2D6789"),
            ("etag", "W/\"1\""),
        ]);
        assert_eq!(mask_response_values(&mut h, &masker, true), 5);
        assert_eq!(h["location"], "https://f/fhir/Patient/***/_history/1");
        assert_eq!(
            h["content-location"],
            "https://f/fhir/Patient?identifier=***&name=***&_count=5"
        );
        assert_eq!(
            h["link"],
            "<https://f/fhir/Patient?name=***&_getpages=a1>; rel=\"next\""
        );
        assert_eq!(h["x-note"], "call ***");
        assert_eq!(h["x-id"], "***");
        assert_eq!(h["etag"], "W/\"1\"");
        let mut h = map(&[("x-methods", "a")]);
        assert!(overrides_method(&map(&[("x-http-method-override", "DELETE")])));
        assert!(!overrides_method(&h));
        assert_eq!(mask_response_values(&mut h, &masker, false), 0);
    }
}
