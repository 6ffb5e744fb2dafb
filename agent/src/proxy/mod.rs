//! The proxy: loopback listeners that receive the connections the kernel
//! redirected, attribute each to the process that opened it, record it, and
//! hand it to its target's protocol handler.
pub mod process;
mod session;
mod workers;

use anyhow::Context as _;
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

pub use session::{CounterSnapshot, Registry, Session, SessionEnd, SessionSummary, Traffic};
pub use workers::Workers;

use crate::{
    audit::{AuditLog, Decision, Event, EventKind, Outcome, Verdict},
    config::{Config, Target},
    intercept::{Intercepted, Interceptor, endpoint},
    protocols::{self, Handler, Shared},
};

/// How long the proxy waits for the kernel's record of a just-accepted
/// connection. The record is written when the client's handshake completes,
/// which on loopback precedes accept(); the wait only covers scheduling.
const RECORD_WAIT: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
];

/// The proxy's two listeners: 127.0.0.1 and [::1] on the configured port.
pub struct Listeners {
    v4: TcpListener,
    v6: TcpListener,
}

impl Listeners {
    /// Binds both listeners. Done before the programs are attached, so the
    /// first redirected connect already finds the proxy.
    pub async fn bind(port: u16) -> std::io::Result<Listeners> {
        Ok(Listeners {
            v4: TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?,
            v6: TcpListener::bind((Ipv6Addr::LOCALHOST, port)).await?,
        })
    }

    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        tokio::select! {
            r = self.v4.accept() => r,
            r = self.v6.accept() => r,
        }
    }
}

/// Shared state of the running proxy.
pub struct Proxy {
    pub config: Arc<Config>,
    routes: Vec<Route>,
    interceptor: Arc<Interceptor>,
    audit: AuditLog,
    pub registry: Arc<Registry>,
    /// The threads sessions run on.
    pub workers: Workers,
}

/// A target and the handler that serves its sessions.
struct Route {
    target: Arc<Target>,
    handler: Arc<Handler>,
}

impl Proxy {
    /// Builds every target's handler (reading secrets, preparing caches)
    /// and starts the session workers; an error here stops the agent
    /// before it intercepts anything.
    pub fn new(
        config: Arc<Config>,
        interceptor: Arc<Interceptor>,
        audit: AuditLog,
        shared: &Shared,
    ) -> anyhow::Result<Arc<Proxy>> {
        let routes = config
            .targets
            .iter()
            .map(|t| {
                Ok(Route {
                    target: Arc::new(t.clone()),
                    handler: Arc::new(Handler::for_target(t, &config, shared)?),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let workers = Workers::start(config.proxy.workers).context("starting the session workers")?;
        Ok(Arc::new(Proxy {
            config,
            routes,
            interceptor,
            audit,
            registry: Arc::default(),
            workers,
        }))
    }

    /// Accepts until `stop` turns true, then stops accepting (new
    /// intercepted connects are refused from then on), waits up to the
    /// drain timeout for live sessions, and closes what is left. Each
    /// session runs on one of the workers.
    pub async fn run(self: Arc<Self>, listeners: Listeners, mut stop: watch::Receiver<bool>) {
        let (force_close, force_close_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                accepted = listeners.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Leave this runtime's reactor; the worker registers
                        // the socket with its own.
                        let stream = match stream.into_std() {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(client = %peer, error = %e, "could not hand an accepted connection to a worker");
                                continue;
                            }
                        };
                        let proxy = self.clone();
                        let force_close = force_close_rx.clone();
                        self.workers.spawn(&mut sessions, move || async move {
                            match TcpStream::from_std(stream) {
                                Ok(stream) => proxy.handle(stream, peer, force_close).await,
                                Err(e) => tracing::warn!(client = %peer, error = %e, "worker could not take a connection"),
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listeners);
        let live = self.registry.live_count();
        tracing::info!(
            live,
            timeout_s = self.config.proxy.drain_timeout.as_secs(),
            "draining sessions"
        );
        let drained = tokio::time::timeout(self.config.proxy.drain_timeout, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                live = self.registry.live_count(),
                "drain timeout: closing remaining sessions"
            );
            let _ = force_close.send(true);
            // Sessions record their end as they close; give them a moment.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
            sessions.abort_all();
        }
    }

    async fn handle(&self, client: TcpStream, peer: SocketAddr, mut force_close: watch::Receiver<bool>) {
        let peer = endpoint::canonical(peer);
        self.registry.counters.accepted.fetch_add(1, Relaxed);
        let Some(intercepted) = self.kernel_record(peer).await else {
            self.refuse_not_redirected(peer).await;
            return;
        };
        let Some((target, handler)) = self.route(intercepted.original) else {
            // The target map and the config disagree (e.g. a target removed
            // while the record was in flight): refuse, never guess.
            self.refuse(peer, &intercepted, "destination is no longer a configured target")
                .await;
            return;
        };
        let session = Session::new(
            peer,
            intercepted.original,
            target,
            process::describe(&intercepted),
            self.audit.clone(),
        );
        let mut start = self.session_event(&session, EventKind::SessionStart);
        start.decision = Some(Decision::new(Verdict::Allow));
        if let Err(e) = self.audit.append(start).await {
            // Nothing unaudited reaches a backend.
            self.registry.counters.refused_audit_unavailable.fetch_add(1, Relaxed);
            tracing::error!(session = %session.id, error = %e, "refusing session: audit unavailable");
            return;
        }
        tracing::info!(
            session = %session.id,
            target = %session.target.name,
            pid = intercepted.tgid,
            uid = intercepted.uid,
            comm = %intercepted.comm,
            "session started"
        );
        self.registry.open(&session);
        let end = tokio::select! {
            end = protocols::serve(&session, &handler, client, self.config.proxy.connect_timeout) => end,
            _ = force_close.changed() => SessionEnd::failed("shutdown", "closed by agent shutdown after the drain timeout"),
        };
        self.registry.close(&session);
        if end.status == "unreachable" {
            self.registry.counters.upstream_unreachable.fetch_add(1, Relaxed);
        }
        self.record_end(&session, end).await;
    }

    /// The kernel's record for `peer`, waiting briefly for it to appear.
    async fn kernel_record(&self, peer: SocketAddr) -> Option<Intercepted> {
        if let Some(r) = self.interceptor.take(peer) {
            return Some(r);
        }
        for wait in RECORD_WAIT {
            tokio::time::sleep(wait).await;
            if let Some(r) = self.interceptor.take(peer) {
                return Some(r);
            }
        }
        None
    }

    fn route(&self, original: SocketAddr) -> Option<(Arc<Target>, Arc<Handler>)> {
        self.routes
            .iter()
            .find(|r| r.target.endpoints.contains(&original))
            .map(|r| (r.target.clone(), r.handler.clone()))
    }

    fn session_event(&self, session: &Session, kind: EventKind) -> Event {
        let mut e = Event::new(kind).session(session.id);
        e.client_address = Some(Arc::clone(&session.client_address));
        e.process = Some(Arc::clone(&session.process));
        e.principal = session.principal.get().cloned();
        e.target = Some(session.target_ref());
        e
    }

    async fn record_end(&self, session: &Session, end: SessionEnd) {
        tracing::info!(
            session = %session.id,
            status = end.status,
            bytes_to_server = session.traffic.to_server.load(Relaxed),
            bytes_to_client = session.traffic.to_client.load(Relaxed),
            "session ended"
        );
        let mut e = self.session_event(session, EventKind::SessionEnd);
        e.duration_us = Some(session.started.elapsed().as_micros() as u64);
        e.decision = end
            .reason
            .as_ref()
            .map(|reason| Decision::new(Verdict::Error).reason(reason.clone()));
        e.outcome = Some(Outcome {
            status: Some(end.status.to_owned()),
            bytes_to_client: Some(session.traffic.to_client.load(Relaxed)),
            bytes_to_server: Some(session.traffic.to_server.load(Relaxed)),
            ..Outcome::default()
        });
        if let Err(err) = self.audit.append(e).await {
            tracing::error!(session = %session.id, error = %err, "could not record session end");
        }
    }

    /// A connection with no kernel record reached the listener directly:
    /// the listener is not a way in.
    async fn refuse_not_redirected(&self, peer: SocketAddr) {
        self.registry.counters.refused_not_redirected.fetch_add(1, Relaxed);
        tracing::warn!(client = %peer, "refused a connection the kernel did not redirect");
        let mut e = Event::new(EventKind::SessionStart);
        e.client_address = Some(peer.to_string().into());
        e.decision = Some(refusal(
            "intercept.not_redirected",
            "connection was not redirected by the kernel",
        ));
        e.outcome = Some(Outcome {
            status: Some("refused".to_owned()),
            ..Outcome::default()
        });
        if let Err(err) = self.audit.append(e).await {
            tracing::error!(error = %err, "could not record a refused connection");
        }
    }

    async fn refuse(&self, peer: SocketAddr, k: &Intercepted, reason: &str) {
        tracing::warn!(client = %peer, original = %k.original, reason, "refused connection");
        let mut e = Event::new(EventKind::SessionStart);
        e.client_address = Some(peer.to_string().into());
        e.process = Some(Arc::new(process::describe(k)));
        e.decision = Some(refusal("intercept.unknown_target", reason));
        e.outcome = Some(Outcome {
            status: Some("refused".to_owned()),
            ..Outcome::default()
        });
        if let Err(err) = self.audit.append(e).await {
            tracing::error!(error = %err, "could not record a refused connection");
        }
    }
}

fn refusal(rule: &str, reason: &str) -> Decision {
    Decision::new(Verdict::Block).rule(rule).reason(reason)
}
