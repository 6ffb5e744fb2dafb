//! One reading of a request target for the policy, the audit and the
//! server. The policy decides on the decoded path; the server gets that
//! same path, re-encoded the one way ([`Target::forward`]), so `secret%73`
//! is decided and sent as `secrets`. What servers read differently — an
//! encoded `/` or `\`, dot segments, empty segments, `;` path parameters
//! (Java servers drop them, Go keeps them), NUL and control bytes, `%25`
//! (a server that decodes twice), invalid escapes, `;` as a query
//! separator — is refused (400), never guessed at.

/// A request target as loopgate reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The decoded path, `/`-separated: what the policy and the audit see.
    pub path: String,
    /// The decoded segments (empty for `/`; a trailing slash adds none).
    pub segments: Vec<String>,
    /// The query as the client wrote it (forwarded unchanged: its pairs
    /// decode one way, checked here).
    pub query: Option<String>,
    /// The query's pairs, decoded (`+` is a space), in order.
    pub params: Vec<(String, String)>,
    /// `path?query` as sent upstream: the decoded segments re-encoded.
    pub forward: String,
}

impl Target {
    /// The first value of parameter `name` (what Go's `url.Values.Get`
    /// and the Kubernetes API server read).
    pub fn first(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why a target is refused: shown to the client and recorded.
pub type Ambiguous = &'static str;

/// Reads `path` and `query` (as they came in the request line or
/// `:path`), or says why they are refused.
pub fn read(path: &str, query: Option<&str>) -> Result<Target, Ambiguous> {
    // CONNECT's authority form has no path: decided as `/` (and refused
    // later as an upgrade loopgate does not relay).
    let path = if path.is_empty() { "/" } else { path };
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the request target is not a path");
    };
    let mut segments = Vec::new();
    let raw: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let trailing_slash = raw.last().is_some_and(|s| s.is_empty());
    let count = raw.len() - usize::from(trailing_slash);
    for raw_segment in &raw[..count] {
        if raw_segment.is_empty() {
            return Err("the path has an empty segment (//)");
        }
        let segment = decode(raw_segment, false).ok_or("the path has an invalid percent-escape or non-UTF-8 bytes")?;
        if segment.contains(['/', '\\']) {
            return Err("the path encodes a / or \\ inside a segment");
        }
        if segment.contains(';') {
            return Err("the path has a ; (servers differ on path parameters)");
        }
        if segment.contains('%') {
            return Err("the path encodes a % (a server decoding twice would read another path)");
        }
        if segment.chars().any(char::is_control) {
            return Err("the path has a control character");
        }
        if segment == "." || segment == ".." {
            return Err("the path has a . or .. segment");
        }
        segments.push(segment);
    }
    let mut decoded_path = String::from("/");
    decoded_path.push_str(&segments.join("/"));
    let mut forward = String::from("/");
    forward.push_str(&segments.iter().map(|s| encode_segment(s)).collect::<Vec<_>>().join("/"));
    if trailing_slash && !segments.is_empty() {
        decoded_path.push('/');
        forward.push('/');
    }

    let mut params = Vec::new();
    if let Some(q) = query {
        params = query_params(q)?;
        forward.push('?');
        forward.push_str(q);
    }
    if forward.parse::<http::uri::PathAndQuery>().is_err() {
        return Err("the request target cannot be sent as it was read");
    }
    Ok(Target {
        path: decoded_path,
        segments,
        query: query.map(str::to_owned),
        params,
        forward,
    })
}

/// The name/value pairs of a query, or of a form body (the same
/// encoding: `application/x-www-form-urlencoded`), decoded.
pub fn query_params(q: &str) -> Result<Vec<(String, String)>, Ambiguous> {
    if q.contains(';') {
        return Err("the query has a ; (servers differ on it as a separator)");
    }
    let mut params = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(name), Some(value)) = (decode(name, true), decode(value, true)) else {
            return Err("the query has an invalid percent-escape or non-UTF-8 bytes");
        };
        if name.chars().any(char::is_control) || value.contains('\0') {
            return Err("the query has a control character in a name or a NUL");
        }
        params.push((name, value));
    }
    Ok(params)
}

/// `%XX` decoded (and `+` as a space in a query); `None` for an invalid
/// escape or bytes that are not UTF-8.
pub fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = decode_bytes(s, plus_is_space, false)?;
    String::from_utf8(bytes).ok()
}

/// `%XX` decoded where it is a valid escape and a `%` kept where it is
/// not, bytes that are not UTF-8 replaced: for looking at text, never for
/// forwarding. A detector must not be blinded by one bad escape next to
/// an encoded identifier (`123%2D45%2D6789%zz`).
pub fn decode_lenient(s: &str) -> String {
    let bytes = decode_bytes(s, false, true).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The bytes `s` stands for; an invalid escape is `None`, or kept as it
/// is when `keep_invalid`.
fn decode_bytes(s: &str, plus_is_space: bool, keep_invalid: bool) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ if keep_invalid => {
                        out.push(b'%');
                        i += 1;
                    }
                    _ => return None,
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// A decoded segment as it goes upstream: unreserved characters and the
/// sub-delimiters a segment may hold as they are, the rest `%XX`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: &str) -> Result<Target, Ambiguous> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        read(path, query)
    }

    #[test]
    fn escapes_are_decided_and_forwarded_decoded() {
        let r = t("/api/v1/namespaces/x/secret%73").unwrap();
        assert_eq!(r.path, "/api/v1/namespaces/x/secrets");
        assert_eq!(r.forward, "/api/v1/namespaces/x/secrets");
        assert_eq!(r.segments, ["api", "v1", "namespaces", "x", "secrets"]);
        let r = t("/fhir/Pat%69ent/a%20b?name%3Aexact=Zed%2B1&x=a+b").unwrap();
        assert_eq!(r.path, "/fhir/Patient/a b");
        assert_eq!(r.forward, "/fhir/Patient/a%20b?name%3Aexact=Zed%2B1&x=a+b");
        assert_eq!(
            r.params,
            [("name:exact".into(), "Zed+1".into()), ("x".into(), "a b".into())]
        );
        assert_eq!(r.first("x"), Some("a b"));
        let r = t("/").unwrap();
        assert_eq!((r.path.as_str(), r.segments.len()), ("/", 0));
        assert_eq!(t("").unwrap().forward, "/");
        // A trailing slash is kept (as the server gets it), not a segment.
        let r = t("/fhir/").unwrap();
        assert_eq!((r.path.as_str(), r.forward.as_str()), ("/fhir/", "/fhir/"));
        assert_eq!(r.segments, ["fhir"]);
    }

    #[test]
    fn what_servers_read_differently_is_refused() {
        for bad in [
            "/api/v1/namespaces/x%2Fsecrets",
            "/api/v1/namespaces/x%2fsecrets",
            "/api/v1/namespaces/x%5Csecrets",
            "/api/v1/namespaces/x\\secrets",
            "/api//v1/namespaces/x/secrets",
            "/api/v1/namespaces/x/./secrets",
            "/api/v1/namespaces/x/pods/../secrets",
            "/api/v1/namespaces/x/%2E%2E/secrets",
            "/api/v1/namespaces/x/%2e/secrets",
            "/api/v1/namespaces/x/secrets;a=b",
            "/api/v1/namespaces/x/secrets%3Bjsessionid=1",
            "/api/v1/namespaces/x/secret%2573",
            "/fhir/Patient/1%00",
            "/fhir/Patient/1%0a",
            "/fhir/Patient/%zz",
            "/fhir/Patient/%C3",
            "/fhir/Patient/1%",
            "/fhir/Patient?a=1;b=2",
            "/fhir/Patient?a=%zz",
            "/fhir/Patient?a%00=1",
            "/fhir/Patient?a=1%00",
            "*",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_value_wins_as_go_reads_it() {
        let r = t("/api/v1/pods?watch=0&watch=1&&w%61tch=2").unwrap();
        assert_eq!(r.first("watch"), Some("0"));
        assert_eq!(r.params.len(), 3);
        assert_eq!(r.params[2].0, "watch");
        let r = t("/api/v1/pods?watch").unwrap();
        assert_eq!(r.first("watch"), Some(""));
    }
}
