//! A Kubernetes write's body (the object, the patch, DeleteOptions) read
//! for the decision, as the API server will decode it: JSON as it is,
//! protobuf (what kubectl's `create deployment`, `create job`, `create
//! token` send) through the API's own schema.
use super::protobuf;
use crate::{policy::KubernetesRequest, protocols::http::canonical::Ambiguous};

/// The most of a write's body read for the decision: the API server's own
/// default bound (`--max-request-body-bytes`, 3 MiB).
pub const MAX_BODY: usize = 3 << 20;

/// The media type kubectl's typed clients send objects in.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Whether the request's body is the API's to decode (an object, a patch,
/// DeleteOptions) and so the policy's to read. A `proxy` body is the
/// proxied service's; exec, attach and port-forward carry streams.
pub fn reads_body(request: &KubernetesRequest) -> bool {
    matches!(
        request.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// A write's body as the API server decodes it, for `input.action`: its
/// JSON value and media type, `(None, None)` when there is none. A body
/// the policy cannot read the way the server will (CBOR, YAML that is not
/// JSON, a compressed one, a type or field the schema does not know) is
/// refused, never sent unread.
pub fn read_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    bytes: &[u8],
) -> Result<(Option<serde_json::Value>, Option<String>), Ambiguous> {
    if bytes.is_empty() {
        return Ok((None, None));
    }
    if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
        return Err("a Kubernetes request body with a Content-Encoding is not read");
    }
    // No Content-Type: the API server decodes its first media type, JSON.
    let media = content_type
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_else(|| "application/json".to_owned());
    let value = match media.as_str() {
        "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => {
            serde_json::from_slice(bytes).map_err(|_| "the Kubernetes request body is not valid JSON")?
        }
        // YAML is read when it is JSON (what kubectl's apply sends).
        "application/yaml" | "application/apply-patch+yaml" => serde_json::from_slice(bytes)
            .map_err(|_| "a YAML Kubernetes request body is read only when it is JSON (as kubectl sends it)")?,
        PROTOBUF => protobuf::to_json(bytes)?,
        _ => return Err("a Kubernetes request body is read as JSON or protobuf only (not CBOR)"),
    };
    Ok((Some(value), Some(media)))
}

#[cfg(test)]
mod tests {
    use super::{super::tests::p, *};

    fn read(
        method: &str,
        path: &str,
        content_type: Option<&str>,
        encoding: Option<&str>,
        body: &[u8],
    ) -> Result<(Option<serde_json::Value>, Option<String>), Ambiguous> {
        assert!(reads_body(&p(method, path).unwrap()));
        read_body(content_type, encoding, body)
    }

    const PODS: &str = "/api/v1/namespaces/x/pods";

    #[test]
    fn write_bodies_are_read_as_the_api_server_decodes_them() {
        let pod = br#"{"kind":"Pod","spec":{"hostNetwork":true}}"#;
        let (body, media) = read("POST", PODS, Some("application/json; charset=utf-8"), None, pod).unwrap();
        assert_eq!(body.unwrap()["spec"]["hostNetwork"], true);
        assert_eq!(media.as_deref(), Some("application/json"));
        // No Content-Type: the server's first media type, JSON.
        let (_, media) = read("POST", PODS, None, Some("identity"), pod).unwrap();
        assert_eq!(media.as_deref(), Some("application/json"));
        let patch = br#"[{"op":"add","path":"/spec/hostPID","value":true}]"#;
        let pod_path = "/api/v1/namespaces/x/pods/p";
        let (body, media) = read("PATCH", pod_path, Some("Application/JSON-Patch+JSON"), None, patch).unwrap();
        assert_eq!(body.unwrap()[0]["path"], "/spec/hostPID");
        assert_eq!(media.as_deref(), Some("application/json-patch+json"));
        // kubectl apply --server-side sends JSON as apply-patch+yaml.
        let (body, _) = read("PATCH", pod_path, Some("application/apply-patch+yaml"), None, pod).unwrap();
        assert!(body.is_some());
        assert_eq!(
            read("POST", PODS, Some("application/json"), None, b"").unwrap(),
            (None, None)
        );
    }

    #[test]
    fn bodies_loopgate_cannot_read_as_the_server_does_are_refused() {
        for (content_type, encoding, body) in [
            (Some("application/cbor"), None, &b"\xd9\xd9\xf7"[..]),
            (
                Some("application/yaml"),
                None,
                b"kind: Pod\nspec:\n  hostNetwork: true\n",
            ),
            (Some("application/json"), Some("gzip"), b"{}"),
            (Some("application/json"), None, b"{\"kind\":\"Pod\"} trailing"),
            (Some("application/json"), None, b"{\"name\":\"\xff\"}"),
            (None, None, b"{\"spec\":"),
            (Some(PROTOBUF), None, b"k8s\0\xff\xff"),
        ] {
            for (method, path) in [("POST", PODS), ("PATCH", "/apis/apps/v1/namespaces/x/deployments/d")] {
                assert!(
                    read(method, path, content_type, encoding, body).is_err(),
                    "{content_type:?} {body:?}"
                );
            }
        }
    }

    #[test]
    fn only_writes_read_their_bodies() {
        for (method, path, reads) in [
            ("POST", PODS, true),
            ("PATCH", "/apis/apps/v1/namespaces/x/deployments/d", true),
            ("PUT", "/api/v1/namespaces/x/pods/p/status", true),
            ("DELETE", PODS, true),
            ("POST", "/api/v1/namespaces/x/serviceaccounts/b/token", true),
            ("GET", PODS, false),
            ("POST", "/api/v1/namespaces/x/pods/p/exec", false),
            ("POST", "/api/v1/namespaces/x/services/s/proxy/upload", false),
        ] {
            assert_eq!(reads_body(&p(method, path).unwrap()), reads, "{method} {path}");
        }
    }
}
