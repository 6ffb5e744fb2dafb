//! Streaming JSON masking: an incremental tokenizer that rewrites string
//! values as they pass, holding one token (never the document) in memory,
//! so a list of 10 000 resources or an NDJSON export streams through.
//!
//! Two kinds of masking:
//! - **by path**, per resource: a FHIR object whose `resourceType` is
//!   `Patient` (and the other person resources) has its `name`, `telecom`,
//!   `address`, `birthDate`, `identifier[].value`, ... masked whole; a
//!   Kubernetes `Secret` (by `kind`, or any object of a `secrets` response)
//!   has every value under `data` and `stringData` masked;
//! - **by value**: the detectors of [`Masker`] on every other string.
//!
//! Paths are matched relative to the object that names the resource, so
//! resources in a `Bundle`, `contained` or a list are found at any depth.
//! A resource type that arrives after a field its rules mask (the field
//! was already sent) ends the stream with an error: fail closed.
use std::collections::BTreeSet;

use crate::mask::Masker;

use super::{config::Api, url};

/// Longest string value held for inspection; a longer one is replaced
/// whole by the redaction token (masked, counted).
const MAX_STRING: usize = 1 << 20;
/// Longest object key.
const MAX_KEY: usize = 64 * 1024;
const MAX_DEPTH: usize = 512;
/// Kept at most in the audit record's `masked_fields`.
const MAX_FIELD_NAMES: usize = 32;
/// White space held with a held-back `,` (more is dropped).
const MAX_SEPARATOR: usize = 64;
/// `_f` fields tracked per object (past it, duplicates are possible but
/// nothing is left unmasked).
const MAX_TRACKED: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at byte {0}")]
    Syntax(u64),
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("JSON object key longer than {MAX_KEY} bytes")]
    KeyTooLong,
    #[error("a {0} resource names its type after fields that would have been masked")]
    LateResourceType(String),
    #[error("JSON ended inside a value")]
    Truncated,
    #[error("an object names its resource type twice")]
    DuplicateResourceType,
}

/// The path rules of one resource type: each a list of segments (`[]` is
/// any array element); a rule masks everything at and below its path.
struct ResourceRules {
    name: &'static str,
    paths: &'static [&'static [&'static str]],
    /// Strings that are search URLs: their search values are masked
    /// ([`url::mask_search_url`]), the rest of the URL kept.
    urls: &'static [&'static [&'static str]],
}

const PERSON: &[&[&str]] = &[
    &["identifier", "[]", "value"],
    &["name"],
    &["telecom"],
    &["address"],
    &["birthDate"],
    &["contact"],
    &["photo"],
    // The narrative repeats the demographics as XHTML.
    &["text"],
];

/// A Bundle's own links (`self`, `next`: the search, with its values) and
/// its entries' request URLs and locations (a transaction's conditional
/// `Patient?identifier=...`).
const BUNDLE_URLS: &[&[&str]] = &[
    &["link", "[]", "url"],
    &["entry", "[]", "link", "[]", "url"],
    &["entry", "[]", "request", "url"],
    &["entry", "[]", "request", "ifNoneExist"],
    &["entry", "[]", "response", "location"],
];

const FHIR: &[ResourceRules] = &[
    ResourceRules {
        name: "Bundle",
        paths: &[],
        urls: BUNDLE_URLS,
    },
    ResourceRules {
        name: "Patient",
        paths: PERSON,
        urls: &[],
    },
    ResourceRules {
        name: "RelatedPerson",
        paths: PERSON,
        urls: &[],
    },
    ResourceRules {
        name: "Person",
        paths: PERSON,
        urls: &[],
    },
];

/// A Secret's values, and its annotations: `kubectl apply` keeps the whole
/// Secret, data included, in `kubectl.kubernetes.io/last-applied-configuration`.
const SECRET_PATHS: &[&[&str]] = &[&["data"], &["stringData"], &["metadata", "annotations"]];
const SECRET_LIST_PATHS: &[&[&str]] = &[
    &["items", "[]", "data"],
    &["items", "[]", "stringData"],
    &["items", "[]", "metadata", "annotations"],
];
/// A response to a request for `secrets`: the object itself, a list's
/// items, a watch event's object.
const SECRETS_RESPONSE_PATHS: &[&[&str]] = &[
    &["data"],
    &["stringData"],
    &["metadata", "annotations"],
    &["items", "[]", "data"],
    &["items", "[]", "stringData"],
    &["items", "[]", "metadata", "annotations"],
    &["object", "data"],
    &["object", "stringData"],
    &["object", "metadata", "annotations"],
];

const KUBERNETES: &[ResourceRules] = &[
    ResourceRules {
        name: "Secret",
        paths: SECRET_PATHS,
        urls: &[],
    },
    ResourceRules {
        name: "SecretList",
        paths: SECRET_LIST_PATHS,
        urls: &[],
    },
];

/// What a response's JSON is, for its path rules.
#[derive(Clone, Copy, Debug)]
pub struct JsonRules {
    pub api: Api,
    /// The request was for Kubernetes `secrets`: the whole response is
    /// Secret-shaped, whatever `kind` says (list items carry none).
    pub secrets_response: bool,
}

impl JsonRules {
    fn resources(&self) -> &'static [ResourceRules] {
        match self.api {
            Api::Fhir => FHIR,
            Api::Kubernetes => KUBERNETES,
            Api::Json => &[],
        }
    }

    /// The key that names an object's resource type.
    fn type_key(&self) -> Option<&'static [u8]> {
        match self.api {
            Api::Fhir => Some(b"resourceType"),
            Api::Kubernetes => Some(b"kind"),
            Api::Json => None,
        }
    }
}

/// A partly matched rule: which paths, and how many segments are matched.
#[derive(Clone, Copy, Debug)]
struct Partial {
    paths: &'static [&'static [&'static str]],
    /// The paths are search URLs (masked as URLs, not whole).
    url: bool,
    index: usize,
    matched: usize,
}

#[derive(Debug)]
struct Frame {
    object: bool,
    /// The current key (objects).
    key: Vec<u8>,
    /// Rules that may match below this container.
    partial: Vec<Partial>,
    /// Everything below is masked, by this rule (its first segment).
    masked_by: Option<&'static str>,
    /// Rule set name of the resource this object is, once known.
    resource: Option<&'static str>,
    /// A key some resource's rules would mask was passed before the
    /// object's type was known.
    early_phi: bool,
    /// The type key was seen (a second one is refused: parsers differ on
    /// which of two wins).
    typed: bool,
    /// FHIR: members written so far, and the `,` (with the white space
    /// after it, bounded) held back until the next member is written: a
    /// member may be dropped (see `JsonMasker::skip`).
    members: usize,
    separator: Vec<u8>,
    /// FHIR: fields `f` whose `_f` was written as data-absent, and whose
    /// `_f` came in the document: one object never gets two `_f`.
    absent: Vec<Vec<u8>>,
    extended: Vec<Vec<u8>>,
}

impl Frame {
    fn new(object: bool, partial: Vec<Partial>, masked_by: Option<&'static str>) -> Frame {
        Frame {
            object,
            key: Vec::new(),
            partial,
            masked_by,
            resource: None,
            early_phi: false,
            typed: false,
            members: 0,
            separator: Vec::new(),
            absent: Vec::new(),
            extended: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A value may start (top level: also the end of input).
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value: `,` or the container's end.
    AfterValue,
    /// In a string (a key when `key`).
    Str {
        key: bool,
        escape: bool,
    },
    Number,
    Literal,
}

/// One response's JSON masker.
#[derive(Debug)]
pub struct JsonMasker {
    masker: Masker,
    rules: JsonRules,
    redacted: Vec<u8>,
    stack: Vec<Frame>,
    state: State,
    /// The token being read: a string's raw content, a number, a literal.
    token: Vec<u8>,
    /// The string being read is past [`MAX_STRING`] and is dropped.
    overflow: bool,
    /// Whether the value being read is masked by a rule, and by which.
    value_rule: Option<&'static str>,
    /// Whether the string being read is a search URL, by which rule.
    value_url: Option<&'static str>,
    /// A FHIR field (`"birthDate"` and the bytes up to its value) whose
    /// value is masked, not written yet: a date, number or boolean
    /// becomes `_birthDate` with a data-absent-reason instead.
    pending: Option<Vec<u8>>,
    /// A member being dropped (its value not written) in the object at
    /// this depth: a FHIR `_f` whose `f` was already written as
    /// data-absent (two `_f` keys are invalid FHIR).
    skip: Option<usize>,
    position: u64,
    masked: u64,
    fields: BTreeSet<String>,
}

impl JsonMasker {
    pub fn new(masker: Masker, rules: JsonRules) -> JsonMasker {
        let mut redacted = Vec::new();
        push_escaped(masker.redact_token().as_bytes(), &mut redacted);
        JsonMasker {
            masker,
            rules,
            redacted,
            stack: Vec::new(),
            state: State::Value,
            token: Vec::new(),
            overflow: false,
            value_rule: None,
            value_url: None,
            pending: None,
            skip: None,
            position: 0,
            masked: 0,
            fields: BTreeSet::new(),
        }
    }

    /// Values masked so far.
    pub fn masked(&self) -> u64 {
        self.masked
    }

    /// Names of what was masked (`Patient.name`, `detector`), at most a few.
    pub fn masked_fields(&self) -> Vec<String> {
        self.fields.iter().cloned().collect()
    }

    /// Masks the next piece of the document into `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        out.reserve(input.len());
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < input.len() {
            if let Some(depth) = self.skip
                && self.stack.len() == depth
                && self.state == State::AfterValue
            {
                self.skip = None;
            }
            // A dropped member is parsed like any (an error is one) but not written.
            let out: &mut Vec<u8> = if self.skip.is_some() {
                dropped.clear();
                &mut dropped
            } else {
                &mut *out
            };
            let b = input[i];
            match self.state {
                State::Str { key, escape } => {
                    // Copy the run up to the next quote or backslash at once.
                    if !escape {
                        let run = input[i..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                            .unwrap_or(input.len() - i);
                        if run > 0 {
                            self.take(&input[i..i + run], key)?;
                            i += run;
                            self.position += run as u64;
                            continue;
                        }
                    }
                    if b < 0x20 {
                        return Err(JsonError::Syntax(self.position));
                    }
                    if escape {
                        if !matches!(b, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') {
                            return Err(JsonError::Syntax(self.position));
                        }
                        self.take(&[b], key)?;
                        self.state = State::Str { key, escape: false };
                    } else if b == b'\\' {
                        self.take(&[b], key)?;
                        self.state = State::Str { key, escape: true };
                    } else {
                        // The closing quote.
                        self.end_string(key, out)?;
                    }
                }
                State::Number => {
                    if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                        self.push_token(b)?;
                    } else {
                        self.end_scalar(out)?;
                        // Reread this byte after the value.
                        continue;
                    }
                }
                State::Literal => {
                    if b.is_ascii_alphabetic() {
                        self.push_token(b)?;
                    } else {
                        self.end_scalar(out)?;
                        continue;
                    }
                }
                _ => self.structural(b, out)?,
            }
            i += 1;
            self.position += 1;
        }
        Ok(())
    }

    /// The end of the document: anything left open is an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if matches!(self.state, State::Number | State::Literal) {
            self.end_scalar(out)?;
        }
        if self.stack.is_empty() && matches!(self.state, State::Value | State::AfterValue) {
            return Ok(());
        }
        Err(JsonError::Truncated)
    }

    fn push_token(&mut self, b: u8) -> Result<(), JsonError> {
        if self.token.len() >= 64 {
            // No number or literal is this long.
            return Err(JsonError::Syntax(self.position));
        }
        self.token.push(b);
        Ok(())
    }

    fn take(&mut self, bytes: &[u8], key: bool) -> Result<(), JsonError> {
        let limit = if key { MAX_KEY } else { MAX_STRING };
        if self.token.len() + bytes.len() > limit {
            if key {
                return Err(JsonError::KeyTooLong);
            }
            self.overflow = true;
            self.token.clear();
        }
        if !self.overflow {
            self.token.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn structural(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            // White space around a held-back field's colon is dropped:
            // holding it would let a server fill memory with it. After a
            // held-back `,` it is held with it, bounded.
            if self.pending.is_some() {
                return Ok(());
            }
            if let (State::Key, Some(f)) = (self.state, self.stack.last_mut())
                && !f.separator.is_empty()
            {
                if f.separator.len() < MAX_SEPARATOR {
                    f.separator.push(b);
                }
                return Ok(());
            }
            out.push(b);
            return Ok(());
        }
        let syntax = JsonError::Syntax(self.position);
        match (self.state, b) {
            (State::ValueOrEnd, b']') | (State::AfterValue, b']') => self.close(false, out),
            (State::Value | State::ValueOrEnd, _) => self.start_value(b, out),
            (State::KeyOrEnd, b'}') | (State::AfterValue, b'}') => self.close(true, out),
            (State::KeyOrEnd | State::Key, b'"') => {
                self.token.clear();
                self.state = State::Str {
                    key: true,
                    escape: false,
                };
                Ok(())
            }
            (State::Colon, b':') => {
                self.pending.as_mut().unwrap_or(out).push(b);
                self.state = State::Value;
                Ok(())
            }
            (State::AfterValue, b',') => match self.stack.last_mut() {
                Some(f) if f.object => {
                    if self.rules.api == Api::Fhir {
                        f.separator.clear();
                        f.separator.push(b);
                    } else {
                        out.push(b);
                    }
                    self.state = State::Key;
                    Ok(())
                }
                Some(_) => {
                    out.push(b);
                    self.state = State::Value;
                    Ok(())
                }
                None => Err(syntax),
            },
            // Top level: another document (NDJSON, concatenated JSON).
            (State::AfterValue, _) if self.stack.is_empty() => self.start_value(b, out),
            _ => Err(syntax),
        }
    }

    /// Where a value starting now sits: the rules that go on below it, the
    /// rule that masks it whole, and the rule that makes it a search URL.
    fn descend(&self) -> (Vec<Partial>, Option<&'static str>, Option<&'static str>) {
        let Some(parent) = self.stack.last() else {
            let mut partial = Vec::new();
            if self.rules.api == Api::Kubernetes && self.rules.secrets_response {
                partial.extend((0..SECRETS_RESPONSE_PATHS.len()).map(|index| Partial {
                    paths: SECRETS_RESPONSE_PATHS,
                    url: false,
                    index,
                    matched: 0,
                }));
            }
            return (partial, None, None);
        };
        if parent.masked_by.is_some() {
            return (Vec::new(), parent.masked_by, None);
        }
        // `_birthDate` (a primitive's extensions: the birth time...) is
        // masked with `birthDate`.
        let segment: &[u8] = match (parent.object, parent.key.first()) {
            (true, Some(b'_')) if self.rules.api == Api::Fhir => &parent.key[1..],
            (true, _) => &parent.key,
            (false, _) => b"[]",
        };
        let mut partial = Vec::new();
        let mut url = None;
        for p in &parent.partial {
            let path = p.paths[p.index];
            if path.get(p.matched).is_some_and(|s| s.as_bytes() == segment) {
                if p.matched + 1 == path.len() {
                    if p.url {
                        url = Some(path[0]);
                        continue;
                    }
                    return (Vec::new(), Some(path[0]), None);
                }
                partial.push(Partial {
                    matched: p.matched + 1,
                    ..*p
                });
            }
        }
        (partial, None, url)
    }

    fn start_value(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let (partial, rule, url) = self.descend();
        self.value_url = url;
        match b {
            b'{' | b'[' => {
                if let Some(field) = self.pending.take() {
                    self.write_field(&field, out);
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                self.stack.push(Frame::new(b == b'{', partial, rule));
                out.push(b);
                self.state = if b == b'{' { State::KeyOrEnd } else { State::ValueOrEnd };
            }
            b'"' => {
                self.value_rule = rule;
                self.token.clear();
                self.overflow = false;
                self.state = State::Str {
                    key: false,
                    escape: false,
                };
            }
            b'-' | b'0'..=b'9' => {
                self.value_rule = rule;
                self.token.clear();
                self.token.push(b);
                self.state = State::Number;
            }
            b't' | b'f' | b'n' => {
                self.value_rule = rule;
                self.token.clear();
                self.token.push(b);
                self.state = State::Literal;
            }
            _ => return Err(JsonError::Syntax(self.position)),
        }
        Ok(())
    }

    fn close(&mut self, object: bool, out: &mut Vec<u8>) -> Result<(), JsonError> {
        match self.stack.pop() {
            Some(f) if f.object == object => {
                out.push(if object { b'}' } else { b']' });
                self.state = State::AfterValue;
                Ok(())
            }
            _ => Err(JsonError::Syntax(self.position)),
        }
    }

    fn end_string(&mut self, key: bool, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if key {
            let token = std::mem::take(&mut self.token);
            // A key is data too (`{"123-45-6789": ...}`): through the
            // detectors; a masked key is still a string (duplicates are
            // valid JSON).
            let mut written = vec![b'"'];
            self.scan_into(&token, &mut written);
            written.push(b'"');
            // Rules compare keys as they mean, not as they are spelled
            // (`na\u006de` is `name`).
            let key = unescape(&token);
            self.note_key(&key);
            let fhir = self.rules.api == Api::Fhir;
            if let Some(f) = self.stack.last_mut() {
                let separator = std::mem::take(&mut f.separator);
                if fhir && let Some(field) = key.strip_prefix(b"_") {
                    // `f` was masked into a data-absent `_f`: this `_f` goes.
                    if f.absent.iter().any(|a| a.as_slice() == field) {
                        f.key = key;
                        self.skip = Some(self.stack.len());
                        self.token = token;
                        self.token.clear();
                        self.state = State::Colon;
                        return Ok(());
                    }
                    if f.extended.len() < MAX_TRACKED {
                        f.extended.push(field.to_vec());
                    }
                }
                if f.members > 0 {
                    written.splice(0..0, separator);
                }
                f.key = key;
            }
            // FHIR: a field whose value is masked is held back until the
            // value shows whether it must become `_field` (see `absent`).
            if fhir && self.descend().1.is_some() {
                self.pending = Some(written);
            } else {
                self.write_field(&written, out);
            }
            self.token = token;
            self.token.clear();
            self.state = State::Colon;
            return Ok(());
        }
        let token = std::mem::take(&mut self.token);
        self.resource_type(&unescape(&token))?;
        if let Some(field) = self.pending.take() {
            match self.value_rule {
                Some(rule) if looks_like_date(&token) => {
                    self.write_absent(&field, out);
                    self.value_rule = None;
                    self.count(rule);
                    self.token = token;
                    self.token.clear();
                    self.overflow = false;
                    self.state = State::AfterValue;
                    return Ok(());
                }
                _ => self.write_field(&field, out),
            }
        }
        out.push(b'"');
        if let Some(rule) = self.value_rule.take() {
            out.extend_from_slice(&self.redacted);
            self.count(rule);
        } else if self.overflow {
            out.extend_from_slice(&self.redacted);
            self.count("oversized");
        } else if let Some(rule) = self.value_url.take() {
            self.url_into(&token, rule, out);
        } else {
            self.scan_into(&token, out);
        }
        out.push(b'"');
        self.token = token;
        self.token.clear();
        self.overflow = false;
        self.state = State::AfterValue;
        Ok(())
    }

    /// A key was read: notes a key a resource rule would mask arriving in
    /// an object whose type is not known yet.
    fn note_key(&mut self, key: &[u8]) {
        let resources = self.rules.resources();
        let Some(frame) = self.stack.last_mut() else { return };
        if frame.resource.is_none()
            && frame.masked_by.is_none()
            && resources
                .iter()
                .any(|r| r.paths.iter().chain(r.urls).any(|p| p[0].as_bytes() == key))
        {
            frame.early_phi = true;
        }
    }

    /// A string value under the type key (`resourceType`, `kind`) names the
    /// object's resource: its rules apply to the keys that follow.
    fn resource_type(&mut self, value: &[u8]) -> Result<(), JsonError> {
        let (Some(type_key), resources) = (self.rules.type_key(), self.rules.resources()) else {
            return Ok(());
        };
        let Some(frame) = self.stack.last_mut() else {
            return Ok(());
        };
        if !frame.object || frame.key != type_key || frame.masked_by.is_some() {
            return Ok(());
        }
        if frame.typed {
            return Err(JsonError::DuplicateResourceType);
        }
        frame.typed = true;
        let Some(rules) = resources.iter().find(|r| r.name.as_bytes() == value) else {
            return Ok(());
        };
        if frame.early_phi {
            return Err(JsonError::LateResourceType(rules.name.to_owned()));
        }
        frame.resource = Some(rules.name);
        frame.partial.extend((0..rules.paths.len()).map(|index| Partial {
            paths: rules.paths,
            url: false,
            index,
            matched: 0,
        }));
        frame.partial.extend((0..rules.urls.len()).map(|index| Partial {
            paths: rules.urls,
            url: true,
            index,
            matched: 0,
        }));
        Ok(())
    }

    /// A string through the detectors, as it decodes (escapes resolved,
    /// so `\u0031\u0032\u0033-45-6789` is seen as an SSN; percent-escapes
    /// too, see [`url::mask_text`]). Unchanged, it goes out as it came;
    /// changed, re-encoded.
    fn scan_into(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let decoded = unescape(raw);
        let Ok(text) = std::str::from_utf8(&decoded) else {
            out.extend_from_slice(&self.redacted);
            self.count("detector");
            return;
        };
        match url::mask_text(&self.masker, text) {
            std::borrow::Cow::Borrowed(_) => out.extend_from_slice(raw),
            std::borrow::Cow::Owned(masked) => {
                push_escaped(masked.as_bytes(), out);
                self.count("detector");
            }
        }
    }

    /// A search URL with its values masked ([`url::mask_search_url`]).
    fn url_into(&mut self, raw: &[u8], rule: &'static str, out: &mut Vec<u8>) {
        let decoded = unescape(raw);
        let Ok(text) = std::str::from_utf8(&decoded) else {
            out.extend_from_slice(&self.redacted);
            self.count(rule);
            return;
        };
        match url::mask_search_url(&self.masker, text) {
            std::borrow::Cow::Borrowed(_) => out.extend_from_slice(raw),
            std::borrow::Cow::Owned(masked) => {
                push_escaped(masked.as_bytes(), out);
                self.count(rule);
            }
        }
    }

    fn end_scalar(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let token = std::mem::take(&mut self.token);
        let valid = match self.state {
            State::Number => valid_number(&token),
            _ => matches!(token.as_slice(), b"true" | b"false" | b"null"),
        };
        if !valid {
            return Err(JsonError::Syntax(self.position));
        }
        self.value_url = None;
        // Numbers and booleans under a masked path become the token, a
        // string (JSON stays valid; a client expecting a number fails
        // loudly instead of reading a made-up 0); null says nothing and
        // stays. Other numbers go through the detectors (a card number,
        // an MRN pattern of digits) and become the token on a hit.
        let detected = self.state == State::Number
            && std::str::from_utf8(&token)
                .is_ok_and(|t| matches!(self.masker.mask_free_text(t), std::borrow::Cow::Owned(_)));
        let pending = self.pending.take();
        match self.value_rule.take() {
            // FHIR: a masked number or boolean field is absent, said so.
            Some(rule) if token != b"null" && pending.is_some() => {
                self.write_absent(pending.as_deref().unwrap_or_default(), out);
                self.count(rule);
            }
            _ if pending.is_some() => {
                self.write_field(pending.as_deref().unwrap_or_default(), out);
                self.end_unmasked_scalar(&token, detected, out);
            }
            Some(rule) if token != b"null" => {
                out.push(b'"');
                out.extend_from_slice(&self.redacted);
                out.push(b'"');
                self.count(rule);
            }
            _ => self.end_unmasked_scalar(&token, detected, out),
        }
        self.token = token;
        self.token.clear();
        self.state = State::AfterValue;
        Ok(())
    }

    fn end_unmasked_scalar(&mut self, token: &[u8], detected: bool, out: &mut Vec<u8>) {
        if detected {
            out.push(b'"');
            out.extend_from_slice(&self.redacted);
            out.push(b'"');
            self.count("detector");
        } else {
            out.extend_from_slice(token);
        }
    }

    /// Writes a member's key (and what came before its value), counting it.
    fn write_field(&mut self, field: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(field);
        if let Some(f) = self.stack.last_mut() {
            f.members += 1;
        }
    }

    /// Writes a held-back field as its data-absent `_f`, unless the object
    /// already had its own `_f` (masked with `f`): then the member goes.
    fn write_absent(&mut self, field: &[u8], out: &mut Vec<u8>) {
        let Some(f) = self.stack.last_mut() else {
            return absent(field, out);
        };
        if f.extended.contains(&f.key) {
            return;
        }
        absent(field, out);
        f.members += 1;
        if f.absent.len() < MAX_TRACKED {
            f.absent.push(f.key.clone());
        }
    }

    fn count(&mut self, rule: &str) {
        self.masked += 1;
        if self.fields.len() < MAX_FIELD_NAMES && !self.fields.contains(rule) {
            let resource = self.stack.iter().rev().find_map(|f| f.resource);
            let name = match resource {
                Some(r) if !matches!(rule, "detector" | "oversized") => format!("{r}.{rule}"),
                _ => rule.to_owned(),
            };
            self.fields.insert(name);
        }
    }
}

/// FHIR's data-absent-reason, code `masked`: what a masked date, number
/// or boolean field becomes, as the primitive's extension (`_field`), so
/// the resource still validates (a strict client rejects `"birthDate":
/// "***"`).
const DATA_ABSENT_MASKED: &[u8] =
    br#"{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"masked"}]}"#;

/// `,<ws>"field"<ws>:<ws>` written as `,<ws>"_field"<ws>:<ws>` and the
/// extension.
fn absent(field: &[u8], out: &mut Vec<u8>) {
    let quote = field.iter().position(|&b| b == b'"').unwrap_or(0);
    out.extend_from_slice(&field[..quote]);
    out.extend_from_slice(b"\"_");
    out.extend_from_slice(field.get(quote + 1..).unwrap_or_default());
    out.extend_from_slice(DATA_ABSENT_MASKED);
}

/// A FHIR date, dateTime, instant or time as written (`1970`, `1970-01`,
/// `1970-01-01T10:00:00+01:00`, `10:00:00`): not a string a client would
/// accept `***` for.
fn looks_like_date(raw: &[u8]) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let time = |t: &[u8]| {
        // hh:mm[:ss[.f+]] then Z, ±hh:mm or nothing.
        let (clock, zone) = match t.iter().position(|b| matches!(b, b'Z' | b'+' | b'-')) {
            Some(i) => (&t[..i], &t[i..]),
            None => (t, &b""[..]),
        };
        let zone_ok = match zone {
            b"" | b"Z" => true,
            [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
            _ => false,
        };
        let mut parts = clock.split(|b| *b == b':');
        let ok = [parts.next(), parts.next()]
            .iter()
            .all(|p| p.is_some_and(|p| p.len() == 2 && digits(p)));
        let seconds_ok = parts.next().is_none_or(|sec| {
            let (whole, frac) = sec.split_at(sec.iter().position(|b| *b == b'.').unwrap_or(sec.len()));
            whole.len() == 2 && digits(whole) && (frac.is_empty() || digits(&frac[1..]))
        });
        ok && seconds_ok && parts.next().is_none() && zone_ok
    };
    let (date, clock) = match raw.iter().position(|b| *b == b'T') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let mut fields = date.split(|b| *b == b'-');
    let year = fields.next().is_some_and(|y| y.len() == 4 && digits(y));
    let rest: Vec<&[u8]> = fields.collect();
    let date_ok = year && rest.len() <= 2 && rest.iter().all(|f| f.len() == 2 && digits(f));
    match clock {
        None => date_ok || (raw.len() >= 5 && raw.get(2) == Some(&b':') && time(raw)),
        Some(t) => date_ok && rest.len() == 2 && time(t),
    }
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn valid_number(token: &[u8]) -> bool {
    let mut i = usize::from(token.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while token.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match token.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if token.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(token.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(token.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == token.len()
}

/// A JSON string's content with its escapes resolved (invalid ones and
/// lone surrogates become U+FFFD): what a key or a type name means.
fn unescape(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let simple = match raw.get(i + 1) {
            Some(b'n') => Some(b'\n'),
            Some(b't') => Some(b'\t'),
            Some(b'r') => Some(b'\r'),
            Some(b'b') => Some(8),
            Some(b'f') => Some(12),
            Some(&c) if c != b'u' => Some(c),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let hex = raw
            .get(i + 2..i + 6)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        let c = hex.and_then(char::from_u32).unwrap_or('\u{fffd}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        i += 6;
    }
    out
}

fn push_escaped(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskConfig;
    use serde_json::{Value, json};

    fn masker() -> Masker {
        Masker::new(&MaskConfig::default(), None).unwrap()
    }

    fn run(api: Api, secrets: bool, input: &[u8], chunk: usize) -> Result<(String, JsonMasker), JsonError> {
        let mut m = JsonMasker::new(
            masker(),
            JsonRules {
                api,
                secrets_response: secrets,
            },
        );
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            m.feed(piece, &mut out)?;
        }
        m.finish(&mut out)?;
        Ok((String::from_utf8(out).unwrap(), m))
    }

    /// A Patient as FHIR servers write it: `resourceType` first (the
    /// `json!` macro would sort the keys).
    fn patient(id: u32) -> String {
        format!(
            r#"{{"resourceType":"Patient","id":"p{id}","text":{{"status":"generated","div":"<div>Jane Doe</div>"}},
"identifier":[{{"system":"urn:mrn","value":"MRN{id:06}"}}],"name":[{{"family":"Doe","given":["Jane","Q"]}}],
"telecom":[{{"system":"phone","value":"555-867-5309"}}],"gender":"female","birthDate":"1970-01-01",
"address":[{{"line":["1 Main St"],"city":"Springfield","postalCode":"12345"}}],
"extension":[{{"url":"ssn","valueString":"note: ssn 123-45-6789"}}],"active":true,"multipleBirthInteger":1}}"#
        )
    }

    #[test]
    fn fhir_patients_in_a_bundle_are_masked_by_path_in_any_chunking() {
        let input = format!(
            r#"{{"resourceType": "Bundle", "type": "searchset", "total": 2,
  "entry": [{{"resource": {}}}, {{"resource": {}}},
            {{"resource": {{"resourceType": "Observation", "id": "o1", "text": {{"div": "glucose"}},
                          "code": {{"text": "Glucose"}}, "valueQuantity": {{"value": 5.4}}}}}}]}}"#,
            patient(1),
            patient(2)
        )
        .into_bytes();
        let mut first = None;
        for chunk in [1, 2, 3, 7, 64, input.len()] {
            let (out, m) = run(Api::Fhir, false, &input, chunk).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            let p = &v["entry"][0]["resource"];
            assert_eq!(p["id"], "p1");
            assert_eq!(p["gender"], "female");
            assert_eq!(p["identifier"][0]["system"], "urn:mrn");
            assert_eq!(p["identifier"][0]["value"], "***");
            assert_eq!(p["name"][0], json!({"family": "***", "given": ["***", "***"]}));
            assert_eq!(p["telecom"][0]["value"], "***");
            assert!(p.get("birthDate").is_none(), "{p}");
            assert_eq!(p["_birthDate"]["extension"][0]["valueCode"], "masked");
            assert_eq!(p["address"][0]["city"], "***");
            assert_eq!(p["text"]["div"], "***");
            assert_eq!(p["active"], true);
            assert_eq!(p["extension"][0]["valueString"], "note: ssn ***");
            let o = &v["entry"][2]["resource"];
            assert_eq!(o["text"]["div"], "glucose");
            assert_eq!(o["valueQuantity"]["value"], 5.4);
            for raw in [
                "Doe",
                "Jane",
                "MRN000001",
                "1970-01-01",
                "123-45-6789",
                "555-867-5309",
                "Main St",
            ] {
                assert!(!out.contains(raw), "{raw} in {out}");
            }
            let fields = m.masked_fields();
            assert!(fields.contains(&"Patient.name".to_owned()), "{fields:?}");
            assert!(fields.contains(&"detector".to_owned()), "{fields:?}");
            match &first {
                None => first = Some((out, m.masked())),
                Some((o, n)) => {
                    assert_eq!(&out, o, "chunk {chunk}");
                    assert_eq!(m.masked(), *n);
                }
            }
        }
    }

    #[test]
    fn escaped_keys_and_types_mean_what_they_decode_to() {
        let input = br#"{"resourceType":"Pat\u0069ent","na\u006de":[{"family":"Doe"}]}"#;
        let (out, _) = run(Api::Fhir, false, input, 3).unwrap();
        assert!(!out.contains("Doe"), "{out}");
    }

    #[test]
    fn a_second_resource_type_fails_closed() {
        let input = br#"{"resourceType":"Observation","resourceType":"Patient","name":"Doe"}"#;
        assert_eq!(
            run(Api::Fhir, false, input, 5).unwrap_err(),
            JsonError::DuplicateResourceType
        );
    }

    #[test]
    fn output_follows_input_without_holding_the_document() {
        let mut m = JsonMasker::new(
            masker(),
            JsonRules {
                api: Api::Fhir,
                secrets_response: false,
            },
        );
        let mut out = Vec::new();
        m.feed(br#"{"resourceType":"Bundle","entry":["#, &mut out).unwrap();
        let one = format!(r#"{{"resource":{}}},"#, patient(7).replace('\n', ""));
        for _ in 0..2000 {
            let before = out.len();
            m.feed(one.as_bytes(), &mut out).unwrap();
            // Each resource comes out as it goes in (masked, so shorter).
            assert!(out.len() - before > one.len() / 2);
        }
        assert!(m.token.capacity() < 4096, "{}", m.token.capacity());
        m.feed(b"{}]}", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(m.masked() as usize, 2000 * 13);
    }

    #[test]
    fn whitespace_and_layout_are_kept() {
        let input = br#"{ "resourceType" : "Observation" , "a" : [ 1 , 2.5e3 , -0 , true , null ] }"#;
        let (out, m) = run(Api::Fhir, false, input, 5).unwrap();
        assert_eq!(out.as_bytes(), input);
        assert_eq!(m.masked(), 0);
    }

    #[test]
    fn a_late_resource_type_fails_closed() {
        let input = br#"{"name": [{"family": "Doe"}], "resourceType": "Patient"}"#;
        assert_eq!(
            run(Api::Fhir, false, input, 4).unwrap_err(),
            JsonError::LateResourceType("Patient".into())
        );
        // Not a person resource: nothing to mask by path, nothing refused.
        let input = br#"{"name": "HbA1c", "resourceType": "Medication"}"#;
        assert!(run(Api::Fhir, false, input, 4).is_ok());
    }

    #[test]
    fn kubernetes_secrets_are_masked_by_kind_and_by_request() {
        let secret = br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db"},"data":{"password":"aHVudGVyMg==","n":5},"type":"Opaque"}"#;
        let (out, _) = run(Api::Kubernetes, false, secret, 3).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["data"], json!({"password": "***", "n": "***"}));
        assert_eq!(v["metadata"]["name"], "db");
        // A list's items carry no kind: the request said secrets.
        let list = br#"{"kind":"SecretList","items":[{"metadata":{"name":"a"},"stringData":{"k":"v1"}}]}"#;
        let (out, _) = run(Api::Kubernetes, true, list, 2).unwrap();
        assert!(out.contains(r#""stringData":{"k":"***"}"#), "{out}");
        let (out, _) = run(Api::Kubernetes, false, list, 2).unwrap();
        assert!(out.contains(r#""stringData":{"k":"***"}"#), "by SecretList: {out}");
        // A ConfigMap's values are only scanned.
        let cm = br#"{"kind":"ConfigMap","data":{"mode":"fast","contact":"ssn 123-45-6789"}}"#;
        let (out, _) = run(Api::Kubernetes, false, cm, 2).unwrap();
        assert!(out.contains(r#""mode":"fast""#) && out.contains("ssn ***"), "{out}");
    }

    #[test]
    fn ndjson_streams_line_by_line() {
        let mut input = Vec::new();
        for i in 0..3 {
            input.extend(patient(i).replace('\n', "").into_bytes());
            input.push(b'\n');
        }
        let (out, m) = run(Api::Fhir, false, &input, 10).unwrap();
        assert_eq!(out.lines().count(), 3);
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["_birthDate"]["extension"][0]["valueCode"], "masked");
        }
        assert!(m.masked() >= 3 * 9);
    }

    #[test]
    fn escapes_and_unicode_stay_valid() {
        let input = "{\"a\":\"line\\nbreak \\\"q\\\" \\u00e9 é ✓\",\"b\":\"\\u0031\\u0032\\u0033-45-6789\"}";
        let (out, _) = run(Api::Json, false, input.as_bytes(), 3).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["a"], "line\nbreak \"q\" é é ✓");
        assert_eq!(v["b"], "***", "{out}");
        // Untouched strings go out as they came, escapes and all.
        assert!(out.contains(r#"\"q\" \u00e9"#), "{out}");
    }

    #[test]
    fn invalid_and_truncated_documents_are_errors() {
        for bad in [
            &b"{\"a\" 1}"[..],
            b"[1,]",
            b"{\"a\":tru}",
            b"[01]",
            b"{\"a\":\"x\ny\"}",
            b"]",
            b"{\"a\":1]",
            b"\"\\q\"",
        ] {
            assert!(
                run(Api::Json, false, bad, 2).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            run(Api::Json, false, b"{\"a\":[1,2", 2).unwrap_err(),
            JsonError::Truncated
        );
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(
            run(Api::Json, false, deep.as_bytes(), 64).unwrap_err(),
            JsonError::TooDeep
        );
    }

    #[test]
    fn oversized_strings_are_replaced_whole() {
        let big = format!("[\"{}\", 1]", "x".repeat(MAX_STRING + 10));
        let (out, m) = run(Api::Json, false, big.as_bytes(), 4096).unwrap();
        assert_eq!(out, "[\"***\", 1]");
        assert_eq!(m.masked(), 1);
    }

    #[test]
    fn keys_and_bare_numbers_go_through_the_detectors() {
        let input = br#"{"resourceType":"Observation","note":{"123-45-6789":"x","ok":1},"card":4111111111111111,"n":5.4,"mrn":123456789}"#;
        let (out, m) = run(Api::Fhir, false, input, 3).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(
            !out.contains("123-45-6789") && !out.contains("4111111111111111"),
            "{out}"
        );
        assert_eq!(v["note"]["***"], "x");
        assert_eq!(v["note"]["ok"], 1);
        assert_eq!(v["card"], "***");
        assert_eq!(v["n"], 5.4);
        // Nine bare digits are no detector's (an SSN has its dashes).
        assert_eq!(v["mrn"], 123456789);
        assert_eq!(m.masked(), 2);
        // An escaped key is scanned as it decodes.
        let (out, _) = run(Api::Json, false, br#"{"\u0031\u0032\u0033-45-6789":1}"#, 2).unwrap();
        assert_eq!(out, r#"{"***":1}"#);
    }

    #[test]
    fn numbers_and_booleans_at_masked_paths_become_the_token() {
        // Outside FHIR (whose fields become data-absent, below): a string.
        let input = br#"{"kind":"Secret","data":{"pin":1234,"on":true,"off":null,"list":[5,false]},"spec":{"n":1}}"#;
        let (out, _) = run(Api::Kubernetes, false, input, 4).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["data"],
            json!({"pin": "***", "on": "***", "off": null, "list": ["***", "***"]})
        );
        assert_eq!(v["spec"]["n"], 1);
    }

    #[test]
    fn bundle_search_urls_lose_their_values() {
        let input = br#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"https://f/fhir/Patient?identifier=123-45-6789&name=Zed&_count=2"},{"relation":"next","url":"https://f/fhir?_getpages=abc&_getpagesoffset=2&_count=2"}],"entry":[{"fullUrl":"https://f/fhir/Patient/p1","request":{"method":"PUT","url":"Patient?identifier=urn%3Aoid%3A1%7CMRN1"},"response":{"location":"Patient/p1/_history/1"}}]}"#;
        for chunk in [1, 5, input.len()] {
            let (out, m) = run(Api::Fhir, false, input, chunk).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                v["link"][0]["url"],
                "https://f/fhir/Patient?identifier=***&name=***&_count=2"
            );
            assert_eq!(
                v["link"][1]["url"],
                "https://f/fhir?_getpages=abc&_getpagesoffset=2&_count=2"
            );
            assert_eq!(v["entry"][0]["request"]["url"], "Patient?identifier=***");
            assert_eq!(v["entry"][0]["response"]["location"], "Patient/p1/_history/1");
            assert_eq!(v["entry"][0]["fullUrl"], "https://f/fhir/Patient/p1");
            assert!(
                m.masked_fields().contains(&"Bundle.link".to_owned()),
                "{:?}",
                m.masked_fields()
            );
        }
    }

    #[test]
    fn a_masked_primitive_and_its_own_extensions_give_one_underscore_field() {
        let birth_time = r#"{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-01-01T10:00:00Z"}]}"#;
        let layouts = [
            // The primitive first (as FHIR serializers write it), then its `_f`.
            format!(
                r#"{{"resourceType":"Patient","birthDate":"1970-01-01","_birthDate":{birth_time},"gender":"female"}}"#
            ),
            // `_f` first; the primitive last.
            format!(
                r#"{{"resourceType":"Patient","_birthDate":{birth_time},"gender":"female","birthDate":"1970-01-01"}}"#
            ),
            // Pretty-printed, `_f` last, a number's `_f` too.
            format!(
                "{{\n  \"resourceType\": \"Patient\",\n  \"gender\": \"female\",\n  \"birthDate\": \"1970-01-01\" ,\n  \"_birthDate\": {birth_time}\n}}"
            ),
            format!(
                r#"{{"resourceType":"Patient","_birthDate":{birth_time},"birthDate":"1970-01-01","gender":"female"}}"#
            ),
        ];
        for input in &layouts {
            for chunk in [1, 2, 7, input.len()] {
                let (out, masker) = run(Api::Fhir, false, input.as_bytes(), chunk).unwrap();
                let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
                assert_eq!(out.matches("\"_birthDate\"").count(), 1, "{input}\n{out}");
                assert!(v.get("birthDate").is_none(), "{out}");
                assert_eq!(v["gender"], "female", "{out}");
                assert!(!out.contains("1970") && !out.contains("10:00"), "{out}");
                assert!(masker.masked() >= 1);
            }
        }
        // The layout around what stays is kept.
        let (out, _) = run(Api::Fhir, false, layouts[2].as_bytes(), 5).unwrap();
        assert!(
            out.starts_with("{\n  \"resourceType\": \"Patient\",\n  \"gender\": \"female\",\n  \"_birthDate\""),
            "{out}"
        );
        // Elsewhere the same key in two objects is no duplicate.
        let two = br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","birthDate":"1970"}},{"resource":{"resourceType":"Patient","birthDate":"1980"}}]}"#;
        let (out, _) = run(Api::Fhir, false, two, 3).unwrap();
        assert_eq!(out.matches("\"_birthDate\"").count(), 2, "{out}");
        serde_json::from_str::<Value>(&out).unwrap();
    }

    #[test]
    fn fhir_dates_numbers_and_booleans_masked_become_data_absent() {
        let input = br#"{"resourceType":"Patient","birthDate" : "1970-01-01","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-01-01T10:00:00Z"}]},"name":[{"family":"Doe","period":{"start":"2001-02-03T04:05:06+01:00"}}],"telecom":[{"value":"555-867-5309","rank":1,"x":true}],"identifier":[{"value":"123-45-6789"}],"gender":"female"}"#;
        for chunk in [1, 3, input.len()] {
            let (out, _) = run(Api::Fhir, false, input, chunk).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            let absent = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}]});
            assert!(v.get("birthDate").is_none(), "{out}");
            assert!(out.contains(r#""_birthDate":{"extension""#), "{out}");
            assert!(!out.contains("1970") && !out.contains("10:00"), "{out}");
            assert_eq!(v["name"][0]["family"], "***");
            assert_eq!(v["name"][0]["period"]["_start"], absent);
            assert_eq!(v["telecom"][0], json!({"value": "***", "_rank": absent, "_x": absent}));
            assert_eq!(v["identifier"][0]["value"], "***");
            assert_eq!(v["gender"], "female");
        }
        for (date, yes) in [
            (&b"1970"[..], true),
            (b"1970-01", true),
            (b"1970-01-01", true),
            (b"1970-01-01T10:00:00.123-05:00", true),
            (b"10:00:00", true),
            (b"123-45-6789", false),
            (b"555-867-5309", false),
            (b"12345", false),
            (b"1970-01T10:00", false),
        ] {
            assert_eq!(looks_like_date(date), yes, "{}", String::from_utf8_lossy(date));
        }
    }
}
