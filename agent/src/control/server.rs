//! The agent side of the control socket.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::SystemTime};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{CgroupStatus, MAX_LINE, Request, Response, StatusReport, TargetStatus};
use crate::{intercept::Interceptor, proxy::Proxy};

/// Binds the control socket at `path` (root-only) and serves it forever.
pub fn serve(path: &Path, proxy: Arc<Proxy>, interceptor: Arc<Interceptor>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let started = SystemTime::now();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let proxy = proxy.clone();
                    let interceptor = interceptor.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &proxy, &interceptor, started).await {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(
    stream: UnixStream,
    proxy: &Proxy,
    interceptor: &Interceptor,
    started: SystemTime,
) -> std::io::Result<()> {
    // The socket file is 0600 root; the peer check keeps it root-only even if
    // its mode is loosened by hand.
    let peer_uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE as u64)).read_line(&mut line).await?;
    let response = if peer_uid != 0 {
        Response::Error {
            message: "the control socket is root-only".into(),
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status) => Response::Status(status(proxy, interceptor, started)),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

fn status(proxy: &Proxy, interceptor: &Interceptor, started: SystemTime) -> StatusReport {
    let config = &proxy.config;
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_unix_ms: started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        listen_port: config.intercept.listen_port,
        generation: interceptor.generation(),
        cgroups: interceptor
            .cgroups()
            .iter()
            .map(|c| CgroupStatus {
                path: c.path.display().to_string(),
                id: c.id,
            })
            .collect(),
        targets: config
            .targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name.clone(),
                protocol: t.protocol.as_str().to_owned(),
                address: t.address.clone(),
                endpoints: t.endpoints.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        sessions: proxy.registry.sessions(),
        counters: proxy.registry.counters(),
    }
}
