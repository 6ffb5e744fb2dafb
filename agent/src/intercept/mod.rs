//! Interception: load the eBPF programs, attach them to the configured
//! cgroups, pin them so they outlive the agent, and answer the proxy's
//! question "who opened this connection, and where did it mean to go?".
mod bpffs;
pub mod cgroup;
pub mod endpoint;
mod pins;

use std::{collections::HashSet, fs::File, net::SocketAddr, path::Path, sync::Mutex};

use agent_ebpf::{ConnectRecord, Endpoint, SourceKey, maps, programs};
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, Program, links::FdLink},
};

pub use cgroup::Cgroup;
pub use pins::PinLayout;

use crate::config::Config;

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopgate-ebpf"));

/// Every program, in attach order. connect4/6 go last, so that by the time
/// a connect is redirected, its socket's other hooks are in place.
const PROGRAMS: [&str; 6] = [
    programs::SOCK_RELEASE,
    programs::SOCK_OPS,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::CONNECT4,
    programs::CONNECT6,
];

/// What the kernel recorded about an intercepted connection.
#[derive(Clone, Debug)]
pub struct Intercepted {
    /// Where the client meant to connect.
    pub original: SocketAddr,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
}

impl From<&ConnectRecord> for Intercepted {
    fn from(r: &ConnectRecord) -> Self {
        let end = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
        Intercepted {
            original: endpoint::from_endpoint(&r.original),
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            comm: String::from_utf8_lossy(&r.comm[..end]).into_owned(),
        }
    }
}

/// The attached, pinned interception state, owned by the running agent.
pub struct Interceptor {
    by_source: Mutex<HashMap<MapData, SourceKey, ConnectRecord>>,
    cgroups: Vec<Cgroup>,
    generation: u64,
    /// Keeps the programs' log buffer (and the object) alive.
    _ebpf: Ebpf,
}

impl Interceptor {
    /// Takes over (or creates) the pinned state: loads the programs with the
    /// pinned maps, brings the target map in line with `config`, attaches a
    /// new generation of links to every cgroup, then retires the old ones.
    pub fn start(config: &Config, cgroups: Vec<Cgroup>) -> anyhow::Result<Interceptor> {
        let layout = PinLayout::new(&config.intercept.pin_dir);
        bpffs::ensure(&config.intercept.pin_dir)
            .with_context(|| format!("preparing pin directory {}", config.intercept.pin_dir.display()))?;
        std::fs::create_dir_all(layout.maps())?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps())
            .override_global("PROXY_PORT", &config.intercept.listen_port, true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;
        start_kernel_log(&mut ebpf);
        sync_targets(&mut ebpf, config)?;
        for name in PROGRAMS {
            load_program(&mut ebpf, name)?;
        }

        let previous = layout.generations()?;
        let generation = previous.last().map_or(1, |g| g + 1);
        attach_generation(&mut ebpf, &layout, generation, &cgroups)?;
        for old in previous {
            match layout.retire(old) {
                Ok(n) => tracing::info!(generation = old, links = n, "retired previous links"),
                // Both generations attached is safe (the second redirect
                // sees the proxy address and passes); report and go on.
                Err(e) => {
                    tracing::error!(generation = old, error = %e, "could not retire previous links")
                }
            }
        }

        let by_source = ebpf
            .take_map(maps::BY_SOURCE)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::BY_SOURCE))?;
        Ok(Interceptor {
            by_source: Mutex::new(HashMap::try_from(by_source)?),
            cgroups,
            generation,
            _ebpf: ebpf,
        })
    }

    /// Takes the kernel's record for an accepted connection from `peer`.
    pub fn take(&self, peer: SocketAddr) -> Option<Intercepted> {
        let key = endpoint::source_key(peer);
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(Intercepted::from(&record))
    }

    pub fn cgroups(&self) -> &[Cgroup] {
        &self.cgroups
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Opens (creating if missing) the configured cgroups, refusing if this
/// process runs inside one of them: its own upstream connects would be
/// redirected to itself.
pub fn intercepted_cgroups(config: &Config) -> anyhow::Result<Vec<Cgroup>> {
    let mount = cgroup::cgroup2_mount()?;
    let own = cgroup::cgroup_of("self").context("reading this process's cgroup")?;
    let mut cgroups = Vec::new();
    for relative in &config.intercept.cgroups {
        let cg = Cgroup::open_or_create(&mount, relative)
            .with_context(|| format!("opening cgroup {}", mount.join(relative).display()))?;
        if cg.covers(&own) {
            bail!(
                "the agent runs inside /{own}, which it would intercept (intercept.cgroups has {relative:?}); \
                 run it outside the intercepted cgroups"
            );
        }
        cgroups.push(cg);
    }
    Ok(cgroups)
}

/// Removes all pinned state under `pin_dir`: programs detach, maps go.
/// Returns the number of links removed.
pub fn detach(pin_dir: &Path) -> anyhow::Result<usize> {
    let layout = PinLayout::new(pin_dir);
    let n = layout
        .remove_all()
        .with_context(|| format!("removing pinned state under {}", pin_dir.display()))?;
    // The version directory is ours; the pin dir itself may hold other
    // layouts' state, so remove it only when empty.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(n)
}

/// Makes the target map hold exactly the configured endpoints. New entries
/// go in before stale ones leave, so a target present in both configs is
/// intercepted throughout.
fn sync_targets(ebpf: &mut Ebpf, config: &Config) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::TARGETS)
        .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::TARGETS))?;
    let mut targets: HashMap<_, Endpoint, u8> = HashMap::try_from(map)?;
    let wanted: HashSet<Endpoint> = config
        .targets
        .iter()
        .flat_map(|t| t.endpoints.iter().copied().map(endpoint::to_endpoint))
        .collect();
    for ep in &wanted {
        targets
            .insert(ep, 1, 0)
            .with_context(|| format!("adding target {}", endpoint::from_endpoint(ep)))?;
    }
    let stale: Vec<Endpoint> = targets
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for ep in stale {
        targets.remove(&ep)?;
    }
    Ok(())
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    }
    .with_context(|| format!("loading program {name} (verifier)"))
}

fn attach_program(ebpf: &mut Ebpf, name: &str, cgroup: &File) -> anyhow::Result<FdLink> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match program {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(cgroup, mode)?;
            p.take_link(id)?.try_into()?
        }
        Program::SockOps(p) => {
            let id = p.attach(cgroup, mode)?;
            p.take_link(id)?.try_into()?
        }
        Program::CgroupSock(p) => {
            let id = p.attach(cgroup, mode)?;
            p.take_link(id)?.try_into()?
        }
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    };
    Ok(link)
}

/// Attaches every program to every cgroup and pins the links under
/// `generation`. On failure, the links of this generation are removed again
/// and the previous generation stays in charge.
fn attach_generation(ebpf: &mut Ebpf, layout: &PinLayout, generation: u64, cgroups: &[Cgroup]) -> anyhow::Result<()> {
    std::fs::create_dir_all(layout.generation_dir(generation))?;
    let result = (|| -> anyhow::Result<()> {
        for cg in cgroups {
            let dir = File::open(&cg.path).with_context(|| format!("opening {}", cg.path.display()))?;
            for name in PROGRAMS {
                let link = attach_program(ebpf, name, &dir)
                    .with_context(|| format!("attaching {name} to {}", cg.path.display()))?;
                let path = layout.link_path(generation, cg.id, name);
                // Dropping the PinnedLink closes our descriptor; the pin
                // keeps the link, so `loopgate detach` alone removes it.
                link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
            tracing::info!(cgroup = %cg.path.display(), cgroup_id = cg.id, generation, "attached");
        }
        Ok(())
    })();
    if result.is_err()
        && let Err(e) = layout.retire(generation)
    {
        tracing::error!(generation, error = %e, "could not remove partially attached links");
    }
    result
}

/// Forwards the programs' aya-log records to `tracing` (debug level).
fn start_kernel_log(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns the ring buffer's descriptor and moves into the
    // AsyncFd, which deregisters it before dropping the logger.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
