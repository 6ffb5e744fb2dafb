//! A Kubernetes API request's parts, read as the API server's request info
//! resolver reads a path (<https://kubernetes.io/docs/reference/using-api/api-concepts/>):
//! `/api/v1/...` (the core group) or `/apis/GROUP/VERSION/...`, then
//! `[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]`.
use crate::policy::KubernetesRequest;

/// Subresources that are verbs of their own (`kubectl exec`, `logs`).
const VERB_SUBRESOURCES: [&str; 5] = ["exec", "attach", "portforward", "log", "proxy"];

/// The parts of a resource request, or `None` for other paths (discovery,
/// `/version`, `/healthz`, `/openapi`).
pub fn parse(method: &str, path: &str, query: Option<&str>) -> Option<KubernetesRequest> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (String::new(), *version, rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/NS` alone is the namespace object itself.
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    let watch = query
        .unwrap_or("")
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (&subresource, method) {
        (Some(sub), _) if VERB_SUBRESOURCES.contains(&sub.as_str()) => sub.clone(),
        (_, "GET" | "HEAD") if watch => "watch".into(),
        (_, "GET" | "HEAD") if name.is_some() => "get".into(),
        (_, "GET" | "HEAD") => "list".into(),
        (_, "POST") => "create".into(),
        (_, "PUT") => "update".into(),
        (_, "PATCH") => "patch".into(),
        (_, "DELETE") if name.is_some() => "delete".into(),
        (_, "DELETE") => "deletecollection".into(),
        (_, other) => other.to_ascii_lowercase(),
    };
    Some(KubernetesRequest {
        verb,
        group,
        version: version.to_owned(),
        resource: resource.to_owned(),
        subresource,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, target: &str) -> Option<KubernetesRequest> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        parse(method, path, query)
    }

    #[test]
    fn resource_requests_per_the_api_conventions() {
        let r = p("GET", "/api/v1/namespaces/ward/secrets").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.group.as_str()),
            ("list", "secrets", "")
        );
        assert_eq!(r.namespace.as_deref(), Some("ward"));
        let r = p("GET", "/api/v1/namespaces/ward/pods/p1/log?follow=true").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.subresource.as_deref(), r.name.as_deref()),
            ("log", Some("log"), Some("p1"))
        );
        let r = p("POST", "/api/v1/namespaces/ward/pods/p1/exec?command=sh").unwrap();
        assert_eq!(r.verb, "exec");
        let r = p("GET", "/apis/apps/v1/namespaces/ward/deployments?watch=true").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.group.as_str(), r.version.as_str()),
            ("watch", "apps", "v1")
        );
        let r = p("DELETE", "/api/v1/namespaces/ward").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.name.as_deref()),
            ("delete", "namespaces", Some("ward"))
        );
        assert!(r.namespace.is_none());
        let r = p("DELETE", "/apis/batch/v1/namespaces/ward/jobs").unwrap();
        assert_eq!(r.verb, "deletecollection");
        let r = p("GET", "/api/v1/nodes/n1").unwrap();
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("get", "nodes"));
        let r = p("PATCH", "/api/v1/namespaces/ward/pods/p1/status").unwrap();
        assert_eq!((r.verb.as_str(), r.subresource.as_deref()), ("patch", Some("status")));
    }

    #[test]
    fn other_paths_have_no_resource() {
        for path in ["/version", "/api", "/apis", "/apis/apps/v1", "/healthz", "/openapi/v2"] {
            assert!(p("GET", path).is_none(), "{path}");
        }
        assert!(p("GET", "/api/v1").is_none());
    }
}
