//! Interception: load the eBPF programs, attach them to the configured
//! cgroups (and the port owner to the agent's network namespace), pin them
//! so they outlive the agent, and answer the proxy's question "who opened
//! this connection, and where did it mean to go?" — from kernel state the
//! client cannot forge.
mod bpffs;
pub mod btf;
pub mod cgroup;
pub mod diag;
pub mod endpoint;
mod pins;
pub mod refusals;
pub mod rules;
pub mod settings;
mod sync;
mod unix;

use std::{
    collections::HashSet,
    fs::File,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::Path,
    sync::Mutex,
};

use agent_ebpf::{ConnectRecord, LISTENER_V4, LISTENER_V6, State, action, globals, maps, programs};
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf, SockMap},
    programs::{CgroupAttachMode, Program, links::FdLink},
};

pub use cgroup::Cgroup;
pub use pins::PinLayout;
pub use settings::{Plan, TargetMatch};

use settings::Egress;

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopgate-ebpf"));

/// The cgroup programs, in attach order: connect4/6 go last, so that by the
/// time a connect is redirected, its socket's other hooks are in place.
const CGROUP_PROGRAMS: [&str; 7] = [
    programs::SOCK_RELEASE,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::CONNECT4,
    programs::CONNECT6,
];

/// What the kernel recorded about an intercepted connection.
#[derive(Clone, Debug)]
pub struct Intercepted {
    /// Where the client meant to connect.
    pub original: SocketAddr,
    /// Index of the target it matched (`plan.targets`).
    pub target: usize,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// The caller's executable at connect time (inode, userspace st_dev);
    /// None when the kernel offsets are unknown.
    pub exe: Option<(u64, u64)>,
    /// The caller's start time, ns since boot (0 if unknown).
    pub start_boottime: u64,
}

impl Intercepted {
    fn from_record(r: &ConnectRecord) -> Self {
        let end = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
        Intercepted {
            original: endpoint::from_endpoint(&r.original),
            target: r.target as usize,
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            cgroup_id: r.cgroup_id,
            comm: String::from_utf8_lossy(&r.comm[..end]).into_owned(),
            exe: (r.exe_ino != 0).then(|| (r.exe_ino, diag::user_dev(r.exe_dev))),
            start_boottime: r.start_boottime,
        }
    }
}

/// Why an accepted connection has no valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unverified {
    /// The client socket is gone (it closed before the look-up).
    PeerGone,
    /// The client socket exists but was never redirected by the kernel: a
    /// direct connect to the agent's port, or a socket that only bound a
    /// redirected one's source address. `uid`/`inode` name its owner.
    NotRedirected { uid: u32, inode: u32 },
    /// Its record was written for an earlier agent.
    Stale { uid: u32, inode: u32 },
    /// The kernel's tables could not be read.
    Unreadable(String),
}

impl Unverified {
    pub fn reason(&self) -> String {
        match self {
            Unverified::PeerGone => "the client socket closed before it could be verified".to_owned(),
            Unverified::NotRedirected { .. } => "connection was not redirected by the kernel".to_owned(),
            Unverified::Stale { .. } => "its kernel record was written for an earlier agent run".to_owned(),
            Unverified::Unreadable(e) => format!("the kernel's socket table could not be read: {e}"),
        }
    }

    /// The owner of the client socket, as the kernel's table says.
    pub fn owner(&self) -> Option<(u32, u32)> {
        match self {
            Unverified::NotRedirected { uid, inode } | Unverified::Stale { uid, inode } => Some((*uid, *inode)),
            _ => None,
        }
    }
}

/// Which protections the kernel gives this agent.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Protections {
    /// Unix socket connects are checked (`cgroup/connect_unix`): targets
    /// refused, and `egress` applied.
    pub unix: bool,
    /// The caller's executable is taken from the kernel at connect time.
    pub exe_identity: bool,
    /// `egress` in force.
    pub egress: String,
}

/// The attached, pinned interception state, owned by the running agent.
pub struct Interceptor {
    records: HashMap<MapData, u64, ConnectRecord>,
    refusals: Mutex<Option<RingBuf<MapData>>>,
    sync: Mutex<sync::Synced>,
    cgroups: Vec<Cgroup>,
    generation: u64,
    epoch: u64,
    protections: Protections,
    /// flock on the pin directory: one agent per interception state.
    _lock: File,
    /// Keeps the programs' log buffer (and the object) alive.
    _ebpf: Ebpf,
}

/// The agent's two listeners, handed to the kernel as the only sockets its
/// port may reach.
pub struct ListenerFds {
    pub v4: RawFd,
    pub v6: RawFd,
}

impl Interceptor {
    /// Takes over (or creates) the pinned state: loads the programs with the
    /// pinned maps, brings the rules in line with `plan`, starts a new
    /// epoch, attaches a new generation of links (the port owner first, then
    /// the agent's listeners, then every cgroup), and retires the old ones.
    pub fn start(plan: &Plan, cgroups: Vec<Cgroup>, listeners: ListenerFds) -> anyhow::Result<Interceptor> {
        let pin_dir = &plan.settings.pin_dir;
        let layout = PinLayout::new(pin_dir);
        bpffs::ensure(pin_dir).with_context(|| format!("preparing pin directory {}", pin_dir.display()))?;
        let lock = lock(pin_dir)?;
        std::fs::create_dir_all(layout.maps())?;
        check_pinned_maps(&layout.maps())?;

        let kernel_btf =
            btf::Btf::kernel().context("reading the kernel's BTF (loopgate needs CONFIG_DEBUG_INFO_BTF)")?;
        let offsets = kernel_btf.kernel_offsets();
        let unix_ctx = unix_context(&kernel_btf);
        drop(kernel_btf);

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps())
            .override_global(globals::PROXY_PORT, &plan.settings.listen_port, true)
            .override_global(globals::KERNEL, &offsets, true)
            .load(EBPF_OBJECT)
            .context("loading the eBPF programs")?;
        start_kernel_log(&mut ebpf);
        let names: Vec<&str> = CGROUP_PROGRAMS.iter().copied().chain([programs::SK_LOOKUP]).collect();
        for name in names {
            load_program(&mut ebpf, name)?;
        }
        let unix = load_unix_connect(&ebpf, unix_ctx, plan)?;

        let mut synced = sync::Synced::default();
        synced.rules(&mut ebpf, plan)?;
        synced.unix_rules(&mut ebpf, plan)?;
        let epoch = next_epoch(&mut ebpf, plan.settings.egress)?;

        let previous = layout.generations()?;
        let generation = previous.last().map_or(1, |g| g + 1);
        attach_generation(&mut ebpf, &layout, generation, &cgroups, &listeners, unix.as_ref())?;
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
        for other in PinLayout::other_versions(pin_dir)? {
            match other.remove_all() {
                Ok(n) => tracing::info!(links = n, "removed interception state of another layout version"),
                Err(e) => tracing::error!(error = %e, "could not remove another layout version's state"),
            }
        }

        let records = ebpf
            .take_map(maps::BY_COOKIE)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::BY_COOKIE))?;
        let events = ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::EVENTS))?;
        let protections = Protections {
            unix: unix.is_some(),
            exe_identity: offsets.valid & agent_ebpf::offsets::EXE != 0,
            egress: plan.settings.egress.as_str().to_owned(),
        };
        Ok(Interceptor {
            records: HashMap::try_from(records)?,
            refusals: Mutex::new(Some(RingBuf::try_from(events)?)),
            sync: Mutex::new(synced),
            cgroups,
            generation,
            epoch,
            protections,
            _lock: lock,
            _ebpf: ebpf,
        })
    }

    /// Proves that the connection accepted on `local` from `peer` is one
    /// the connect hook redirected, and returns what the kernel recorded.
    ///
    /// The kernel's socket table names the client socket by the 4-tuple
    /// and gives its cookie; the record is keyed by that cookie, which no
    /// other socket can have. A socket that binds a redirected socket's
    /// source port later is another socket with another cookie.
    pub fn identify(&self, local: SocketAddr, peer: SocketAddr) -> Result<Intercepted, Unverified> {
        let socket = match diag::peer_of(local, peer) {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Unverified::PeerGone),
            Err(e) => return Err(Unverified::Unreadable(e.to_string())),
        };
        let Ok(record) = self.records.get(&socket.cookie, 0) else {
            return Err(Unverified::NotRedirected {
                uid: socket.uid,
                inode: socket.inode,
            });
        };
        if record.epoch != self.epoch || record.cookie != socket.cookie {
            return Err(Unverified::Stale {
                uid: socket.uid,
                inode: socket.inode,
            });
        }
        Ok(Intercepted::from_record(&record))
    }

    /// The ring buffer of kernel refusals; taken once by the reader task.
    pub fn take_refusals(&self) -> Option<RingBuf<MapData>> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Brings addresses that change while the agent runs (this host's
    /// interface addresses for `local` targets, host names, unix listeners'
    /// bound names) into the kernel's maps.
    pub fn refresh(&self, plan: &Plan) -> anyhow::Result<()> {
        let mut synced = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        synced.refresh(plan)
    }

    /// TCP connections that processes in the intercepted cgroups hold to
    /// targets or refused destinations: opened before the programs were
    /// attached (or while they were not), so they never met the hooks.
    /// Each comes with the index of the target it reaches, if any.
    pub fn preexisting(&self, plan: &Plan) -> anyhow::Result<Vec<(diag::InetSocket, Option<usize>)>> {
        let table = sync::build_table(plan, &rules::local_addresses())?;
        let inside = cgroup_ids_below(&self.cgroups);
        let sockets = diag::tcp_sockets().context("listing TCP connections")?;
        Ok(sockets
            .into_iter()
            .filter(|s| inside.contains(&s.cgroup_id))
            .filter_map(|s| match table.lookup(s.remote) {
                Some((rules::Kind::Target, id)) => Some((s, Some(id as usize))),
                Some((rules::Kind::Deny, _)) => Some((s, None)),
                None if plan.settings.egress == Egress::Deny => Some((s, None)),
                _ => None,
            })
            .collect())
    }

    pub fn cgroups(&self) -> &[Cgroup] {
        &self.cgroups
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn protections(&self) -> &Protections {
        &self.protections
    }
}

/// Opens (creating if missing) the configured cgroups, refusing if this
/// process runs inside one of them: its own upstream connects would be
/// redirected to itself.
pub fn intercepted_cgroups(plan: &Plan) -> anyhow::Result<Vec<Cgroup>> {
    let mount = cgroup::cgroup2_mount()?;
    let own = cgroup::cgroup_of("self").context("reading this process's cgroup")?;
    let mut cgroups = Vec::new();
    for relative in &plan.settings.cgroups {
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

/// Removes all pinned state under `pin_dir`, of every layout version:
/// programs detach, maps go. Returns the number of links removed.
pub fn detach(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for layout in PinLayout::other_versions(pin_dir)?
        .into_iter()
        .chain([PinLayout::new(pin_dir)])
    {
        n += layout
            .remove_all()
            .with_context(|| format!("removing pinned state under {}", pin_dir.display()))?;
    }
    // The version directories are ours; the pin dir itself may hold other
    // state, so remove it only when empty.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(n)
}

/// Refuses pinned maps whose key or value size is not this build's: aya
/// reuses a pin by name, and a map of another shape would be read wrong.
/// (A real layout change bumps `LAYOUT_VERSION` and gets a directory of
/// its own; this catches a build that changed a type and forgot to.)
fn check_pinned_maps(dir: &Path) -> anyhow::Result<()> {
    use agent_ebpf::{ConnectRecord, Rule, RuleAddr, UnixPath};
    let expected: [(&str, usize, usize); 5] = [
        (maps::RULES, 4 + size_of::<RuleAddr>(), size_of::<Rule>()),
        (maps::BY_COOKIE, 8, size_of::<ConnectRecord>()),
        (maps::LISTENERS, 4, 4),
        (maps::STATE, 4, size_of::<State>()),
        (maps::UNIX, size_of::<UnixPath>(), size_of::<Rule>()),
    ];
    for (name, key, value) in expected {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            bail!(
                "the pinned map {} was made by another build (key {} / value {} bytes, this build: {key} / {value}); \
                 run `loopgate detach` to start afresh",
                path.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// Takes the pin directory's lock, or says which agent holds it.
fn lock(pin_dir: &Path) -> anyhow::Result<File> {
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another loopgate agent is running with intercept.pin_dir {}",
                pin_dir.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", pin_dir.display()));
    }
    Ok(dir)
}

/// Starts a new epoch in `LG_STATE`, so records written for an earlier
/// agent are void, and sets the default egress action.
fn next_epoch(ebpf: &mut Ebpf, egress: Egress) -> anyhow::Result<u64> {
    let map = ebpf
        .map_mut(maps::STATE)
        .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::STATE))?;
    let mut state: Array<_, State> = Array::try_from(map)?;
    let previous = state.get(&0, 0).unwrap_or_default();
    let next = State {
        epoch: previous.epoch + 1,
        default_action: match egress {
            Egress::Deny => action::DENY,
            Egress::Allow | Egress::DenyListed => action::ALLOW,
        },
        _pad: 0,
        netns_cookie: own_netns_cookie().context("reading this network namespace's cookie")?,
    };
    state.set(0, next, 0)?;
    Ok(next.epoch)
}

/// The cookie of the agent's network namespace (`SO_NETNS_COOKIE`), as
/// `bpf_get_netns_cookie` gives it to the programs.
fn own_netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_NETNS_COOKIE writes a u64 into cookie.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    }
    .with_context(|| format!("loading program {name} (verifier)"))
}

fn attach_program(ebpf: &mut Ebpf, name: &str, target: &File) -> anyhow::Result<FdLink> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match program {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(target, mode)?;
            p.take_link(id)?.try_into()?
        }
        Program::CgroupSock(p) => {
            let id = p.attach(target, mode)?;
            p.take_link(id)?.try_into()?
        }
        Program::SkLookup(p) => {
            let id = p.attach(target)?;
            p.take_link(id)?.into()
        }
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    };
    Ok(link)
}

/// Attaches a generation and pins its links: the port owner on this
/// network namespace, then the listeners into its map, then every program
/// on every cgroup. On failure, the links of this generation are removed
/// again and the previous generation stays in charge.
fn attach_generation(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    generation: u64,
    cgroups: &[Cgroup],
    listeners: &ListenerFds,
    unix: Option<&unix::UnixConnect>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(layout.generation_dir(generation))?;
    let result = (|| -> anyhow::Result<()> {
        let pin = |ebpf: &mut Ebpf, name: &str, target: &File, owner: &str| -> anyhow::Result<()> {
            let link = attach_program(ebpf, name, target).with_context(|| format!("attaching {name} to {owner}"))?;
            let path = layout.link_path(generation, owner, name);
            // Dropping the PinnedLink closes our descriptor; the pin
            // keeps the link, so `loopgate detach` alone removes it.
            link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            Ok(())
        };
        let netns = File::open("/proc/self/ns/net").context("opening this network namespace")?;
        pin(ebpf, programs::SK_LOOKUP, &netns, "netns")?;
        register_listeners(ebpf, listeners)?;
        for cg in cgroups {
            let dir = File::open(&cg.path).with_context(|| format!("opening {}", cg.path.display()))?;
            let owner = cg.id.to_string();
            if let Some(unix) = unix {
                let path = layout.link_path(generation, &owner, programs::UNIX_CONNECT);
                unix.attach_and_pin(dir.as_fd(), &path)
                    .with_context(|| format!("attaching {} to {owner}", programs::UNIX_CONNECT))?;
            }
            for name in CGROUP_PROGRAMS {
                pin(ebpf, name, &dir, &owner)?;
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

/// Where `struct bpf_sock_addr_kern` (the unix program's real context)
/// keeps the client's address; the common layout when BTF lacks it.
fn unix_context(btf: &btf::Btf) -> unix::ContextOffsets {
    unix::ContextOffsets {
        uaddr: btf.offset("bpf_sock_addr_kern", "uaddr").unwrap_or(8),
        uaddrlen: btf.offset("bpf_sock_addr_kern", "uaddrlen").unwrap_or(32),
    }
}

/// Loads the agent-assembled unix connect program over the object's maps,
/// when the config has unix rules or egress is `deny`. Unix targets on a
/// kernel without the hook stop the agent; `egress = "deny"` there covers
/// IP only, and says so.
fn load_unix_connect(ebpf: &Ebpf, ctx: unix::ContextOffsets, plan: &Plan) -> anyhow::Result<Option<unix::UnixConnect>> {
    let targets = plan.targets.iter().any(|t| !t.unix.is_empty());
    let lists = !plan.settings.deny_unix.is_empty() || !plan.settings.allow_unix.is_empty();
    let deny = plan.settings.egress == Egress::Deny;
    if !(targets || lists || deny) {
        return Ok(None);
    }
    let fd = |name: &str| -> anyhow::Result<i32> {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        Ok(map_data(map)?.fd().as_fd().as_raw_fd())
    };
    let maps = unix::Maps {
        rules: fd(maps::UNIX)?,
        state: fd(maps::STATE)?,
        events: fd(maps::EVENTS)?,
    };
    match unix::UnixConnect::load(ctx, maps) {
        Ok(program) => Ok(Some(program)),
        Err(e) if targets || lists => {
            Err(anyhow::Error::new(e).context("the config has unix socket targets or entries"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "egress = \"deny\" covers IP connects only: unix socket connects are not controlled on this kernel");
            Ok(None)
        }
    }
}

/// The MapData behind any map kind.
fn map_data(map: &aya::maps::Map) -> anyhow::Result<&MapData> {
    use aya::maps::Map;
    Ok(match map {
        Map::HashMap(m) | Map::LruHashMap(m) | Map::Array(m) | Map::RingBuf(m) | Map::LpmTrie(m) | Map::SockMap(m) => m,
        _ => bail!("unexpected map type"),
    })
}

/// Puts the agent's listeners into `LG_LISTENERS`: from now on they are
/// what the port reaches (the kernel removes them when they close).
fn register_listeners(ebpf: &mut Ebpf, listeners: &ListenerFds) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::LISTENERS)
        .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::LISTENERS))?;
    let mut sockets: SockMap<_> = SockMap::try_from(map)?;
    struct Fd(RawFd);
    impl std::os::fd::AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    sockets
        .set(LISTENER_V4, &Fd(listeners.v4), 0)
        .context("registering the IPv4 listener")?;
    sockets
        .set(LISTENER_V6, &Fd(listeners.v6), 0)
        .context("registering the IPv6 listener")?;
    Ok(())
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

/// The cgroup ids of `cgroups` and every cgroup below them, now.
pub fn cgroup_ids_below(cgroups: &[Cgroup]) -> HashSet<u64> {
    fn walk(dir: &Path, out: &mut HashSet<u64>) {
        if let Ok(meta) = std::fs::metadata(dir) {
            out.insert(std::os::unix::fs::MetadataExt::ino(&meta));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = HashSet::new();
    for cg in cgroups {
        walk(&cg.path, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use agent_ebpf::*;

    /// The map types have no implicit padding: the programs build them on
    /// the stack, and the verifier refuses uninitialised bytes.
    #[test]
    fn shared_layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<ConnectRecord>(), 5 * 8 + 20 + 6 * 4 + 16 + 4);
        assert_eq!(
            size_of::<Refusal>(),
            2 * 4 + 2 * 8 + 20 + 7 * 4 + 16 + UNIX_PATH_MAX + 4
        );
        assert_eq!(size_of::<Refusal>() % 8, 0);
        assert_eq!(size_of::<RuleAddr>(), 18);
        assert_eq!(size_of::<Rule>(), 8);
        assert_eq!(size_of::<State>(), 24);
    }
}
