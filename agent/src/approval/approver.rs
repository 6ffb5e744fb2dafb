//! Who is deciding. On the unix socket the kernel says who the peer is
//! (SO_PEERCRED, SO_PEERGROUPS: taken at connect, nothing the peer can
//! claim); with a token, the validated OIDC subject and groups.
use std::os::fd::AsRawFd as _;

use crate::{
    identity::{OidcValidator, TokenError, claims::ValidatedToken},
    intercept::cgroup,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approver {
    /// As recorded: `unix:<user>` or the token's subject.
    pub name: String,
    /// The unix user, for a socket peer.
    pub uid: Option<u32>,
    pub email: Option<String>,
    /// Unix group names, or the token's groups.
    pub groups: Vec<String>,
    /// The systemd unit of a socket peer: token bindings apply to it.
    pub unit: Option<String>,
}

impl Approver {
    /// The peer of a unix socket connection.
    pub fn from_peer(stream: &tokio::net::UnixStream) -> std::io::Result<Approver> {
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        let mut gids = peer_groups(stream)?;
        gids.push(cred.gid());
        gids.sort_unstable();
        gids.dedup();
        let user = crate::session::process::user_name(uid).unwrap_or_else(|| uid.to_string());
        let unit = cred
            .pid()
            .and_then(|pid| cgroup::cgroup_of(&pid.to_string()).ok())
            .and_then(|path| cgroup::systemd_unit(&path));
        Ok(Approver {
            name: format!("unix:{user}"),
            uid: Some(uid),
            email: None,
            groups: gids.into_iter().filter_map(group_name).collect(),
            unit,
        })
    }

    /// The identity of a validated token. On the socket, `peer` is who
    /// presented it: the token's `[[identity.binding]]` rules must accept
    /// that process, as they must for a database login.
    pub fn from_token(
        oidc: &OidcValidator,
        token: ValidatedToken,
        peer: Option<&Approver>,
    ) -> Result<Approver, TokenError> {
        if let Some(peer) = peer {
            oidc.check_binding(&token, peer.uid.unwrap_or(u32::MAX), peer.unit.as_deref())?;
        }
        Ok(Approver {
            name: token.subject,
            uid: None,
            email: token.email,
            groups: token.groups,
            unit: None,
        })
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The peer's supplementary groups as the kernel recorded them at connect.
fn peer_groups(stream: &tokio::net::UnixStream) -> std::io::Result<Vec<u32>> {
    let mut gids = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (gids.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes; the kernel writes at
        // most that and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                gids.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            gids.truncate(n);
            return Ok(gids);
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: the kernel says how much it needs.
        if err.raw_os_error() == Some(libc::ERANGE) && n > gids.len() && n <= 65_536 {
            gids.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

/// The group's name; the buffer grows while getgrgid_r says it is too small
/// (a group with many members), up to 1 MiB.
fn group_name(gid: u32) -> Option<String> {
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut result = std::ptr::null_mut();
        // SAFETY: grp, buf and result are valid for the call; getgrgid_r
        // fills grp with pointers into buf.
        let rc = unsafe { libc::getgrgid_r(gid, grp.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: result is non-null and points at grp, whose name points into buf.
        let name = unsafe { std::ffi::CStr::from_ptr((*result).gr_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_is_named_by_the_kernel() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let me = Approver::from_peer(&a).unwrap();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(me.uid, Some(uid));
        assert!(me.name.starts_with("unix:"), "{}", me.name);
        // SAFETY: getgid has no preconditions.
        let gid = unsafe { libc::getgid() };
        assert!(me.groups.contains(&group_name(gid).unwrap()), "{:?}", me.groups);
    }
}
