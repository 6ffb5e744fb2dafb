//! `loopgate run`: the agent's life from start to SIGTERM.
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    audit::{AuditLog, AuditStore, Event, EventKind},
    config::Config,
    control,
    intercept::{self, Interceptor},
    notify::notify,
    proxy::{Listeners, Proxy},
};

pub async fn run(config: Config) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("loopgate run needs root (it loads eBPF programs and attaches them to cgroups)");
    }
    let cgroups = intercept::intercepted_cgroups(&config)?;
    let config = Arc::new(config);
    let audit = AuditLog::new(
        AuditStore::open(config.audit.clone())
            .with_context(|| format!("opening the audit store in {}", config.audit.dir.display()))?,
    );

    // Listen first: the pinned programs may already be redirecting to us.
    let port = config.intercept.listen_port;
    let listeners = Listeners::bind(port)
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port} and [::1]:{port}"))?;
    let interceptor = Arc::new(Interceptor::start(&config, cgroups)?);
    let proxy = Proxy::new(config.clone(), interceptor.clone(), audit.clone())?;
    control::serve(&config.control.socket, proxy.clone(), interceptor.clone())
        .with_context(|| format!("opening the control socket {}", config.control.socket.display()))?;

    audit
        .append(Event::new(EventKind::AgentStart))
        .await
        .context("recording agent start")?;
    tracing::info!(
        port,
        cgroups = ?config.intercept.cgroups,
        targets = config.targets.len(),
        generation = interceptor.generation(),
        "loopgate is intercepting"
    );
    notify("READY=1");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let proxy_task = tokio::spawn(proxy.clone().run(listeners, stop_rx));
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping (interception stays pinned)"),
        _ = sigint.recv() => tracing::info!("SIGINT: stopping (interception stays pinned)"),
    }
    notify("STOPPING=1");
    let _ = stop_tx.send(true);
    if let Err(e) = proxy_task.await {
        tracing::error!(error = %e, "proxy task failed");
    }
    let _ = std::fs::remove_file(&config.control.socket);
    audit
        .append(Event::new(EventKind::AgentStop))
        .await
        .context("recording agent stop")?;
    audit.close().await.context("closing the audit store")?;
    tracing::info!("stopped");
    Ok(())
}
