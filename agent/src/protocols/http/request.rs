//! One HTTP request through the enforcement point: the caller's token,
//! the policy's action, the audit record before forwarding, refuse / hold /
//! forward, and the response masked as it streams, its result recorded
//! when the body ends.
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use super::{
    Service,
    body::{BodyEnd, BoxError, Filter, MaskedBody},
    canonical::{self, Ambiguous, Target},
    config::Api,
    exec, fhir, headers,
    headers::BodyKind,
    json::{JsonMasker, JsonRules},
    kubernetes,
    local::Local,
    refusal,
    text::TextMasker,
    upstream::{self, Dialer, UpBody, Upstream},
    url,
};
use crate::{
    audit::{CommandInfo, Outcome},
    enforce::{Admitted, Caller, Cause, Command, Refusal, Verdict},
    policy::{Action, HttpRequest},
    session::{EndStatus, Session, SessionEnd},
};

pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// One client connection's state: its upstream connections and who
/// authenticated on it.
pub struct Conn<'a> {
    svc: &'a Service,
    session: &'a Session,
    upstream: Upstream,
    /// SHA-256 of the token that authenticated this connection.
    token: tokio::sync::Mutex<Option<[u8; 32]>>,
    /// Set when the session must end (the audit trail failed).
    fatal: Mutex<Option<SessionEnd>>,
}

impl<'a> Conn<'a> {
    pub fn new(svc: &'a Service, session: &'a Session, dialer: Dialer) -> Conn<'a> {
        Conn {
            svc,
            session,
            upstream: Upstream::new(dialer),
            token: tokio::sync::Mutex::new(None),
            fatal: Mutex::new(None),
        }
    }

    /// How the session must end, when a request ended it.
    pub fn fatal(&self) -> Option<SessionEnd> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Answers one request. Never fails: every error is an answer.
    pub async fn handle<'c>(&'c self, req: Request<Incoming>, exec: &Local<'c>) -> Response<ResBody> {
        let version = req.version();
        let mut response = match self.exchange(req, exec).await {
            Ok(r) | Err(r) => r,
        };
        // The client's HTTP version, whatever the upstream spoke.
        *response.version_mut() = version;
        response
    }

    async fn exchange<'c>(
        &'c self,
        req: Request<Incoming>,
        exec: &Local<'c>,
    ) -> Result<Response<ResBody>, Response<ResBody>> {
        let api = self.svc.api;
        if self.fatal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(closing(answer(api, StatusCode::SERVICE_UNAVAILABLE, AUDIT_DOWN)));
        }
        let authenticated = self.authenticate(req.headers()).await;
        let upgrade = req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE);
        let mut req = req.map(|body| upstream::request_body(body, self.session.traffic.clone()));
        let read = canonical::read(req.uri().path(), req.uri().query())
            .and_then(|target| Ok((self.action(&req, &target)?, target)));
        let read = match read {
            Ok((mut action, target)) => {
                let read = self.read_body(&mut req, &mut action, upgrade).await;
                read.map(|form| (action, target, form))
            }
            Err(reason) => Err(reason),
        };
        let (action, target, form, ambiguous) = match read {
            Ok((action, target, form)) => (action, Some(target), form, None),
            Err(reason) => (self.unread_action(&req), None, Vec::new(), Some(reason)),
        };
        let info = self.record(&action, &form);
        let enforcer = &self.svc.enforcer;
        if let Err(reason) = authenticated {
            // On the record like any refused request (no principal yet).
            tracing::warn!(session = %self.session.id, %reason, "authentication refused");
            let message = format!("loopgate: authentication failed: {reason}");
            return match enforcer
                .refuse(self.session, info, "loopgate.authentication", &reason)
                .await
            {
                Ok(_) => Err(answer(api, StatusCode::UNAUTHORIZED, &message)),
                Err(e) => Err(self.end_on_audit_failure(e)),
            };
        }
        let Some(target) = target else {
            // Servers would read it differently than the policy does.
            let reason = ambiguous.unwrap_or("the request target is ambiguous");
            tracing::info!(session = %self.session.id, %reason, "ambiguous request refused");
            let message = format!("loopgate: {reason}; the request was not sent");
            return match enforcer
                .refuse(self.session, info, "loopgate.ambiguous_request", reason)
                .await
            {
                Ok(_) => Err(answer(api, StatusCode::BAD_REQUEST, &message)),
                Err(e) => Err(self.end_on_audit_failure(e)),
            };
        };
        let caller = Caller::of(self.session, None, None);

        // exec / attach / port-forward are decided like any request and an
        // admitted one is relayed; an upgrade the relay cannot carry (see
        // `exec::unrelayable`) is refused first, so nobody approves it.
        let retry = upgrade.then(|| exec::fallback::key(self.session, &action)).flatten();
        if upgrade && let Some(reason) = exec::unrelayable(&req, action.kubernetes.as_ref()) {
            // kubectl's SPDY retry of a refused WebSocket exec: that answer.
            let (status, message) = retry
                .as_ref()
                .and_then(|k| self.svc.refusals.take(k))
                .unwrap_or_else(|| (StatusCode::NOT_IMPLEMENTED, format!("loopgate: {reason}")));
            return match enforcer
                .refuse(self.session, info, exec::UNRELAYABLE_RULE, reason)
                .await
            {
                Ok(_) => Err(answer(api, status, &message)),
                Err(e) => Err(self.end_on_audit_failure(e)),
            };
        }
        let refuse = |refusal: &Refusal| {
            let r = refused(api, refusal);
            if let Some(k) = retry.clone() {
                self.svc.refusals.remember(k, r.status(), refusal.message("request"));
            }
            r
        };

        let command = Command {
            action: Action::HttpRequest(&action),
            info,
        };
        let admitted = match enforcer.begin(self.session, &caller, command).await {
            Err(e) => return Err(self.end_on_audit_failure(e)),
            Ok(Verdict::Refused(refusal)) => return Err(refuse(&refusal)),
            Ok(Verdict::Forward(admitted)) => admitted,
            Ok(Verdict::Held { admitted, mut held }) => {
                let (message, _hint) = held.notice();
                tracing::info!(session = %self.session.id, approval = held.id(), %message, "request held for approval");
                // Waits in place. If the client leaves, hyper drops this
                // future and with it the hold (the request is cancelled)
                // and the guard (its result: not run).
                let guard = Unrun {
                    conn: self,
                    admitted: Some(admitted),
                };
                let resolution = held.wait().await;
                let admitted = guard.defuse();
                match held.release(resolution) {
                    Ok(()) => admitted,
                    Err(refusal) => {
                        enforcer.unrun(self.session, &admitted, &refusal);
                        return Err(refuse(&refusal));
                    }
                }
            }
        };
        if upgrade {
            let answered = self.relay_upgrade(req, admitted, &action, &target, exec).await;
            return match retry {
                Some(k) => self.keep_for_retry(k, answered).await,
                None => answered,
            };
        }
        self.forward(req, admitted, &action, &target, exec).await
    }

    /// With `identity = "oidc"` the bearer token is the caller's OIDC
    /// token: validated (once per distinct token on the connection), bound
    /// to the process, and never forwarded. One principal per connection.
    /// `Err` is the reason, free of token contents.
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<(), String> {
        let svc = self.svc;
        if !svc.identity.wants_token() {
            return Ok(());
        }
        let Some(token) = headers::bearer(headers) else {
            return Err("expected an OIDC token as Authorization: Bearer".into());
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut known = self.token.lock().await;
        if *known == Some(digest) {
            return Ok(());
        }
        let principal = svc.identity.principal(&self.session.process, Some(token)).await?;
        match self.session.principal.get() {
            Some(p) if p.subject != principal.subject => {
                return Err("a connection carries one principal; open another for another token".into());
            }
            Some(_) => {}
            None => {
                let _ = self.session.principal.set(std::sync::Arc::new(principal));
            }
        }
        *known = Some(digest);
        Ok(())
    }

    /// The body, where it is part of what the request does, read whole
    /// before the decision and sent on as read: a Kubernetes write's
    /// object, a FHIR batch's entries, a POST `_search` form (its names,
    /// for the record). An upgrade's body is a stream, never read.
    async fn read_body(
        &self,
        req: &mut Request<UpBody>,
        action: &mut HttpRequest,
        upgrade: bool,
    ) -> Result<Vec<String>, Ambiguous> {
        if upgrade {
            return Ok(Vec::new());
        }
        self.kubernetes_body(req, action).await?;
        self.fhir_bundle(req, action).await?;
        self.search_form(req, action).await
    }

    /// A FHIR batch or transaction carries its interactions in its entries:
    /// each is read (`fhir::bundle`) into `input.action.fhir.entries`, so
    /// a DELETE among them is decided as a DELETE.
    async fn fhir_bundle(&self, req: &mut Request<UpBody>, action: &mut HttpRequest) -> Result<(), Ambiguous> {
        let Some(fhir) = action.fhir.as_mut() else {
            return Ok(());
        };
        if req.method() != Method::POST || fhir.interaction != "batch" {
            return Ok(());
        }
        if encoded(req.headers()) {
            return Err("a batch or transaction with a Content-Encoding is not read");
        }
        let bytes = read_ahead(req, fhir::MAX_BUNDLE)
            .await
            .map_err(|_| "the batch or transaction is over 16 MiB or could not be read")?;
        let (kind, entries) = fhir::bundle(&bytes)?;
        fhir.bundle_type = Some(kind);
        fhir.entries = entries;
        Ok(())
    }

    /// FHIR's POST `_search` carries its parameters as a form body: read
    /// whole (bounded) before the decision, its names joined to the
    /// query's in `search_params` as the server joins them, and sent on as
    /// read. Its names, for the record.
    async fn search_form(&self, req: &mut Request<UpBody>, action: &mut HttpRequest) -> Result<Vec<String>, Ambiguous> {
        let Some(fhir) = action.fhir.as_mut() else {
            return Ok(Vec::new());
        };
        if req.method() != Method::POST || fhir.interaction != "search" {
            return Ok(Vec::new());
        }
        if encoded(req.headers()) {
            return Err("a POST _search form with a Content-Encoding is not read");
        }
        // Only a body that says it is a form: a server may ignore an
        // untyped one, and the policy would have read parameters that
        // never applied (a `_count` the search did not have).
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let bytes = read_ahead(req, MAX_SEARCH_FORM)
            .await
            .map_err(|_| "the POST _search form is over 64 KiB or could not be read")?;
        if !bytes.is_empty() && !form {
            return Err("a POST _search body is read only as a form (application/x-www-form-urlencoded)");
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| "the POST _search form is not UTF-8")?;
        let names: Vec<String> = canonical::query_params(text)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty())
            .collect();
        fhir.search_params.extend(names.iter().cloned());
        fhir.search_params.sort();
        fhir.search_params.dedup();
        Ok(names)
    }

    /// A Kubernetes write's body (the object, the patch) is what it does:
    /// a Pod that mounts the node's disk is a `create` like any other.
    /// Read whole (bounded as the API server bounds it) into
    /// `input.action.kubernetes.body` before the decision, and sent on as
    /// read.
    async fn kubernetes_body(&self, req: &mut Request<UpBody>, action: &mut HttpRequest) -> Result<(), Ambiguous> {
        let Some(k8s) = action.kubernetes.as_mut() else {
            return Ok(());
        };
        if !kubernetes::reads_body(k8s) {
            return Ok(());
        }
        let bytes = read_ahead(req, kubernetes::MAX_BODY)
            .await
            .map_err(|_| "the Kubernetes request body is over 3 MiB or could not be read")?;
        let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        (k8s.body, k8s.content_type) =
            kubernetes::read_body(header(header::CONTENT_TYPE), header(header::CONTENT_ENCODING), &bytes)?;
        Ok(())
    }

    /// `input.action` of this request, read from its canonical target;
    /// `Err` when the API would read it another way than loopgate.
    fn action<B>(&self, req: &Request<B>, target: &Target) -> Result<HttpRequest, Ambiguous> {
        if headers::overrides_method(req.headers()) {
            return Err("the request asks to override its method (X-HTTP-Method-Override)");
        }
        let method = req.method().as_str();
        let fhir = match self.svc.api {
            Api::Fhir => Some(fhir::parse(method, target)?),
            _ => None,
        };
        let kubernetes = match self.svc.api {
            Api::Kubernetes => kubernetes::parse(method, target),
            _ => None,
        };
        Ok(HttpRequest {
            path: target.path.clone(),
            kubernetes,
            fhir,
            ..self.unread_action(req)
        })
    }

    /// The request as it came (for the record of a refused one).
    fn unread_action<B>(&self, req: &Request<B>) -> HttpRequest {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                let h = req.headers().get(header::HOST)?.to_str().ok()?;
                Some(
                    h.rsplit_once(':')
                        .filter(|(_, p)| p.parse::<u16>().is_ok())
                        .map_or(h, |(h, _)| h)
                        .to_owned(),
                )
            })
            .unwrap_or_else(|| self.svc.server_name.clone());
        HttpRequest {
            method,
            host,
            path,
            query,
            kubernetes: None,
            fhir: None,
        }
    }

    /// What the audit records of a request: method and path (detectors
    /// applied, also to what escapes hide) and the query's parameter names
    /// (decoded, detectors applied), never their values.
    fn record(&self, r: &HttpRequest, form: &[String]) -> CommandInfo {
        let masker = &self.svc.masker;
        let mut text = format!("{} {}", r.method, url::mask_text(masker, &r.path));
        let names = |names: &mut dyn Iterator<Item = String>| -> String {
            let shown: Vec<String> = names.map(|n| format!("{}=?", url::mask_text(masker, &n))).collect();
            shown.join("&")
        };
        if let Some(q) = &r.query {
            let mut decoded = q.split('&').filter(|p| !p.is_empty()).map(|p| {
                let raw = p.split('=').next().unwrap_or("");
                canonical::decode(raw, true).unwrap_or_else(|| raw.to_owned())
            });
            text.push('?');
            text.push_str(&names(&mut decoded));
        }
        if !form.is_empty() {
            text.push_str(" (form: ");
            text.push_str(&names(&mut form.iter().cloned()));
            text.push(')');
        }
        if let Some(summary) = r.fhir.as_ref().and_then(fhir::bundle_summary) {
            text.push_str(&summary);
        }
        let (kind, tables) = match (&r.fhir, &r.kubernetes) {
            (Some(f), _) => {
                let mut types: Vec<String> = f
                    .resource_type
                    .iter()
                    .chain(f.entries.iter().filter_map(|e| e.resource_type.as_ref()))
                    .cloned()
                    .collect();
                types.sort();
                types.dedup();
                (f.interaction.clone(), types)
            }
            (_, Some(k)) => (k.verb.clone(), vec![k.resource.clone()]),
            _ => ("http".to_owned(), Vec::new()),
        };
        CommandInfo {
            text: Some(text),
            fingerprint: None,
            kind: Some(kind),
            tables,
            columns: Vec::new(),
            parameters: Vec::new(),
        }
    }

    /// Sends an admitted request upstream and streams the masked response
    /// back; its result is recorded when the body ends.
    async fn forward<'c>(
        &'c self,
        req: Request<UpBody>,
        admitted: Admitted,
        action: &HttpRequest,
        target: &Target,
        exec: &Local<'c>,
    ) -> Result<Response<ResBody>, Response<ResBody>> {
        let api = self.svc.api;
        let method = req.method().clone();
        let (mut parts, body) = req.into_parts();
        self.for_upstream(&mut parts, target);
        if api == Api::Fhir {
            headers::prefer_fhir_json(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);

        let response = match self.upstream.send(request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = %self.session.id, error = %e, "upstream request failed");
                let message = if e.is_certificate() {
                    "loopgate: the upstream server's certificate is not trusted for this target; the request was not sent"
                } else {
                    "loopgate: the upstream server could not be reached or failed"
                };
                self.finish_failed(&admitted, "502").await;
                return Err(answer(api, StatusCode::BAD_GATEWAY, message));
            }
        };
        self.pass_on(response, &method, admitted, action, exec).await
    }

    /// The upstream's response as the client gets it: headers masked and
    /// the body through the masker of its content type (or a 502 when it
    /// cannot be masked), its result recorded when the body ends.
    async fn pass_on<'c>(
        &'c self,
        response: Response<Incoming>,
        method: &Method,
        admitted: Admitted,
        action: &HttpRequest,
        exec: &Local<'c>,
    ) -> Result<Response<ResBody>, Response<ResBody>> {
        let api = self.svc.api;
        let (mut parts, body) = response.into_parts();
        let status = parts.status;
        let filter = if upstream::bodyless(method, status) {
            Filter::Empty
        } else {
            match headers::body_kind(&parts.headers) {
                _ if headers::unmaskable_coding(&parts.headers).is_some() => {
                    self.finish_failed(&admitted, "502").await;
                    let reason = headers::unmaskable_coding(&parts.headers).unwrap_or_default();
                    return Err(answer(api, StatusCode::BAD_GATEWAY, &format!("loopgate: {reason}")));
                }
                BodyKind::Json => Filter::Json(Box::new(JsonMasker::new(
                    self.svc.masker.clone(),
                    JsonRules {
                        api,
                        secrets_response: action.kubernetes.as_ref().is_some_and(|k| k.resource == "secrets"),
                    },
                ))),
                // FHIR XML (or HTML) would get the detectors only, not the
                // resource paths: names would pass.
                BodyKind::Text if api == Api::Fhir => {
                    self.finish_failed(&admitted, "502").await;
                    let message = "loopgate: FHIR responses are masked as JSON only; ask for application/fhir+json";
                    return Err(answer(api, StatusCode::BAD_GATEWAY, message));
                }
                BodyKind::Text => Filter::Text(TextMasker::new(self.svc.masker.clone())),
                kind @ (BodyKind::Protobuf | BodyKind::Opaque) => {
                    self.finish_failed(&admitted, "502").await;
                    let message = match kind {
                        BodyKind::Protobuf => "loopgate: protobuf responses cannot be masked; ask for application/json",
                        _ => "loopgate: the response's content type cannot be inspected, so it is not passed on",
                    };
                    return Err(answer(api, StatusCode::BAD_GATEWAY, message));
                }
            }
        };
        headers::client_response(&mut parts.headers);
        let masked_headers = headers::mask_response_values(&mut parts.headers, &self.svc.masker, api == Api::Fhir);
        let (done, ended) = oneshot::channel();
        let body = MaskedBody::new(body, filter, done);
        exec.spawn(async move {
            let mut end = ended.await.unwrap_or_default();
            if masked_headers > 0 {
                end.masked += masked_headers;
                end.masked_fields.push("header".into());
            }
            self.finish(&admitted, status, end).await;
        });
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// An admitted HTTP/1.1 upgrade (kubectl exec / attach / port-forward
    /// over WebSocket or SPDY): sent upstream on a connection of its own
    /// with the same credential rewriting as any request; on 101 both
    /// sides are joined and relayed by [`exec`] (exec/attach masked and
    /// recorded, port-forward counted), the result recorded when it ends.
    async fn relay_upgrade<'c>(
        &'c self,
        mut req: Request<UpBody>,
        admitted: Admitted,
        action: &HttpRequest,
        target: &Target,
        exec: &Local<'c>,
    ) -> Result<Response<ResBody>, Response<ResBody>> {
        let api = self.svc.api;
        // `unrelayable` has passed it: a Kubernetes stream over HTTP/1.1.
        let upgrade_to = req
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("websocket"));
        let streams = exec::Streams::of(action.kubernetes.as_ref().map_or("", |k| k.verb.as_str()));
        let client_side = hyper::upgrade::on(&mut req);
        let method = req.method().clone();
        let (mut parts, _body) = req.into_parts();
        self.for_upstream(&mut parts, target);
        // No compression: the relay reads every frame.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade_to);
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| -> BoxError { match never {} })
            .boxed_unsync();
        let mut response = match self.upstream.send_upgrade(Request::from_parts(parts, empty)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = %self.session.id, error = %e, "upstream upgrade request failed");
                self.finish_failed(&admitted, "502").await;
                return Err(answer(
                    api,
                    StatusCode::BAD_GATEWAY,
                    "loopgate: the upstream server could not be reached or failed",
                ));
            }
        };
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            // The server's own answer (a Status saying why: forbidden, not
            // found, the container is not running), masked as any response.
            return self.pass_on(response, &method, admitted, action, exec).await;
        }
        if !streams.accepts(response.headers()) {
            self.finish_failed(&admitted, "502").await;
            let message = "loopgate: the server chose a stream protocol loopgate cannot read \
                           (exec and attach: a binary v1-v5.channel.k8s.io, no extension)";
            return Err(answer(api, StatusCode::BAD_GATEWAY, message));
        }
        let server_side = hyper::upgrade::on(&mut response);
        let mut answer_head = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in response.headers() {
            if name != header::SET_COOKIE {
                answer_head = answer_head.header(name, value);
            }
        }
        let title = exec::title(&self.svc.masker, action);
        exec.spawn(async move {
            let ended = match futures_util::future::join(client_side, server_side).await {
                (Ok(c), Ok(s)) => {
                    let (c, s) = (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(s));
                    let recorder = (streams == exec::Streams::Channels)
                        .then(|| exec::start_recording(self.svc.recordings.as_ref(), self.session, &title))
                        .flatten();
                    exec::relay(c, s, streams, self.svc.masker.clone(), recorder).await
                }
                (Err(e), _) | (_, Err(e)) => exec::Ended::failed(format!("upgrade: {e}")),
            };
            exec::finish(self.session, &admitted, ended).await;
        });
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| -> BoxError { match never {} })
            .boxed_unsync();
        Ok(answer_head
            .body(empty)
            .unwrap_or_else(|_| answer(self.svc.api, StatusCode::BAD_GATEWAY, "loopgate: bad upgrade response")))
    }

    /// An admitted WebSocket exec/attach the server (or loopgate, on an
    /// upstream failure) answered with anything but a 101: kubectl retries
    /// it over SPDY at once and prints only that answer, so it is kept,
    /// masked as it went to the client, for the retry. The answer is read
    /// whole (a `Status`, bounded) to keep its message.
    async fn keep_for_retry(
        &self,
        key: exec::fallback::Key,
        answered: Result<Response<ResBody>, Response<ResBody>>,
    ) -> Result<Response<ResBody>, Response<ResBody>> {
        let (refused, response) = match answered {
            Ok(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => return Ok(r),
            Ok(r) => (false, r),
            Err(r) => (true, r),
        };
        let (parts, body) = response.into_parts();
        let bytes = match read_whole(body, exec::fallback::MAX_ANSWER).await {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(session = %self.session.id, error = %e, "an exec's answer could not be kept for its retry");
                let r = answer(
                    self.svc.api,
                    StatusCode::BAD_GATEWAY,
                    "loopgate: the server's answer could not be read",
                );
                return Err(r);
            }
        };
        let message = exec::fallback::message_of(&bytes, parts.status);
        self.svc.refusals.remember(key, parts.status, message);
        let r = Response::from_parts(parts, Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
        if refused { Err(r) } else { Ok(r) }
    }

    /// The request as it goes upstream: the Host the policy saw (HTTP/2
    /// clients send only `:authority`; an absolute URI's authority wins
    /// over a Host header that says otherwise), the client's credentials
    /// out and loopgate's in, the caller impersonated where configured, the
    /// canonical target in origin form.
    fn for_upstream(&self, parts: &mut http::request::Parts, target: &Target) {
        if let Some(authority) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, value);
        }
        let token = self.svc.token.as_ref().map(|t| t.expose());
        headers::upstream_request(&mut parts.headers, token);
        if self.svc.impersonate
            && let Some(p) = self.session.principal.get()
            && let Some(subject) = &p.subject
        {
            headers::impersonate(&mut parts.headers, subject, &p.groups);
        }
        parts.uri = target.forward.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    }

    async fn finish(&self, admitted: &Admitted, status: StatusCode, end: BodyEnd) {
        self.session.add_to_client(end.bytes as usize);
        let outcome_status = match &end.error {
            None if status.as_u16() < 400 => "ok",
            None => "error",
            Some(e) if e.starts_with("masking") => "cut",
            Some(e) if e.starts_with("client left") => "incomplete",
            Some(_) => "error",
        };
        if let Some(e) = &end.error {
            tracing::info!(session = %self.session.id, error = %e, "response body ended early");
        }
        let outcome = Outcome {
            status: Some(outcome_status.to_owned()),
            bytes_to_client: Some(end.bytes),
            error_code: Some(status.as_u16().to_string()),
            masked_fields: end.masked_fields,
            masked_count: Some(end.masked),
            ..Outcome::default()
        };
        self.svc.enforcer.finish(self.session, admitted, outcome).await;
    }

    async fn finish_failed(&self, admitted: &Admitted, code: &str) {
        let outcome = Outcome {
            status: Some("error".into()),
            error_code: Some(code.into()),
            bytes_to_client: Some(0),
            ..Outcome::default()
        };
        self.svc.enforcer.finish(self.session, admitted, outcome).await;
    }

    /// The audit trail failed: nothing more may run on this session.
    fn end_on_audit_failure(&self, e: crate::audit::AuditError) -> Response<ResBody> {
        tracing::error!(session = %self.session.id, error = %e, "audit unavailable: ending the session");
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(SessionEnd::failed(EndStatus::AuditUnavailable, e.to_string()));
        closing(answer(self.svc.api, StatusCode::SERVICE_UNAVAILABLE, AUDIT_DOWN))
    }
}

/// Records a held request's result as not run when the wait is dropped
/// (the client left before a decision).
struct Unrun<'c, 'a> {
    conn: &'c Conn<'a>,
    admitted: Option<Admitted>,
}

impl Unrun<'_, '_> {
    fn defuse(mut self) -> Admitted {
        self.admitted.take().expect("defused once")
    }
}

impl Drop for Unrun<'_, '_> {
    fn drop(&mut self) {
        if let Some(admitted) = self.admitted.take() {
            let refusal = Refusal {
                cause: Cause::Unapproved(crate::approval::Resolution::Withdrawn {
                    reason: "the client left".into(),
                }),
                rule_id: None,
                reason: "the client left while the request was held".into(),
            };
            self.conn.svc.enforcer.unrun(self.conn.session, &admitted, &refusal);
        }
    }
}

const AUDIT_DOWN: &str = "loopgate: the audit trail is unavailable; the request was not sent";

fn refused(api: Api, refusal: &Refusal) -> Response<ResBody> {
    let status = match refusal.cause {
        Cause::Policy | Cause::Unapproved(_) => StatusCode::FORBIDDEN,
        Cause::AuditUnavailable | Cause::HoldUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    answer(api, status, &refusal.message("request"))
}

fn answer(api: Api, status: StatusCode, message: &str) -> Response<ResBody> {
    refusal::answer(api, status, message).map(|b| Full::new(b).map_err(|never| match never {}).boxed_unsync())
}

/// The most of a POST `_search` form read before the decision.
const MAX_SEARCH_FORM: usize = 64 * 1024;

fn empty_body() -> UpBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// Whether the body is compressed (not `identity`): not read for a decision.
fn encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.to_str().is_ok_and(|e| e.trim().eq_ignore_ascii_case("identity")))
}

/// The request's body read whole (at most `limit` bytes) for the decision,
/// and put back to be sent exactly as read.
async fn read_ahead(req: &mut Request<UpBody>, limit: usize) -> Result<Bytes, BoxError> {
    let body = std::mem::replace(req.body_mut(), empty_body());
    let bytes = read_whole(body, limit).await?;
    *req.body_mut() = Full::new(bytes.clone()).map_err(|never| match never {}).boxed_unsync();
    Ok(bytes)
}

/// A body read whole, at most `limit` bytes.
async fn read_whole(mut body: UpBody, limit: usize) -> Result<Bytes, BoxError> {
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if whole.len() + data.len() > limit {
                return Err(format!("over {limit} bytes").into());
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(whole))
}

fn closing(mut r: Response<ResBody>) -> Response<ResBody> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
