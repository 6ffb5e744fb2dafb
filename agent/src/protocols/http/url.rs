//! Detectors over text that may hold URLs, and the search values of FHIR
//! URLs. An identifier in a URL is usually percent-encoded
//! (`identifier=urn%3Aoid%3A1%7C123-45-6789`), which hides it from the
//! detectors: each run of text with escapes is also scanned decoded, and
//! masked whole when that finds something. The values of a FHIR search
//! URL (`Patient?name=Zed&birthdate=1970-01-01`) are PHI whether a
//! detector knows them or not: they are replaced, the paging parameters
//! a client follows (`_count`, `_getpages`) kept.
use std::borrow::Cow;

use crate::mask::Masker;

use super::canonical::{decode, decode_lenient};

/// Search result parameters (<https://hl7.org/fhir/search.html>) and
/// servers' paging cursors: no patient's data, needed to page.
const CONTROL_PARAMS: &[&str] = &[
    "_count",
    "_offset",
    "_skip",
    "_page",
    "_page_token",
    "_cursor",
    "_getpages",
    "_getpagesoffset",
    "_bundletype",
    "_pretty",
    "_format",
    "_summary",
    "_elements",
    "_sort",
    "_include",
    "_revinclude",
    "_total",
    "_type",
    "_contained",
    "_containedType",
    "_searchId",
    "ct",
    "page",
];

/// Characters that end a run: URL delimiters and white space.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || "/?&=#;,+\"'<>()[]{}|\\".contains(c)
}

/// The detectors on `text`, and on each run of it that holds `%`
/// escapes, decoded (up to three times: a value encoded twice). A run
/// whose decoded form holds PHI is replaced whole by the redaction token.
pub fn mask_text<'t>(masker: &Masker, text: &'t str) -> Cow<'t, str> {
    let masked = masker.mask_free_text(text);
    if !masked.contains('%') {
        return masked;
    }
    let mut out = String::with_capacity(masked.len());
    let mut changed = false;
    let mut rest: &str = &masked;
    while !rest.is_empty() {
        let end = match rest.find(is_delimiter) {
            // A delimiter: copied as it is.
            Some(0) => rest.chars().next().map_or(1, char::len_utf8),
            Some(i) => i,
            None => rest.len(),
        };
        let (run, tail) = rest.split_at(end);
        if run.contains('%') && encoded_phi(masker, run) {
            out.push_str(masker.redact_token());
            changed = true;
        } else {
            out.push_str(run);
        }
        rest = tail;
    }
    if changed { Cow::Owned(out) } else { masked }
}

fn encoded_phi(masker: &Masker, run: &str) -> bool {
    let mut current = run.to_owned();
    for _ in 0..3 {
        let decoded = decode_lenient(&current);
        if matches!(masker.mask_free_text(&decoded), Cow::Owned(_)) {
            return true;
        }
        if !decoded.contains('%') || decoded == current {
            return false;
        }
        current = decoded;
    }
    false
}

/// A URL (absolute or relative) with the values of its query's search
/// parameters replaced by the redaction token, paging parameters kept;
/// everything through [`mask_text`]. Text that starts as a query does
/// (a `=` before any `/` or `?`: a Bundle entry's `ifNoneExist`,
/// `identifier=...|123`) is read as a bare query.
pub fn mask_search_url<'t>(masker: &Masker, url: &'t str) -> Cow<'t, str> {
    let bare_query = url.find(['/', '?', '=']).is_some_and(|i| url.as_bytes()[i] == b'=');
    let split = if bare_query {
        Some(("", url))
    } else {
        url.split_once('?')
    };
    let Some((base, query)) = split else {
        return mask_text(masker, url);
    };
    // The query ends at a fragment only: whatever else follows (a quote, a
    // space, a `>`) is still the server's query text.
    let end = query.find('#').unwrap_or(query.len());
    let (query, fragment) = (&query[..end], Some(&query[end..]).filter(|f| !f.is_empty()));
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    if !bare_query {
        out.push('?');
    }
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() => {
                out.push_str(name);
                out.push('=');
                let plain = decode(name, true).unwrap_or_default();
                // A paging value is a token: one with room for more (a
                // space, a quote, another `=`) is not kept.
                let token = !value.contains(|c: char| c.is_whitespace() || "\"'<>=".contains(c));
                if token && CONTROL_PARAMS.contains(&plain.as_str()) {
                    out.push_str(value);
                } else {
                    out.push_str(masker.redact_token());
                }
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push_str(f);
    }
    match mask_text(masker, &out) {
        Cow::Borrowed(_) if out == url => Cow::Borrowed(url),
        masked => Cow::Owned(masked.into_owned()),
    }
}

/// A header that may name several URLs in angle brackets (`Link: <u1>;
/// rel="next", <u2>; rel="prev"`): each URL's search values masked
/// ([`mask_search_url`]), the text between them through the detectors.
/// Without brackets the whole value is one URL (`Location`).
pub fn mask_header_urls<'t>(masker: &Masker, value: &'t str) -> Cow<'t, str> {
    // Brackets only where the value is a list of them (`Link`); a `<`
    // elsewhere in a `Location` is part of its URL.
    if !value.trim_start().starts_with('<') {
        return mask_search_url(masker, value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        out.push_str(&mask_text(masker, &rest[..=open]));
        let inner = &rest[open + 1..];
        let close = inner.find('>').unwrap_or(inner.len());
        out.push_str(&mask_search_url(masker, &inner[..close]));
        rest = &inner[close..];
    }
    out.push_str(&mask_text(masker, rest));
    if out == value {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    #[test]
    fn encoded_values_are_found_decoded() {
        let m = masker();
        for (text, want) in [
            ("/fhir/Patient/123%2D45%2D6789", "/fhir/Patient/***"),
            ("?identifier=urn%3Aoid%3A1%7C123%2D45%2D6789&x=1", "?identifier=***&x=1"),
            ("mail jane%40example.org now", "mail *** now"),
            ("twice 123%252D45%252D6789", "twice ***"),
            ("plain 123-45-6789 and 100%", "plain *** and 100%"),
            ("nothing%20here é%", "nothing%20here é%"),
            // A bad escape or a byte that is not UTF-8 next to an encoded
            // identifier does not hide it.
            ("/fhir/Patient/123%2D45%2D6789%zz", "/fhir/Patient/***"),
            ("/fhir/Patient/%FF123%2D45%2D6789", "/fhir/Patient/***"),
        ] {
            assert_eq!(mask_text(&m, text), want, "{text}");
        }
        assert!(matches!(mask_text(&m, "a%20b/c"), Cow::Borrowed(_)));
    }

    #[test]
    fn search_values_are_replaced_and_paging_kept() {
        let m = masker();
        let url = "https://fhir.test/fhir/Patient?name=Zed1&birthdate=1970-01-01&_count=20&_getpages=abc&identifier=123-45-6789#f";
        assert_eq!(
            mask_search_url(&m, url),
            "https://fhir.test/fhir/Patient?name=***&birthdate=***&_count=20&_getpages=abc&identifier=***#f"
        );
        assert_eq!(mask_search_url(&m, "Patient/p1/_history/2"), "Patient/p1/_history/2");
        assert_eq!(mask_search_url(&m, "Patient?flag&_count=1"), "Patient?flag&_count=1");
        let link = r#"<https://fhir.test/Patient?name=Zed&_count=2&_getpages=p2>; rel="next", <https://fhir.test/Patient?name=Zed&_count=2>; rel="self""#;
        assert_eq!(
            mask_header_urls(&m, link),
            r#"<https://fhir.test/Patient?name=***&_count=2&_getpages=p2>; rel="next", <https://fhir.test/Patient?name=***&_count=2>; rel="self""#
        );
        assert!(matches!(
            mask_header_urls(&m, "</fhir/metadata>; rel=\"x\""),
            Cow::Borrowed(_)
        ));
        // A `<`, a quote or a space inside a Location's query hides no value.
        for (location, want) in [
            ("/fhir/Patient?family=Smith<", "/fhir/Patient?family=***"),
            (
                "/fhir/Patient?_count=1\"&family=Smith>",
                "/fhir/Patient?_count=***&family=***",
            ),
            (
                "/fhir/Patient?_getpages=abc-123&_count=20",
                "/fhir/Patient?_getpages=abc-123&_count=20",
            ),
            ("/fhir/Patient?_count=1 family=Smith", "/fhir/Patient?_count=***"),
        ] {
            assert_eq!(mask_header_urls(&m, location), want, "{location}");
        }
        // A conditional create's ifNoneExist is a query with no `?`.
        assert_eq!(
            mask_search_url(&m, "identifier=http://hospital.example/mrn|8812&_count=1"),
            "identifier=***&_count=1"
        );
    }
}
