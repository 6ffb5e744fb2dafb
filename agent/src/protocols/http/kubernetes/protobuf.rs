//! Kubernetes' protobuf encoding read as the JSON the policy reads: the
//! `k8s\0` magic, then a `runtime.Unknown` whose `typeMeta` names the kind
//! and whose `raw` is the object
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding>).
//! The schema is the API's own `generated.proto` files (`agent/proto`,
//! Kubernetes 1.35), compiled at build time; their field names are the
//! JSON names, so a rule reads `hostNetwork` whichever way it came.
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions, Value};

use crate::protocols::http::canonical::Ambiguous;

static SCHEMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.binpb"));

/// Decoded once, on the first protobuf body.
static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| match DescriptorPool::decode(SCHEMA) {
    Ok(pool) => Some(pool),
    Err(e) => {
        tracing::error!(error = %e, "the built-in Kubernetes schema does not decode; protobuf bodies are refused");
        None
    }
});

const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

/// The object as JSON, with its `apiVersion` and `kind`; `Err` for a body
/// that is not the envelope, of a kind the schema does not have, or with
/// fields the schema does not know (a newer API's, which a rule could not
/// see).
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, Ambiguous> {
    const MALFORMED: Ambiguous = "the Kubernetes protobuf body does not decode";
    let envelope = bytes.strip_prefix(b"k8s\0").ok_or(MALFORMED)?;
    let pool = POOL.as_ref().ok_or("loopgate's Kubernetes schema is unavailable")?;
    let unknown = pool
        .get_message_by_name(UNKNOWN)
        .ok_or("loopgate's Kubernetes schema is unavailable")?;
    let unknown = DynamicMessage::decode(unknown, envelope).map_err(|_| MALFORMED)?;
    let text = |message: &DynamicMessage, name: &str| -> String {
        match message.get_field_by_name(name).as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    };
    let type_meta = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(Value::Message(m)) => m.clone(),
        _ => return Err(MALFORMED),
    };
    let (api_version, kind) = (text(&type_meta, "apiVersion"), text(&type_meta, "kind"));
    if !text(&unknown, "contentEncoding").is_empty() || has_unknown(&unknown) {
        return Err(MALFORMED);
    }
    let schema = message_for(pool, &api_version, &kind)
        .ok_or("the Kubernetes protobuf body is of a kind loopgate's schema (Kubernetes 1.35) does not have")?;
    let raw = match unknown.get_field_by_name("raw").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let object = DynamicMessage::decode(schema, raw).map_err(|_| MALFORMED)?;
    if has_unknown(&object) {
        return Err("the Kubernetes protobuf body has fields loopgate's schema (Kubernetes 1.35) does not know");
    }
    let options = SerializeOptions::new().stringify_64_bit_integers(false);
    let mut json = object
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|_| MALFORMED)?;
    if let Some(map) = json.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    Ok(json)
}

/// The schema of `kind` in `api_version`, as the API server's scheme maps
/// a built-in group to its package: the core group is `core`, others by
/// their first label (`rbac.authorization.k8s.io` is `rbac`). Only the
/// built-in groups (no dot, or under `k8s.io`): the API server takes
/// protobuf for nothing else.
fn message_for(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(version) || !plain(kind) || (group.contains('.') && !group.ends_with(".k8s.io")) {
        return None;
    }
    let package = match group {
        "" => "core",
        "internal.apiserver.k8s.io" => "apiserverinternal",
        "meta.k8s.io" => {
            return pool.get_message_by_name(&format!("k8s.io.apimachinery.pkg.apis.meta.{version}.{kind}"));
        }
        group => group.split('.').next()?,
    };
    pool.get_message_by_name(&format!("k8s.io.api.{package}.{version}.{kind}"))
        // DeleteOptions and the other meta kinds sent under a group's version.
        .or_else(|| pool.get_message_by_name(&format!("k8s.io.apimachinery.pkg.apis.meta.{version}.{kind}")))
}

/// Whether a field the schema does not know is anywhere in the message.
fn has_unknown(message: &DynamicMessage) -> bool {
    fn in_value(value: &Value) -> bool {
        match value {
            Value::Message(m) => has_unknown(m),
            Value::List(items) => items.iter().any(in_value),
            Value::Map(entries) => entries.values().any(in_value),
            _ => false,
        }
    }
    message.unknown_fields().next().is_some() || message.fields().any(|(_, v)| in_value(v))
}

#[cfg(test)]
mod tests {
    use prost_reflect::prost::Message as _;

    use super::*;

    /// `object` (JSON) encoded as kubectl's typed clients send it.
    fn encode(api_version: &str, kind: &str, package: &str, object: serde_json::Value) -> Vec<u8> {
        let pool = POOL.as_ref().unwrap();
        let schema = pool.get_message_by_name(&format!("{package}.{kind}")).unwrap();
        let raw = DynamicMessage::deserialize(schema, object).unwrap().encode_to_vec();
        envelope(api_version, kind, raw)
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let pool = POOL.as_ref().unwrap();
        let mut unknown = DynamicMessage::new(pool.get_message_by_name(UNKNOWN).unwrap());
        let mut type_meta = DynamicMessage::new(
            pool.get_message_by_name("k8s.io.apimachinery.pkg.runtime.TypeMeta")
                .unwrap(),
        );
        type_meta.set_field_by_name("apiVersion", Value::String(api_version.into()));
        type_meta.set_field_by_name("kind", Value::String(kind.into()));
        unknown.set_field_by_name("typeMeta", Value::Message(type_meta));
        unknown.set_field_by_name("raw", Value::Bytes(raw.into()));
        let mut out = b"k8s\0".to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn kubectls_protobuf_deployment_reads_as_its_json() {
        // What `kubectl create deployment web --image=nginx` (1.35) sent.
        let body = include_bytes!("testdata/kubectl-1.35-create-deployment.pb");
        let json = to_json(body).unwrap();
        assert_eq!(
            (json["apiVersion"].as_str(), json["kind"].as_str()),
            (Some("apps/v1"), Some("Deployment"))
        );
        assert_eq!(json["metadata"]["name"], "web");
        let spec = &json["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["image"], "nginx");
        assert_eq!(spec["hostNetwork"], false);
        // `kubectl create token builder`: a TokenRequest.
        let json = to_json(include_bytes!("testdata/kubectl-1.35-create-token.pb")).unwrap();
        assert_eq!(
            (json["apiVersion"].as_str(), json["kind"].as_str()),
            (Some("authentication.k8s.io/v1"), Some("TokenRequest"))
        );
    }

    #[test]
    fn what_a_rule_looks_for_reads_the_same_as_in_json() {
        let pod = serde_json::json!({
            "metadata": {"name": "root"},
            "spec": {
                "hostPID": true,
                "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": true}}],
                "volumes": [{"name": "host", "volumeSource": {"hostPath": {"path": "/"}}}],
            },
        });
        let json = to_json(&encode("v1", "Pod", "k8s.io.api.core.v1", pod)).unwrap();
        assert_eq!(json["spec"]["hostPID"], true);
        assert_eq!(json["spec"]["containers"][0]["securityContext"]["privileged"], true);
        assert_eq!(json["spec"]["volumes"][0]["volumeSource"]["hostPath"]["path"], "/");
        // DeleteOptions, sent under the group's version.
        let options = serde_json::json!({"gracePeriodSeconds": 0});
        let json = to_json(&encode(
            "v1",
            "DeleteOptions",
            "k8s.io.apimachinery.pkg.apis.meta.v1",
            options,
        ))
        .unwrap();
        assert_eq!(json["gracePeriodSeconds"], 0);
    }

    #[test]
    fn what_the_schema_cannot_show_is_refused() {
        let pod = serde_json::json!({"metadata": {"name": "p"}});
        let mut raw = {
            let pool = POOL.as_ref().unwrap();
            let schema = pool.get_message_by_name("k8s.io.api.core.v1.Pod").unwrap();
            DynamicMessage::deserialize(schema, pod).unwrap().encode_to_vec()
        };
        assert!(to_json(&envelope("v1", "Pod", raw.clone())).is_ok());
        // Field 99 (a newer API's field, say): unknown to the schema.
        raw.extend([0x98, 0x06, 0x01]);
        assert!(to_json(&envelope("v1", "Pod", raw)).is_err());
        for (api_version, kind) in [
            ("example.com/v1", "Pod"),
            ("v1", "NoSuchKind"),
            ("v1", "Pod.Spec"),
            ("apps.evil.io/v1", "Deployment"),
        ] {
            assert!(
                to_json(&envelope(api_version, kind, Vec::new())).is_err(),
                "{api_version} {kind}"
            );
        }
        assert!(to_json(b"k8s\0\xff").is_err());
        assert!(to_json(b"{\"kind\":\"Pod\"}").is_err());
    }
}
