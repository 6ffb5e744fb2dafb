//! `loopgate run`: the agent's life from start to SIGTERM.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    approval::Approvals,
    audit::{AuditLog, AuditStore, Decision, Event, EventKind, Verdict},
    config::Config,
    control::{self, Access, ControlState},
    identity::OidcValidator,
    intercept::{self, Interceptor},
    mask::Masker,
    notify::notify,
    policy::{
        BuiltinPolicy, PolicyError, PolicyHandle, RegoPolicyConfig, Summary,
        bundle::{self, BundleSync},
    },
    protocols::Shared,
    proxy::{self, Listeners, Proxy},
};

/// How often addresses that change under a running agent (interface
/// addresses of `local` targets, host names, unix listeners) are re-read.
const REFRESH: Duration = Duration::from_secs(10);

fn spawn_refresh(interceptor: Arc<Interceptor>, plan: Arc<intercept::Plan>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (interceptor, plan) = (interceptor.clone(), plan.clone());
            match tokio::task::spawn_blocking(move || interceptor.refresh(&plan)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not refresh the interception rules"),
                Err(e) => tracing::error!(error = %e, "interception refresh failed"),
            }
        }
    });
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("loopgate run needs root (it loads eBPF programs and attaches them to cgroups)");
    }
    // First, so a stop asked for during start-up (systemd, an operator) is
    // taken once the agent is up, not the default action that kills it.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let cgroups = intercept::intercepted_cgroups(&config.interception())?;
    let config = Arc::new(config);
    let audit = AuditLog::new(
        AuditStore::open(config.audit.clone())
            .with_context(|| format!("opening the audit store in {}", config.audit.dir.display()))?,
    );

    let approvals = Approvals::open(&config.approvals, audit.clone())?;
    let recovered = approvals.recover().await.context("recording approvals left pending")?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "the previous run left approval requests pending; recorded as cancelled"
        );
    }
    let (shared, policy, bundle) = shared_state(&config, approvals.clone()).await?;
    let bundle_poll = Arc::new(tokio::sync::Notify::new());
    if let Some(sync) = &bundle {
        tokio::spawn(poll_bundle(sync.clone(), audit.clone(), bundle_poll.clone()));
    }

    // Listen first; the kernel steers the port to these sockets once
    // they are registered, whoever else holds the port.
    let port = config.intercept.listen_port;
    let listeners = Listeners::bind().await.context("listening on 127.0.0.1 and [::1]")?;
    let interceptor = Arc::new(Interceptor::start(&config.interception(), cgroups, listeners.fds())?);
    let proxy = Proxy::new(config.clone(), interceptor.clone(), audit.clone(), &shared)?;
    let _watcher = config.policy_dir.as_ref().map(|dir| {
        let (audit, runtime, dir_shown) = (audit.clone(), tokio::runtime::Handle::current(), dir.clone());
        crate::policy::watch(policy.clone(), dir.clone(), Duration::from_secs(1), move |result| {
            runtime.spawn(record_reload(audit.clone(), dir_shown.clone(), result));
        })
    });
    let web = match config.approvals.web_listen {
        Some(addr) => {
            let logins = Arc::new(crate::approval::WebLogins::default());
            let bound = crate::approval::serve_web(addr, approvals.clone(), logins.clone())
                .await
                .with_context(|| format!("listening for the approvals page on {addr}"))?;
            tracing::info!(address = %bound, "approvals page served");
            Some((logins, bound))
        }
        None => None,
    };
    let control = Arc::new(ControlState {
        proxy: proxy.clone(),
        interceptor: interceptor.clone(),
        approvals: approvals.clone(),
        oidc: shared.oidc.clone(),
        audit: audit.clone(),
        bundle: bundle.clone(),
        started: std::time::SystemTime::now(),
        web,
    });
    control::serve(&config.control.socket, control.clone(), Access::Root)
        .with_context(|| format!("opening the control socket {}", config.control.socket.display()))?;
    control::serve(&config.approvals.socket, control, Access::Approvers)
        .with_context(|| format!("opening the approvals socket {}", config.approvals.socket.display()))?;
    if let Some(addr) = config.approvals.http_listen {
        // Config validation guarantees [identity.oidc] with http_listen.
        let oidc = shared
            .oidc
            .clone()
            .context("[approvals] http_listen needs [identity.oidc]")?;
        crate::approval::serve_http(addr, approvals.clone(), oidc)
            .await
            .with_context(|| format!("listening for the approvals API on {addr}"))?;
    }

    audit
        .append(Event::new(EventKind::AgentStart))
        .await
        .context("recording agent start")?;
    // Refusals the kernel made (also while no agent ran), then what the
    // cgroups opened before the programs were attached.
    if let Some(ring) = interceptor.take_refusals() {
        tokio::spawn(proxy::record_kernel_refusals(
            ring,
            audit.clone(),
            config.clone(),
            proxy.registry.clone(),
        ));
    }
    proxy::sweep_preexisting(&interceptor, &config, &audit).await;
    spawn_refresh(interceptor.clone(), Arc::new(config.interception()));
    tracing::info!(
        port,
        cgroups = ?config.intercept.cgroups,
        targets = config.targets.len(),
        generation = interceptor.generation(),
        epoch = interceptor.epoch(),
        protections = ?interceptor.protections(),
        "loopgate is intercepting"
    );
    notify("READY=1");

    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy_task = tokio::spawn(proxy.clone().run(listeners, stop_rx));
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping (interception stays pinned)");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: stopping (interception stays pinned)");
                break;
            }
            _ = sighup.recv() => match &config.policy_dir {
                Some(dir) => record_reload(audit.clone(), dir.clone(), reload_off_the_workers(&policy, dir).await).await,
                None if bundle.is_some() => bundle_poll.notify_one(),
                None => tracing::info!("SIGHUP: no policy directory configured; nothing to reload"),
            },
        }
    }
    notify("STOPPING=1");
    // Held commands fail now (recorded) rather than wait out the drain.
    approvals.withdraw_all("the agent is stopping").await;
    let _ = stop_tx.send(true);
    if let Err(e) = proxy_task.await {
        tracing::error!(error = %e, "proxy task failed");
    }
    let _ = std::fs::remove_file(&config.control.socket);
    let _ = std::fs::remove_file(&config.approvals.socket);
    audit
        .append(Event::new(EventKind::AgentStop))
        .await
        .context("recording agent stop")?;
    audit.close().await.context("closing the audit store")?;
    // Last: tasks a session left behind (an approval's end record) ran on
    // its worker until the audit store closed.
    proxy.workers.stop();
    tracing::info!("stopped");
    Ok(())
}

/// What every target shares: the masker, the policy (a reloadable handle,
/// loaded now so a bad pack, or no bundle at all, stops the agent before it
/// intercepts anything) and the OIDC validator.
async fn shared_state(
    config: &Config,
    approvals: Arc<Approvals>,
) -> anyhow::Result<(Shared, Arc<PolicyHandle>, Option<Arc<BundleSync>>)> {
    let masker = Masker::from_config(&config.mask).context("[mask]")?;
    let mut bundle = None;
    let policy = match (&config.policy_dir, &config.policy_bundle) {
        (Some(dir), _) => {
            Arc::new(PolicyHandle::load(dir).with_context(|| format!("loading the policy pack in {}", dir.display()))?)
        }
        (None, Some(b)) => {
            let sync = BundleSync::start(b, &RegoPolicyConfig::default())
                .await
                .with_context(|| format!("loading the policy bundle {}", b.url))?;
            let handle = sync.handle();
            bundle = Some(sync);
            handle
        }
        (None, None) => Arc::new(PolicyHandle::new(Arc::new(BuiltinPolicy::new(config.policy.clone())))),
    };
    let oidc = match &config.identity {
        Some(identity) => {
            let validator = Arc::new(OidcValidator::from_config(identity).context("[identity.oidc]")?);
            // Keys now if the issuer answers; validation fails closed until it does.
            match tokio::time::timeout(Duration::from_secs(10), validator.refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "OIDC keys unavailable at start; tokens are refused until they are fetched")
                }
                Err(_) => tracing::warn!("OIDC issuer did not answer at start; tokens are refused until it does"),
            }
            validator.spawn_refresh();
            Some(validator)
        }
        None => None,
    };
    let engine: Arc<dyn crate::policy::PolicyEngine> = policy.clone();
    Ok((
        Shared {
            masker,
            policy: engine,
            oidc,
            approvals,
        },
        policy,
        bundle,
    ))
}

/// Asks the store for a newer policy bundle every `poll_secs` (and on
/// SIGHUP); what is loaded or refused goes into the audit trail.
async fn poll_bundle(sync: Arc<BundleSync>, audit: AuditLog, now: Arc<tokio::sync::Notify>) {
    let url = sync.status().url;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sync.poll_interval()) => {}
            _ = now.notified() => {}
        }
        let Some(outcome) = sync.poll().await else { continue };
        match &outcome {
            bundle::Outcome::Loaded(b) => tracing::info!(url = %url, bundle = %b.describe(), "policy bundle loaded"),
            bundle::Outcome::Refused(e) => {
                tracing::error!(url = %url, error = %e, "policy bundle refused; the previous policy stays")
            }
        }
        if let Err(e) = audit.append(bundle::event(&url, &outcome)).await {
            tracing::error!(error = %e, "could not record a policy bundle change");
        }
    }
}

/// Logs and records a policy reload: a bad pack never replaces a good one,
/// and the refusal is in the audit trail.
/// Compiles and swaps in the pack in `dir` on a blocking thread: a pack
/// takes up to its compile bound (a policy that loops, 20 s), which on a
/// runtime worker would stall the sessions scheduled there.
async fn reload_off_the_workers(policy: &Arc<PolicyHandle>, dir: &Path) -> Result<Summary, PolicyError> {
    let (policy, dir) = (policy.clone(), dir.to_path_buf());
    let shown = dir.clone();
    tokio::task::spawn_blocking(move || policy.reload(&dir))
        .await
        .unwrap_or_else(|e| {
            Err(PolicyError::Compile {
                dir: shown,
                message: format!("the reload stopped: {e}"),
            })
        })
}

async fn record_reload(audit: AuditLog, dir: PathBuf, result: Result<Summary, PolicyError>) {
    let mut event = Event::new(EventKind::PolicyReload);
    event.decision = Some(match &result {
        Ok(summary) => {
            tracing::info!(dir = %dir.display(), ?summary, "policy reloaded");
            Decision::new(Verdict::Allow).reason(format!("loaded {}", dir.display()))
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "policy reload refused; the previous policy stays");
            Decision::new(Verdict::Error)
                .rule("policy.reload")
                .reason(format!("reload refused, previous policy kept: {e}"))
        }
    });
    if let Err(e) = audit.append(event).await {
        tracing::error!(error = %e, "could not record a policy reload");
    }
}
