//! FHIR's RESTful API as the policy reads it: which interaction a request
//! is, on which resource type and id, with which search parameters
//! (<https://hl7.org/fhir/http.html>).
use crate::policy::FhirRequest;

/// The FHIR parts of `method path?query`. The service base (`/fhir`,
/// `/baseR4`) is whatever comes before the first segment that names a
/// resource type (an upper-case letter first), an operation (`$op`),
/// `metadata`, `_history` or `_search`; a base-only POST is a batch or
/// transaction.
pub fn parse(method: &str, path: &str, query: Option<&str>) -> FhirRequest {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let start = segments
        .iter()
        .position(|s| is_resource_type(s) || s.starts_with('$') || matches!(*s, "metadata" | "_history" | "_search"))
        .unwrap_or(segments.len());
    let rest = &segments[start..];
    let mut search_params: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .filter(|name| !name.is_empty())
        .map(percent_decode)
        .collect();
    search_params.sort();
    search_params.dedup();

    let op = |s: &str| s.starts_with('$').then(|| s.to_owned());
    let mut r = FhirRequest {
        search_params,
        ..FhirRequest::default()
    };
    let (ty, tail): (Option<&str>, &[&str]) = match rest.first() {
        Some(t) if is_resource_type(t) => (Some(t), &rest[1..]),
        _ => (None, rest),
    };
    r.resource_type = ty.map(str::to_owned);
    r.interaction = match (method, tail) {
        (_, [o]) if o.starts_with('$') => {
            r.operation = op(o);
            "operation"
        }
        (_, [id, o]) if o.starts_with('$') => {
            r.id = Some((*id).to_owned());
            r.operation = op(o);
            "operation"
        }
        ("GET", ["metadata"]) if ty.is_none() => "capabilities",
        ("GET" | "HEAD", []) if ty.is_some() => "search",
        ("POST", ["_search"]) => "search",
        ("POST", []) if ty.is_some() => "create",
        ("POST", []) => "batch",
        ("GET" | "HEAD", []) => "search",
        ("DELETE", []) if ty.is_some() => "delete",
        ("GET", ["_history"]) | ("GET", [_, "_history"]) => {
            if let [id, _] = tail {
                r.id = Some((*id).to_owned());
            }
            "history"
        }
        ("GET", [id, "_history", _vid]) => {
            r.id = Some((*id).to_owned());
            "vread"
        }
        (m, [id]) if ty.is_some() => {
            r.id = Some((*id).to_owned());
            match m {
                "GET" | "HEAD" => "read",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "other",
            }
        }
        _ => "other",
    }
    .to_owned();
    r
}

/// A FHIR resource type name: `Patient`, `MedicationRequest`.
fn is_resource_type(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `%XX` decoded (a search parameter's name; invalid escapes kept as written).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, target: &str) -> FhirRequest {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        parse(method, path, query)
    }

    #[test]
    fn interactions_per_the_rest_api() {
        let cases = [
            ("GET", "/fhir/Patient/123", "read", Some("Patient"), Some("123"), None),
            (
                "GET",
                "/fhir/Patient/123/_history/2",
                "vread",
                Some("Patient"),
                Some("123"),
                None,
            ),
            (
                "GET",
                "/fhir/Patient/123/_history",
                "history",
                Some("Patient"),
                Some("123"),
                None,
            ),
            ("PUT", "/fhir/Patient/123", "update", Some("Patient"), Some("123"), None),
            ("PATCH", "/Patient/123", "patch", Some("Patient"), Some("123"), None),
            (
                "DELETE",
                "/baseR4/Patient/123",
                "delete",
                Some("Patient"),
                Some("123"),
                None,
            ),
            (
                "DELETE",
                "/fhir/Patient?identifier=x",
                "delete",
                Some("Patient"),
                None,
                None,
            ),
            ("POST", "/fhir/Patient", "create", Some("Patient"), None, None),
            ("GET", "/fhir/Patient?name=smith", "search", Some("Patient"), None, None),
            ("POST", "/fhir/Patient/_search", "search", Some("Patient"), None, None),
            ("GET", "/fhir/metadata", "capabilities", None, None, None),
            ("POST", "/fhir", "batch", None, None, None),
            ("GET", "/fhir/$export", "operation", None, None, Some("$export")),
            (
                "GET",
                "/fhir/Patient/$export",
                "operation",
                Some("Patient"),
                None,
                Some("$export"),
            ),
            (
                "GET",
                "/fhir/Group/g1/$export",
                "operation",
                Some("Group"),
                Some("g1"),
                Some("$export"),
            ),
            (
                "GET",
                "/fhir/Patient/1/$everything",
                "operation",
                Some("Patient"),
                Some("1"),
                Some("$everything"),
            ),
        ];
        for (method, target, interaction, ty, id, op) in cases {
            let r = p(method, target);
            assert_eq!(r.interaction, interaction, "{method} {target}");
            assert_eq!(r.resource_type.as_deref(), ty, "{method} {target}");
            assert_eq!(r.id.as_deref(), id, "{method} {target}");
            assert_eq!(r.operation.as_deref(), op, "{method} {target}");
        }
    }

    #[test]
    fn search_params_are_names_only() {
        let r = p(
            "GET",
            "/fhir/Patient?name%3Aexact=Smith&birthdate=1970-01-01&name=x&_count=10",
        );
        assert_eq!(r.search_params, ["_count", "birthdate", "name", "name:exact"]);
        assert!(!format!("{r:?}").contains("Smith"));
    }
}
