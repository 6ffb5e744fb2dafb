//! Who is behind a connection: the kernel's record, enriched from /proc.
//!
//! The kernel's fields are authoritative: pid, uid, gid, comm and cgroup
//! id, and — taken at connect — the caller's executable (inode, device) and
//! start time. The cgroup path and unit come from the kernel's cgroup id,
//! not from /proc. /proc adds the executable's path and a short command
//! line, read after accept, and only when the process there is still the
//! one that connected (same start time) running the same executable (same
//! inode): a client that exec's another program right after connecting, or
//! a pid reused by another process, does not lend its /proc to the record.
use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{LazyLock, Mutex},
};

use crate::{audit::ProcessInfo, intercept::Intercepted, intercept::cgroup};

/// Command lines are cut to this many bytes: enough to recognise a job,
/// short enough to keep most secrets passed as arguments out of the record.
const CMDLINE_MAX: usize = 256;

/// A process as described, with what /proc disagreed on.
pub struct Described {
    pub info: ProcessInfo,
    /// Set when /proc no longer shows the process that connected.
    pub note: Option<String>,
}

pub fn describe(k: &Intercepted) -> Described {
    let proc_dir = format!("/proc/{}", k.tgid);
    let cgroup_path = cgroup_path(k.cgroup_id);
    let unit = cgroup_path.as_deref().and_then(cgroup::systemd_unit);
    let mut info = ProcessInfo {
        pid: Some(k.pid),
        tgid: Some(k.tgid),
        uid: Some(k.uid),
        user: user_name(k.uid),
        gid: Some(k.gid),
        comm: Some(k.comm.clone()),
        exe: None,
        cmdline: None,
        cgroup: cgroup_path.map(|p| format!("/{p}")),
        unit,
    };
    let same_process = k.start_boottime == 0 || start_ticks(&proc_dir).is_some_and(|t| same_start(k.start_boottime, t));
    if !same_process {
        return Described {
            info,
            note: Some(format!(
                "process {} exited before it could be described (its pid may be another process's now)",
                k.tgid
            )),
        };
    }
    let exe_path = fs::read_link(format!("{proc_dir}/exe")).ok();
    let exe_now = fs::metadata(format!("{proc_dir}/exe")).ok().map(|m| (m.ino(), m.dev()));
    let mut note = None;
    match k.exe {
        Some(at_connect) if exe_now != Some(at_connect) => {
            let (ino, dev) = at_connect;
            note = Some(format!(
                "the process replaced its executable after connecting (at connect: inode {ino} on device {}:{}; now {})",
                libc::major(dev),
                libc::minor(dev),
                exe_path.as_ref().map_or("gone".to_owned(), |p| p.display().to_string())
            ));
        }
        _ => {
            info.exe = exe_path.map(|p| p.display().to_string());
            info.cmdline = fs::read(format!("{proc_dir}/cmdline"))
                .ok()
                .filter(|b| !b.is_empty())
                .map(|b| short_cmdline(&b));
        }
    }
    Described { info, note }
}

/// The cgroup path (relative to the mount) of a kernel cgroup id, cached:
/// ids are never reused while the kernel runs.
fn cgroup_path(id: u64) -> Option<String> {
    static CACHE: LazyLock<Mutex<HashMap<u64, String>>> = LazyLock::new(Mutex::default);
    static MOUNT: LazyLock<Option<PathBuf>> = LazyLock::new(|| cgroup::cgroup2_mount().ok());
    if id == 0 {
        return None;
    }
    if let Some(path) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        return Some(path.clone());
    }
    let path = cgroup::path_of_id(MOUNT.as_deref()?, id).ok()?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 4096 {
        cache.clear();
    }
    cache.insert(id, path.clone());
    Some(path)
}

/// A process's start time in clock ticks since boot, from /proc/PID/stat
/// (field 22).
fn start_ticks(proc_dir: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("{proc_dir}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks)
}

/// Whether a record's start time (ns) and /proc's (clock ticks) agree.
fn same_start(record_ns: u64, proc_ticks: u64) -> bool {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    record_ns / (1_000_000_000 / hz) == proc_ticks
}

/// The process that holds the socket with inode `inode`, by its open files
/// — who really connected when the kernel has no record. Scans /proc, so
/// callers rate-limit it.
pub fn socket_owner(inode: u32) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// What /proc says of a process the kernel did not attribute (a refused
/// connection's owner): every field is /proc's word, read now.
pub fn from_proc(tgid: u32, uid: u32) -> ProcessInfo {
    let proc_dir = format!("/proc/{tgid}");
    let comm = fs::read_to_string(format!("{proc_dir}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned());
    let cgroup_path = cgroup::cgroup_of(&tgid.to_string()).ok();
    ProcessInfo {
        pid: Some(tgid),
        tgid: Some(tgid),
        uid: Some(uid),
        user: user_name(uid),
        gid: None,
        comm,
        exe: fs::read_link(format!("{proc_dir}/exe"))
            .ok()
            .map(|p| p.display().to_string()),
        cmdline: fs::read(format!("{proc_dir}/cmdline"))
            .ok()
            .filter(|b| !b.is_empty())
            .map(|b| short_cmdline(&b)),
        unit: cgroup_path.as_deref().and_then(cgroup::systemd_unit),
        cgroup: cgroup_path.map(|p| format!("/{p}")),
    }
}

/// The command line's shape, never its values: the program, then each
/// option's name (`-H`, `--output`, `--user=?`) and every other argument
/// or option value as `?` (after `--`, everything is an argument), cut at a
/// char boundary. Arguments carry bearer tokens (`curl -H "Authorization:
/// …"`), passwords and PHI (`psql -c "… where ssn = …"`, URLs with search
/// parameters); the command itself is recorded by its protocol, masked.
fn short_cmdline(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let mut args = raw.split(|b| *b == 0);
    // argv[0] as far as its first space: a process may rewrite it (its
    // title) to hold anything.
    let program = args.next().unwrap_or_default();
    let program = program.split(|b| b.is_ascii_whitespace()).next().unwrap_or_default();
    let mut s = String::from_utf8_lossy(program).into_owned();
    let mut options = true;
    for arg in args {
        s.push(' ');
        match arg {
            b"--" if options => {
                options = false;
                s.push_str("--");
            }
            [b'-', ..]
                if options
                    && arg.len() > 1
                    && arg
                        .split(|b| *b == b'=')
                        .next()
                        .is_some_and(|name| name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')) =>
            {
                let name = arg.split(|b| *b == b'=').next().unwrap_or(arg);
                // `-ofile`-style glued short values are cut to the option letter.
                let name = if name.len() > 2 && name[1] != b'-' {
                    &name[..2]
                } else {
                    name
                };
                s.push_str(&String::from_utf8_lossy(name));
                if name.len() < arg.len() {
                    s.push_str("=?");
                }
            }
            _ => s.push('?'),
        }
    }
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

    fn me() -> Intercepted {
        let exe = fs::metadata("/proc/self/exe").unwrap();
        let mount = cgroup::cgroup2_mount().unwrap();
        let cgroup_id = fs::metadata(mount.join(cgroup::cgroup_of("self").unwrap()))
            .unwrap()
            .ino();
        Intercepted {
            original: "127.0.0.1:1".parse().unwrap(),
            target: 0,
            tgid: std::process::id(),
            pid: std::process::id(),
            uid: 0,
            gid: 0,
            cgroup_id,
            comm: "test".into(),
            exe: Some((exe.ino(), exe.dev())),
            start_boottime: 0,
        }
    }

    #[test]
    fn cmdline_keeps_option_names_and_never_values() {
        let raw = b"/usr/bin/curl\0-H\0Authorization: Bearer eyJsecret\0--data=ssn=123-45-6789\0-ofile\0https://fhir/Patient?name=Smith\0--\0-x\0";
        let line = short_cmdline(raw);
        assert_eq!(line, "/usr/bin/curl -H ? --data=? -o=? ? -- ?");
        // Something that only looks like an option, and a rewritten title.
        let sneaky = short_cmdline(b"postgres: ssn 123-45-6789\0-c\0-- x where ssn = '123-45-6789'\0");
        assert_eq!(sneaky, "postgres: -c ?");
        for secret in ["eyJ", "123-45", "Smith", "file"] {
            assert!(!line.contains(secret), "{line}");
        }
    }

    #[test]
    fn cmdline_is_joined_and_cut() {
        assert_eq!(short_cmdline(b"psql\0-h\0db\0"), "psql -h ?");
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
        let d = describe(&me());
        assert!(d.note.is_none());
        assert_eq!(
            d.info.exe,
            std::env::current_exe().ok().map(|p| p.display().to_string())
        );
        assert!(d.info.cmdline.is_some());
        let own = cgroup::cgroup_of("self").unwrap();
        assert_eq!(d.info.cgroup, Some(format!("/{own}")));
    }

    #[test]
    fn another_executable_at_accept_is_not_recorded_as_the_caller() {
        let mut k = me();
        k.exe = Some((1, 2));
        let d = describe(&k);
        assert_eq!(d.info.exe, None);
        assert_eq!(d.info.cmdline, None);
        assert!(
            d.note.as_deref().is_some_and(|n| n.contains("replaced its executable")),
            "{:?}",
            d.note
        );
        // The kernel's facts stay.
        assert_eq!(d.info.comm.as_deref(), Some("test"));
        assert!(d.info.cgroup.is_some());
    }

    #[test]
    fn a_pid_that_is_another_process_now_lends_nothing() {
        let mut k = me();
        k.start_boottime = 1;
        let d = describe(&k);
        assert_eq!((d.info.exe, d.info.cmdline), (None, None));
        assert!(d.note.is_some());
    }

    #[test]
    fn start_times_compare_at_tick_resolution() {
        let ticks = start_ticks(&format!("/proc/{}", std::process::id())).unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(same_start(ticks * (1_000_000_000 / hz) + 5, ticks));
        assert!(!same_start((ticks + 1) * (1_000_000_000 / hz), ticks));
    }

    #[test]
    fn finds_the_owner_of_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&listener)))
            .unwrap()
            .ino();
        assert_eq!(socket_owner(inode as u32), Some(std::process::id()));
    }
}
