//! cgroup v2: where the hierarchy is mounted, and the cgroups loopgate
//! attaches to.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The cgroup2 mount point, read from /proc/self/mountinfo (it is
/// /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    find_mount(&mountinfo, "cgroup2").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (loopgate needs cgroup v2)",
        )
    })
}

/// The mount point of the first mount of `fstype` in a mountinfo text.
pub(crate) fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mounts(mountinfo, fstype).next()
}

/// The mount points of every mount of `fstype` in a mountinfo text.
pub(crate) fn mounts<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != fstype {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup loopgate attaches its programs to.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Path relative to the cgroup2 mount, without leading slash.
    pub relative: String,
    /// Absolute path of its directory.
    pub path: PathBuf,
    /// cgroup id: the directory's inode, as `bpf_get_current_cgroup_id` sees it.
    pub id: u64,
}

impl Cgroup {
    /// Opens the cgroup at `relative` below `mount`, creating it if missing.
    pub fn open_or_create(mount: &Path, relative: &str) -> io::Result<Cgroup> {
        let path = mount.join(relative);
        fs::create_dir_all(&path)?;
        let id = fs::metadata(&path)?.ino();
        Ok(Cgroup {
            relative: relative.to_owned(),
            path,
            id,
        })
    }

    /// Whether the cgroup at `relative` (below the same mount) is this cgroup
    /// or one of its descendants — the programs apply to both.
    pub fn covers(&self, relative: &str) -> bool {
        let relative = relative.trim_matches('/');
        relative == self.relative
            || relative
                .strip_prefix(self.relative.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The cgroup v2 path of a process, relative to the mount ("" for the root).
pub fn cgroup_of(pid: &str) -> io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    unified_path(&text).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "process has no cgroup v2 membership"))
}

/// The `0::/path` line of a /proc/PID/cgroup text, without the leading slash.
pub(crate) fn unified_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/').to_owned())
}

/// The systemd unit a cgroup path belongs to: its innermost `.service` or
/// `.scope` component.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

/// The path, relative to `mount`, of the cgroup whose id (the inode of its
/// directory, as `bpf_get_current_cgroup_id` gives it) is `id`: the kernel
/// opens it from its file handle, so the answer is the kernel's, not a
/// process's claim.
pub fn path_of_id(mount: &Path, id: u64) -> io::Result<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// `FILEID_KERNFS`: a kernfs node handle is its 64-bit id.
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let dir = fs::File::open(mount)?;
    let handle = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: open_by_handle_at reads the handle and returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            (&raw const handle).cast::<libc::c_void>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let opened = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd()))?;
    let relative = path.strip_prefix(mount).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("cgroup {id} is at {}, outside {}", path.display(), mount.display()),
        )
    })?;
    Ok(relative.to_string_lossy().into_owned())
}

/// Moves the calling process into `cgroup`.
pub fn enter(cgroup: &Path) -> io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_mount(HYBRID, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_mount(HYBRID, "bpf"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let info = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(info, "cgroup2"), Some(PathBuf::from("/mnt/with space")));
    }

    #[test]
    fn optional_fields_do_not_confuse_the_parser() {
        let info = "29 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(info, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn reads_the_unified_line() {
        let text = "12:pids:/user.slice\n0::/loopgate-agents.slice/backup.service\n";
        assert_eq!(
            unified_path(text).as_deref(),
            Some("loopgate-agents.slice/backup.service")
        );
        assert_eq!(unified_path("0::/\n").as_deref(), Some(""));
    }

    #[test]
    fn unit_is_the_innermost_service_or_scope() {
        assert_eq!(
            systemd_unit("loopgate-agents.slice/etl.service").as_deref(),
            Some("etl.service")
        );
        assert_eq!(
            systemd_unit("user.slice/user-1000.slice/session-2.scope").as_deref(),
            Some("session-2.scope")
        );
        assert_eq!(systemd_unit("loopgate-agents"), None);
    }

    #[test]
    fn the_kernel_names_a_cgroup_by_its_id() {
        let mount = cgroup2_mount().unwrap();
        let own = cgroup_of("self").unwrap();
        let id = fs::metadata(mount.join(&own)).unwrap().ino();
        assert_eq!(path_of_id(&mount, id).unwrap(), own);
        assert!(path_of_id(&mount, u64::MAX - 7).is_err());
    }

    #[test]
    fn covers_itself_and_descendants_only() {
        let cg = Cgroup {
            relative: "loopgate-agents".into(),
            path: PathBuf::new(),
            id: 1,
        };
        assert!(cg.covers("loopgate-agents"));
        assert!(cg.covers("/loopgate-agents/job.service"));
        assert!(!cg.covers("loopgate-agents-other"));
        assert!(!cg.covers(""));
    }
}
