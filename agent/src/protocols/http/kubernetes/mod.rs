//! A Kubernetes API request's parts, read as the API server's request info
//! resolver reads a path (<https://kubernetes.io/docs/reference/using-api/api-concepts/>):
//! `/api/v1/...` (the core group) or `/apis/GROUP/VERSION/...`, then
//! `[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]`.
mod body;
mod protobuf;

pub use body::{MAX_BODY, read_body, reads_body};

use super::canonical::Target;
use crate::policy::KubernetesRequest;

/// Subresources that are verbs of their own (`kubectl exec`, `logs`).
const VERB_SUBRESOURCES: [&str; 5] = ["exec", "attach", "portforward", "log", "proxy"];
/// `/api/v1/watch/...`, `/api/v1/proxy/...`: the legacy verb prefixes.
const SPECIAL_VERBS: [&str; 2] = ["watch", "proxy"];
/// What may follow `namespaces/NS` as the namespace's own subresource.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The parts of a resource request, or `None` for other paths (discovery,
/// `/version`, `/healthz`, `/openapi`). Follows the API server's
/// `RequestInfoFactory` (k8s.io/apiserver/pkg/endpoints/request): a
/// `watch` or `proxy` prefix is the verb, parts after the subresource are
/// the subresource's, a collection GET is a watch when the first `watch`
/// parameter is anything but `0` or `false` (any case) — the apimachinery
/// conversion, wider than `strconv.ParseBool` — and a `fieldSelector`
/// `metadata.name=N` names the object.
pub fn parse(method: &str, target: &Target) -> Option<KubernetesRequest> {
    let segments: Vec<&str> = target.segments.iter().map(String::as_str).collect();
    let (group, version, mut rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (String::new(), *version, rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), *version, rest),
        _ => return None,
    };
    let mut special = None;
    if let [first, tail @ ..] = rest
        && SPECIAL_VERBS.contains(first)
    {
        if tail.is_empty() {
            return None;
        }
        special = Some(*first);
        rest = tail;
    }
    let mut namespace = None;
    if let ["namespaces", ns, tail @ ..] = rest {
        namespace = Some((*ns).to_owned());
        // `namespaces/NS` and `namespaces/NS/status` are the namespace itself.
        if let [next, ..] = tail
            && !NAMESPACE_SUBRESOURCES.contains(next)
        {
            rest = tail;
        }
    }
    let resource = (*rest.first()?).to_owned();
    let mut name = rest.get(1).map(|s| (*s).to_owned());
    let subresource = match special {
        Some("proxy") => None,
        _ => rest.get(2).map(|s| (*s).to_owned()),
    };
    let collection_get = name.is_none() && matches!(method, "GET" | "HEAD");
    if collection_get && special.is_none() {
        name = selected_name(target);
    }
    let watch = target
        .first("watch")
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    let verb = match (&subresource, method, special) {
        (Some(sub), _, _) if VERB_SUBRESOURCES.contains(&sub.as_str()) => sub.clone(),
        (_, _, Some(verb)) => verb.to_owned(),
        (_, "GET" | "HEAD", _) if !collection_get => "get".into(),
        (_, "GET" | "HEAD", _) if watch => "watch".into(),
        (_, "GET" | "HEAD", _) => "list".into(),
        (_, "POST", _) => "create".into(),
        (_, "PUT", _) => "update".into(),
        (_, "PATCH", _) => "patch".into(),
        (_, "DELETE", _) if name.is_some() => "delete".into(),
        (_, "DELETE", _) => "deletecollection".into(),
        (_, other, _) => other.to_ascii_lowercase(),
    };
    Some(KubernetesRequest {
        verb,
        group,
        version: version.to_owned(),
        resource,
        subresource,
        namespace,
        name,
        command: target
            .params
            .iter()
            .filter(|(n, _)| n == "command")
            .map(|(_, v)| v.clone())
            .collect(),
        container: target.first("container").map(str::to_owned),
        body: None,
        content_type: None,
    })
}

/// `fieldSelector=metadata.name=N` (or `==`), alone among its terms'
/// names: the API server names the object of a list or watch by it.
fn selected_name(target: &Target) -> Option<String> {
    let selector = target.first("fieldSelector")?;
    let mut names = selector.split(',').filter_map(|term| {
        let value = term.trim().strip_prefix("metadata.name")?;
        value.strip_prefix("==").or_else(|| value.strip_prefix('='))
    });
    let name = names.next()?;
    (names.next().is_none() && !name.is_empty() && !name.starts_with('=')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn p(method: &str, target: &str) -> Option<KubernetesRequest> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        parse(method, &super::super::canonical::read(path, query).unwrap())
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
        let r = p(
            "POST",
            "/api/v1/namespaces/ward/pods/p1/exec?command=sh&stdin=true&command=-c&command=cat+%2Fsrv%2Fphi%2Fa&container=app",
        )
        .unwrap();
        assert_eq!(
            (r.command, r.container.as_deref()),
            (vec!["sh".to_owned(), "-c".into(), "cat /srv/phi/a".into()], Some("app"))
        );
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
        // As the API server reads it: the namespace object is in itself.
        assert_eq!(r.namespace.as_deref(), Some("ward"));
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

    #[test]
    fn watch_as_the_api_server_reads_it() {
        for query in [
            "watch=true",
            "watch=1",
            "watch=t",
            "watch=True",
            "watch=TRUE",
            "watch=yes",
            "watch",
            "watch=",
            "w%61tch=1",
            "watch=1&watch=0",
        ] {
            let r = p("GET", &format!("/api/v1/namespaces/x/secrets?{query}")).unwrap();
            assert_eq!(r.verb, "watch", "{query}");
        }
        for query in [
            "watch=false",
            "watch=0",
            "watch=FALSE",
            "watch=0&watch=1",
            "Watch=true",
            "limit=1",
        ] {
            let r = p("GET", &format!("/api/v1/namespaces/x/secrets?{query}")).unwrap();
            assert_eq!(r.verb, "list", "{query}");
        }
        // Legacy watch paths, core and group.
        let r = p("GET", "/api/v1/watch/namespaces/x/secrets").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.namespace.as_deref()),
            ("watch", "secrets", Some("x"))
        );
        let r = p("GET", "/api/v1/watch/namespaces/x/secrets/db").unwrap();
        assert_eq!((r.verb.as_str(), r.name.as_deref()), ("watch", Some("db")));
        let r = p("GET", "/apis/apps/v1/watch/deployments").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.group.as_str()),
            ("watch", "deployments", "apps")
        );
        // A named GET with watch=true is a get (the server answers the object).
        let r = p("GET", "/api/v1/namespaces/x/secrets/db?watch=true").unwrap();
        assert_eq!(r.verb, "get");
        // Encoded, the same request.
        let r = p("GET", "/api/v1/namespaces/x/secret%73?watch=1").unwrap();
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("watch", "secrets"));
    }

    #[test]
    fn paths_past_the_subresource_and_namespace_subresources() {
        let r = p("GET", "/api/v1/namespaces/x/secrets/db/extra/parts").unwrap();
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.subresource.as_deref()),
            ("secrets", Some("db"), Some("extra"))
        );
        let r = p("GET", "/api/v1/namespaces/x/services/web/proxy/some/path").unwrap();
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("proxy", "services"));
        let r = p("GET", "/api/v1/proxy/namespaces/x/pods/p1/a/b").unwrap();
        assert_eq!(
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("proxy", "pods", Some("p1"), None)
        );
        let r = p("PUT", "/api/v1/namespaces/x/finalize").unwrap();
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.subresource.as_deref()),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let r = p("GET", "/api/v1/namespaces/x/status").unwrap();
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.subresource.as_deref()),
            ("get", "namespaces", Some("status"))
        );
        // A trailing slash is the same request.
        let r = p("GET", "/api/v1/namespaces/x/secrets/").unwrap();
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("list", "secrets"));
    }

    #[test]
    fn a_field_selector_names_the_object() {
        let r = p(
            "GET",
            "/api/v1/namespaces/x/secrets?fieldSelector=metadata.name%3Ddb&watch=1",
        )
        .unwrap();
        assert_eq!((r.verb.as_str(), r.name.as_deref()), ("watch", Some("db")));
        let r = p(
            "GET",
            "/api/v1/namespaces/x/secrets?fieldSelector=metadata.name%3D%3Ddb",
        )
        .unwrap();
        assert_eq!((r.verb.as_str(), r.name.as_deref()), ("list", Some("db")));
        let r = p(
            "GET",
            "/api/v1/namespaces/x/secrets?fieldSelector=metadata.name%21%3Ddb",
        )
        .unwrap();
        assert_eq!(r.name, None);
    }
}
