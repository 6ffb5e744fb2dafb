//! Who is behind a connection: the kernel's record, enriched from /proc.
//!
//! The kernel's fields (pid, uid, gid, comm, cgroup id) are authoritative;
//! what /proc adds (exe, command line, cgroup path, unit, user name) is read
//! after accept and is absent when the process has already gone.
use std::{ffi::CStr, fs};

use crate::{audit::ProcessInfo, intercept::Intercepted, intercept::cgroup};

/// Command lines are cut to this many bytes: enough to recognise a job,
/// short enough to keep most secrets passed as arguments out of the record.
const CMDLINE_MAX: usize = 256;

pub fn describe(k: &Intercepted) -> ProcessInfo {
    let proc_dir = format!("/proc/{}", k.tgid);
    let exe = fs::read_link(format!("{proc_dir}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = fs::read(format!("{proc_dir}/cmdline"))
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| short_cmdline(&b));
    let cgroup_path = cgroup::cgroup_of(&k.tgid.to_string()).ok();
    let unit = cgroup_path.as_deref().and_then(cgroup::systemd_unit);
    ProcessInfo {
        pid: Some(k.pid),
        tgid: Some(k.tgid),
        uid: Some(k.uid),
        user: user_name(k.uid),
        gid: Some(k.gid),
        comm: Some(k.comm.clone()),
        exe,
        cmdline,
        cgroup: cgroup_path.map(|p| format!("/{p}")),
        unit,
    }
}

/// NUL-separated arguments joined by spaces, cut at a char boundary.
fn short_cmdline(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let mut s: String = String::from_utf8_lossy(raw).replace('\0', " ");
    if s.len() > CMDLINE_MAX {
        let mut cut = CMDLINE_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The user name of `uid` from the system's user database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: pwd, buf and result are valid for the call; getpwuid_r writes
    // strings into buf, which outlives their use below.
    let rc = unsafe { libc::getpwuid_r(uid, pwd.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: result is non-null and points at pwd, filled by getpwuid_r.
    let name = unsafe { CStr::from_ptr((*result).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_joined_and_cut() {
        assert_eq!(short_cmdline(b"psql\0-h\0db\0"), "psql -h db");
        let long = "x".repeat(1000);
        let cut = short_cmdline(long.as_bytes());
        assert!(cut.len() <= CMDLINE_MAX + '…'.len_utf8());
        let multibyte = "é".repeat(200);
        assert!(short_cmdline(multibyte.as_bytes()).ends_with('…'));
    }

    #[test]
    fn root_is_named() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn describes_this_process() {
        let me = Intercepted {
            original: "127.0.0.1:1".parse().unwrap(),
            tgid: std::process::id(),
            pid: std::process::id(),
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            comm: "test".into(),
        };
        let info = describe(&me);
        assert_eq!(info.exe, std::env::current_exe().ok().map(|p| p.display().to_string()));
        assert!(info.cmdline.is_some());
        assert!(info.cgroup.as_deref().is_some_and(|c| c.starts_with('/')));
    }
}
