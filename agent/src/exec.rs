//! `loopgate exec`: run a command inside an intercepted cgroup.
use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, bail};

use crate::{config::Config, intercept::cgroup};

/// Moves this process into the first intercepted cgroup, drops to `user`
/// if given, and replaces itself with `argv`; the command's exit status is
/// therefore the caller's. Returns only on failure.
pub fn exec(config: &Config, user: Option<&str>, argv: &[OsString]) -> anyhow::Result<()> {
    let Some((program, args)) = argv.split_first() else {
        bail!("no command given: loopgate exec -- CMD [ARGS...]");
    };
    let relative = config
        .intercept
        .cgroups
        .first()
        .context("no intercepted cgroup is configured")?;
    let dir = cgroup::cgroup2_mount()?.join(relative);
    if !dir.is_dir() {
        bail!(
            "{} does not exist; start the agent first (`loopgate run`)",
            dir.display()
        );
    }
    cgroup::enter(&dir).with_context(|| format!("joining {} (needs root)", dir.display()))?;
    close_ip_sockets_on_exec();
    let mut command = Command::new(program);
    command.args(args);
    if let Some(user) = user {
        let (uid, gid) = lookup_user(user)?;
        command.uid(uid).gid(gid);
        // std clears root's supplementary groups before it drops to uid.
    }
    let err = command.exec();
    Err(err).with_context(|| format!("cannot run {}", program.to_string_lossy()))
}

fn lookup_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == user || f[2] == user))
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .with_context(|| format!("no such user: {user}"))
}

/// Marks the IP sockets this process holds close-on-exec: a socket made
/// outside the cgroup keeps its creator's (hookless) cgroup, so passing one
/// down would let CMD reach a target without interception.
fn close_ip_sockets_on_exec() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = fds
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        let mut domain: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on a descriptor number we hold; a non-socket
        // answers ENOTSOCK and is left alone.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&raw mut domain).cast(),
                &mut len,
            )
        };
        if rc == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6) {
            // SAFETY: setting FD_CLOEXEC on a descriptor we hold.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}
