//! The proxy: loopback listeners that receive the connections the kernel
//! redirected, attribute each to the process that opened it, record it, and
//! hand it to its target's protocol handler.
mod refusals;
mod registry;
mod workers;

use anyhow::Context as _;
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};

pub use refusals::{record_kernel_refusals, sweep_preexisting};
pub use registry::{CounterSnapshot, Registry, SessionSummary};
pub use workers::Workers;

use crate::{
    audit::{AuditLog, Decision, Event, EventKind, Outcome, ProcessInfo, Verdict},
    config::{Config, Protocol, Target},
    identity::Authenticator,
    intercept::{Interceptor, ListenerFds, Unverified, endpoint, refusals::RateLimit},
    protocols::{self, Build, Handler, Shared, http, postgres, ssh},
    session::{EndStatus, Session, SessionEnd, process},
};

/// The proxy's two listeners, on loopback ports of the kernel's choosing:
/// intercepted connects go to `listen_port`, and the kernel's port owner
/// (sk_lookup) hands them to these sockets — so another process holding
/// `listen_port` receives nothing, and cannot keep the agent from starting.
pub struct Listeners {
    v4: TcpListener,
    v6: TcpListener,
}

impl Listeners {
    /// Binds both listeners. Done before the programs are attached, so the
    /// first redirected connect already finds the proxy.
    pub async fn bind() -> std::io::Result<Listeners> {
        Ok(Listeners {
            v4: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
            v6: TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await?,
        })
    }

    /// The descriptors the kernel is told to steer the port to.
    pub fn fds(&self) -> ListenerFds {
        use std::os::fd::AsRawFd as _;
        ListenerFds {
            v4: self.v4.as_raw_fd(),
            v6: self.v6.as_raw_fd(),
        }
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
    /// One /proc scan at a time for the owners of refused connections.
    owner_scans: Semaphore,
    /// Refused connections recorded one by one per second; a flood of
    /// direct connects to the port is summarised instead.
    refusal_limit: std::sync::Mutex<RateLimit>,
}

/// A target and the handler that serves its sessions.
struct Route {
    target: Arc<Target>,
    handler: Arc<Handler>,
}

/// Builds the handler of target `t`: one line per protocol, each protocol
/// building its own service from its own settings.
fn handler(t: &Target, config: &Config, shared: &Shared) -> anyhow::Result<Handler> {
    let build = Build {
        name: &t.name,
        host: t.host(),
        certificate_names: t.certificate_names(),
        identity: Authenticator::new(t.identity, shared.oidc.as_ref()).map_err(anyhow::Error::msg)?,
        sql: &config.sql,
        ca_dir: &config.tls.ca_dir,
        audit_dir: &config.audit.dir,
        shared,
    };
    Ok(match &t.protocol {
        Protocol::Tcp => Handler::Tcp,
        Protocol::Postgres(pg) => Handler::Postgres(Box::new(postgres::Service::new(pg, &build)?)),
        Protocol::Ssh(settings) => Handler::Ssh(Box::new(ssh::Service::new(settings, &build)?)),
        Protocol::Http(h) => Handler::Http(Box::new(http::Service::new(h, &build)?)),
    })
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
                    handler: Arc::new(handler(t, &config, shared)?),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let workers = Workers::start(config.proxy.workers).context("starting the session workers")?;
        let refusals_per_second = config.proxy.refusals_per_second;
        Ok(Arc::new(Proxy {
            config,
            routes,
            interceptor,
            audit,
            registry: Arc::default(),
            workers,
            owner_scans: Semaphore::new(1),
            refusal_limit: std::sync::Mutex::new(RateLimit::new(refusals_per_second, Duration::from_secs(1))),
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
        self.registry.counters.accepted.fetch_add(1, Relaxed);
        let local = match client.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "accepted connection has no local address");
                return;
            }
        };
        let intercepted = match self.interceptor.identify(local, peer) {
            Ok(i) => i,
            Err(unverified) => {
                self.refuse_unverified(endpoint::canonical(peer), unverified).await;
                return;
            }
        };
        let peer = endpoint::canonical(peer);
        let Some(route) = self.routes.get(intercepted.target) else {
            // The record names a target this config does not have: never guess.
            tracing::warn!(client = %peer, original = %intercepted.original, "refused connection: unknown target");
            self.record_refusal(
                peer,
                Some(process::describe(&intercepted).info),
                "intercept.unknown_target",
                "destination is no longer a configured target",
            )
            .await;
            return;
        };
        let described = process::describe(&intercepted);
        if let Some(note) = &described.note {
            tracing::warn!(pid = intercepted.tgid, comm = %intercepted.comm, note, "process changed after connect");
        }
        let session = Session::new(
            peer,
            intercepted.original,
            &route.target.name,
            route.target.protocol.as_str(),
            described.info,
            self.audit.clone(),
        );
        let mut start = session.event(EventKind::SessionStart);
        let mut decision = Decision::new(Verdict::Allow);
        if let Some(note) = described.note {
            decision = decision.reason(note);
        }
        start.decision = Some(decision);
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
            end = protocols::serve(&session, &route.handler, client, self.config.proxy.connect_timeout) => end,
            _ = force_close.changed() => SessionEnd::failed(EndStatus::Shutdown, "closed by agent shutdown after the drain timeout"),
        };
        self.registry.close(&session);
        if end.status == EndStatus::Unreachable {
            self.registry.counters.upstream_unreachable.fetch_add(1, Relaxed);
        }
        self.record_end(&session, end).await;
    }

    async fn record_end(&self, session: &Session, end: SessionEnd) {
        tracing::info!(
            session = %session.id,
            status = end.status.as_str(),
            bytes_to_server = session.traffic.to_server.load(Relaxed),
            bytes_to_client = session.traffic.to_client.load(Relaxed),
            "session ended"
        );
        let mut e = session.event(EventKind::SessionEnd);
        e.duration_us = Some(session.started.elapsed().as_micros() as u64);
        e.decision = end
            .reason
            .as_ref()
            .map(|reason| Decision::new(Verdict::Error).reason(reason.clone()));
        e.outcome = Some(Outcome {
            status: Some(end.status.as_str().to_owned()),
            bytes_to_client: Some(session.traffic.to_client.load(Relaxed)),
            bytes_to_server: Some(session.traffic.to_server.load(Relaxed)),
            ..Outcome::default()
        });
        if let Err(err) = self.audit.append(e).await {
            tracing::error!(session = %session.id, error = %err, "could not record session end");
        }
    }

    /// A connection the kernel did not redirect (or whose record is void)
    /// reached the listener: it is closed, and recorded with whoever really
    /// owns the client socket — its uid from the kernel's socket table, its
    /// process from /proc.
    async fn refuse_unverified(&self, peer: SocketAddr, unverified: Unverified) {
        self.registry.counters.refused_not_redirected.fetch_add(1, Relaxed);
        let (record, suppressed) = self
            .refusal_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(std::time::Instant::now());
        if let Some(n) = suppressed {
            let reason = format!("{n} more connections the kernel did not redirect, not recorded one by one");
            self.record_refusal(peer, None, "intercept.refusals_suppressed", &reason)
                .await;
        }
        if !record {
            return;
        }
        let rule = match &unverified {
            Unverified::NotRedirected { .. } => "intercept.not_redirected",
            Unverified::Stale { .. } => "intercept.stale_record",
            Unverified::PeerGone => "intercept.peer_gone",
            Unverified::Unreadable(_) => "intercept.unverifiable",
        };
        let process = match unverified.owner() {
            Some((uid, inode)) => {
                // Scans are serialised, and skipped while one runs: a flood of
                // direct connects cannot make the agent walk /proc in parallel.
                let pid = match self.owner_scans.try_acquire() {
                    Ok(_permit) => tokio::task::spawn_blocking(move || process::socket_owner(inode))
                        .await
                        .ok()
                        .flatten(),
                    Err(_) => None,
                };
                Some(match pid {
                    Some(pid) => process::from_proc(pid, uid),
                    None => ProcessInfo {
                        uid: Some(uid),
                        user: process::user_name(uid),
                        ..ProcessInfo::default()
                    },
                })
            }
            None => None,
        };
        tracing::warn!(
            client = %peer,
            uid = process.as_ref().and_then(|p| p.uid),
            pid = process.as_ref().and_then(|p| p.tgid),
            rule,
            "refused a connection the kernel did not redirect"
        );
        self.record_refusal(peer, process, rule, &unverified.reason()).await;
    }

    async fn record_refusal(&self, peer: SocketAddr, process: Option<ProcessInfo>, rule: &str, reason: &str) {
        let mut e = Event::new(EventKind::SessionStart);
        e.client_address = Some(peer.to_string().into());
        e.process = process.map(Arc::new);
        e.decision = Some(Decision::new(Verdict::Block).rule(rule).reason(reason));
        e.outcome = Some(Outcome {
            status: Some("refused".to_owned()),
            ..Outcome::default()
        });
        if let Err(err) = self.audit.append(e).await {
            tracing::error!(error = %err, "could not record a refused connection");
        }
    }
}
