//! loopgate's own answers (refusals, holds that ended unapproved, upstream
//! failures) in the shape each API's clients understand: a FHIR
//! `OperationOutcome`, a Kubernetes `Status` (which kubectl prints), or a
//! plain JSON error.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::config::Api;

/// An answer from loopgate itself with `status` and `message`.
pub fn answer(api: Api, status: StatusCode, message: &str) -> Response<Bytes> {
    let (content_type, body) = match api {
        Api::Fhir => (
            "application/fhir+json",
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "error",
                    "code": fhir_code(status),
                    "diagnostics": message,
                }],
            }),
        ),
        Api::Kubernetes => (
            "application/json",
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": kubernetes_reason(status),
                "code": status.as_u16(),
            }),
        ),
        Api::Json => (
            "application/json",
            json!({"error": {"code": status.as_u16(), "message": message}}),
        ),
    };
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"loopgate\""),
        );
    }
    response
}

/// FHIR's issue type for an HTTP status (<https://hl7.org/fhir/valueset-issue-type.html>).
fn fhir_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 => "not-found",
        501 => "not-supported",
        502..=504 => "transient",
        _ => "processing",
    }
}

/// Kubernetes' `StatusReason` for an HTTP status.
fn kubernetes_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(r.body()).unwrap()
    }

    #[test]
    fn each_api_gets_its_own_shape() {
        let r = answer(Api::Fhir, StatusCode::FORBIDDEN, "loopgate: request refused");
        assert_eq!(r.status(), 403);
        let b = body(&r);
        assert_eq!(b["resourceType"], "OperationOutcome");
        assert_eq!(b["issue"][0]["code"], "forbidden");
        assert_eq!(b["issue"][0]["diagnostics"], "loopgate: request refused");
        let b = body(&answer(Api::Kubernetes, StatusCode::FORBIDDEN, "no"));
        assert_eq!(
            (b["kind"].as_str(), b["reason"].as_str(), b["code"].as_u64()),
            (Some("Status"), Some("Forbidden"), Some(403))
        );
        let r = answer(Api::Json, StatusCode::UNAUTHORIZED, "token");
        assert_eq!(body(&r)["error"]["code"], 401);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
