//! Records what the kernel refused by itself: each refusal becomes a
//! `session_start` event with outcome `refused`, naming the process the
//! kernel saw, the destination and the rule. Those made while the agent
//! was down wait in the pinned ring buffer and are recorded at start.
use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    audit::{AuditLog, Decision, Event, EventKind, Outcome, ProcessInfo, TargetRef, Verdict},
    config::{Config, OnAttach},
    intercept::{
        Intercepted, Interceptor, diag,
        refusals::{KernelRefusal, RateLimit},
    },
};

use super::Registry;
use crate::session::process;

/// Reads the kernel's refusals until the agent stops.
pub async fn record_kernel_refusals(
    ring: RingBuf<MapData>,
    audit: AuditLog,
    config: Arc<Config>,
    registry: Arc<Registry>,
) {
    // SAFETY: the ring buffer owns its descriptor and moves into the
    // AsyncFd, which deregisters it before dropping the ring.
    let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the kernel's refusals; they go unrecorded");
            return;
        }
    };
    // One by one up to `[proxy] refusals_per_second`; beyond, one summary event.
    let mut limit = RateLimit::new(config.proxy.refusals_per_second, Duration::from_secs(1));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Drain what is there (also what was left while the agent was down).
        let mut batch = Vec::new();
        {
            let inner = ring.get_mut();
            while let Some(item) = inner.next() {
                batch.extend(KernelRefusal::decode(&item));
            }
        }
        for refusal in batch {
            let (record, summary) = limit.admit(Instant::now());
            if let Some(n) = summary {
                record_summary(&audit, n).await;
            }
            if record {
                registry.counters.refused_by_kernel.fetch_add(1, Relaxed);
                record_one(&audit, &config, &refusal).await;
            }
        }
        tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "the kernel's refusals can no longer be read");
                    return;
                }
            },
            _ = tick.tick() => {
                let n = limit.take_suppressed();
                if n > 0 {
                    record_summary(&audit, n).await;
                }
            }
        }
    }
}

async fn record_one(audit: &AuditLog, config: &Config, r: &KernelRefusal) {
    let target = r
        .rule
        .and_then(|i| config.targets.get(i as usize))
        .filter(|_| is_target_refusal(r));
    let destination = match (&r.destination, &r.unix_path) {
        (Some(d), _) => d.to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => String::new(),
    };
    let reason = match r.rule_id() {
        "intercept.egress_denied" => {
            let entry = match (r.transport, r.rule) {
                ("unix", Some(i)) => config.intercept.deny_unix.get(i as usize).map(|p| format!("unix:{p}")),
                (_, Some(i)) => config.intercept.deny.get(i as usize).map(ToString::to_string),
                _ => None,
            };
            let entry = entry.map_or_else(
                || format!("egress = \"{}\"", config.intercept.egress.as_str()),
                |e| format!("intercept.deny entry {e}"),
            );
            format!("{} to {destination} refused by {entry}", r.transport)
        }
        "intercept.agent_down" => format!("connect to {destination} refused: the agent was not listening"),
        "intercept.record_unavailable" => {
            format!("connect to {destination} refused: its record could not be written (map full)")
        }
        "intercept.transport_not_proxied" => {
            format!("{} to target {destination} refused: only TCP is proxied", r.transport)
        }
        "intercept.unix_target" => {
            format!("connect to unix socket {destination} refused: use the target's TCP address")
        }
        _ => format!("refused by the kernel ({destination})"),
    };
    tracing::warn!(
        rule = r.rule_id(),
        pid = r.tgid,
        uid = r.uid,
        comm = %r.comm,
        destination = %destination,
        "the kernel refused"
    );
    let mut e = Event::new(EventKind::SessionStart);
    e.process = Some(Arc::new(describe(r)));
    e.target = Some(Arc::new(TargetRef {
        name: target.map(|t| t.name.clone()).unwrap_or_default(),
        protocol: target.map_or(r.transport.to_owned(), |t| t.protocol.as_str().to_owned()),
        address: destination,
    }));
    e.decision = Some(Decision::new(Verdict::Block).rule(r.rule_id()).reason(reason));
    e.outcome = Some(Outcome {
        status: Some("refused".to_owned()),
        ..Outcome::default()
    });
    if let Err(err) = audit.append(e).await {
        tracing::error!(error = %err, "could not record a refusal by the kernel");
    }
}

/// Whether the refusal's rule index is a target's (not an egress entry's).
fn is_target_refusal(r: &KernelRefusal) -> bool {
    r.rule_id() != "intercept.egress_denied"
}

/// The process the kernel saw, described like an intercepted one.
fn describe(r: &KernelRefusal) -> ProcessInfo {
    let k = Intercepted {
        original: r.destination.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
        target: 0,
        tgid: r.tgid,
        pid: r.pid,
        uid: r.uid,
        gid: r.gid,
        cgroup_id: r.cgroup_id,
        comm: r.comm.clone(),
        exe: None,
        start_boottime: r.start_boottime,
    };
    process::describe(&k).info
}

async fn record_summary(audit: &AuditLog, n: u64) {
    let mut e = Event::new(EventKind::SessionStart);
    e.decision = Some(
        Decision::new(Verdict::Block)
            .rule("intercept.refusals_suppressed")
            .reason(format!(
                "{n} more refusals by the kernel in one second, not recorded one by one"
            )),
    );
    e.outcome = Some(Outcome {
        status: Some("refused".to_owned()),
        ..Outcome::default()
    });
    if let Err(err) = audit.append(e).await {
        tracing::error!(error = %err, "could not record suppressed refusals");
    }
}

/// Connections the intercepted cgroups opened before interception was in
/// place: closed (`on_attach = "kill"`, the default) or left open, and
/// recorded either way.
pub async fn sweep_preexisting(interceptor: &Interceptor, config: &Config, audit: &AuditLog) {
    let found = match interceptor.preexisting(&config.interception()) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "cannot list connections opened before interception");
            return;
        }
    };
    for (socket, target) in found {
        // Its owner first: a closed connection's process may exit at once.
        let process = match process::socket_owner(socket.inode) {
            Some(pid) => process::from_proc(pid, socket.uid),
            None => ProcessInfo {
                uid: Some(socket.uid),
                user: process::user_name(socket.uid),
                ..ProcessInfo::default()
            },
        };
        let (verdict, status, reason) = match config.intercept.on_attach {
            OnAttach::Kill => match diag::destroy(&socket) {
                Ok(()) => (
                    Verdict::Block,
                    "refused",
                    "opened before interception was attached; closed".to_owned(),
                ),
                Err(e) => (
                    Verdict::Error,
                    "error",
                    format!("opened before interception was attached; could not be closed: {e}"),
                ),
            },
            OnAttach::Record => (
                Verdict::Allow,
                "open",
                "opened before interception was attached; left open (on_attach = \"record\")".to_owned(),
            ),
        };
        tracing::warn!(local = %socket.local, remote = %socket.remote, uid = socket.uid, status, "connection opened before interception");
        let target = target.and_then(|i| config.targets.get(i));
        let mut e = Event::new(EventKind::SessionStart);
        e.client_address = Some(socket.local.to_string().into());
        e.process = Some(Arc::new(process));
        e.target = Some(Arc::new(TargetRef {
            name: target.map(|t| t.name.clone()).unwrap_or_default(),
            protocol: target.map_or("tcp".to_owned(), |t| t.protocol.as_str().to_owned()),
            address: socket.remote.to_string(),
        }));
        e.decision = Some(Decision::new(verdict).rule("intercept.preexisting").reason(reason));
        e.outcome = Some(Outcome {
            status: Some(status.to_owned()),
            ..Outcome::default()
        });
        if let Err(err) = audit.append(e).await {
            tracing::error!(error = %err, "could not record a connection opened before interception");
        }
    }
}
