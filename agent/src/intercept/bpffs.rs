//! The BPF file system, where pinned programs and maps outlive the agent.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::cgroup::mounts;

/// The conventional bpffs mount point, mounted by loopgate if nothing is.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Makes sure `pin_dir` lies on a mounted bpffs (mounting one at
/// /sys/fs/bpf if needed), then creates it, root-only.
pub fn ensure(pin_dir: &Path) -> io::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let bpf_mounts: Vec<_> = mounts(&mountinfo, "bpf").collect();
    if !bpf_mounts.iter().any(|m| pin_dir.starts_with(m)) {
        let default = Path::new(DEFAULT_BPFFS);
        if !pin_dir.starts_with(default) || bpf_mounts.iter().any(|m| m == default) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not on a bpf file system", pin_dir.display()),
            ));
        }
        mount_bpffs(default)?;
    }
    std::fs::create_dir_all(pin_dir)
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    std::fs::create_dir_all(at)?;
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}
