//! The unix socket hook, `cgroup/connect_unix` (Linux ≥ 6.7): a connect to
//! a path a target's server listens on is refused (EPERM) and reported.
//!
//! aya 0.14 cannot load this attach type, so the program is assembled here
//! — thirty-odd instructions — and loaded, attached and pinned with the
//! bpf(2) syscall directly. Its maps are the pinned `LG_UNIX_TARGETS` and
//! `LG_EVENTS` of the aya object.
//!
//! The hook runs before the kernel resolves the path, so it sees the path
//! as the client spelled it. The agent puts every name of the socket into
//! the map (the configured path, its canonical form, the name the server
//! bound); a client that reaches the socket through a link or a relative
//! path of its own making is not matched — see ARCHITECTURE.md
//! "Unix sockets" for why the socket file's permissions close that.
use std::{
    ffi::CString,
    io,
    mem::offset_of,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use agent_ebpf::{NO_RULE, Refusal, Rule, State, UNIX_PATH_MAX, action, refusal};

/// `BPF_CGROUP_UNIX_CONNECT`.
const ATTACH_UNIX_CONNECT: u32 = 49;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_PIN: i64 = 6;
const BPF_LINK_CREATE: i64 = 28;

const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_PID_TGID: i32 = 14;
const HELPER_UID_GID: i32 = 15;
const HELPER_COMM: i32 = 16;
const HELPER_CGROUP_ID: i32 = 80;
const HELPER_PROBE_READ_KERNEL: i32 = 113;
const HELPER_RINGBUF_OUTPUT: i32 = 130;

/// Where the program keeps things on its stack (offsets from r10).
const KEY: i16 = -112;
const UADDRLEN: i16 = -128;
const UADDR: i16 = -120;
const EVENT: i16 = -336;
const EVENT_SIZE: i32 = size_of::<Refusal>() as i32;

/// Offsets in `struct bpf_sock_addr_kern`, the program's real context.
#[derive(Clone, Copy, Debug)]
pub struct ContextOffsets {
    pub uaddr: u32,
    pub uaddrlen: u32,
}

/// One eBPF instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

fn regs(dst: u8, src: u8) -> u8 {
    (src << 4) | dst
}
fn mov_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0xb7,
        regs: regs(dst, 0),
        off: 0,
        imm,
    }
}
fn mov_reg(dst: u8, src: u8) -> Insn {
    Insn {
        code: 0xbf,
        regs: regs(dst, src),
        off: 0,
        imm: 0,
    }
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0x07,
        regs: regs(dst, 0),
        off: 0,
        imm,
    }
}
fn rsh_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0x77,
        regs: regs(dst, 0),
        off: 0,
        imm,
    }
}
/// `*(u64 *)(dst + off) = imm`
fn st_dw(dst: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code: 0x7a,
        regs: regs(dst, 0),
        off,
        imm,
    }
}
/// `*(u32 *)(dst + off) = imm`
fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code: 0x62,
        regs: regs(dst, 0),
        off,
        imm,
    }
}
/// `*(u64 *)(dst + off) = src`
fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
    Insn {
        code: 0x7b,
        regs: regs(dst, src),
        off,
        imm: 0,
    }
}
/// `*(u32 *)(dst + off) = src`
fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
    Insn {
        code: 0x63,
        regs: regs(dst, src),
        off,
        imm: 0,
    }
}
/// `dst = *(u64 *)(src + off)`
fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    Insn {
        code: 0x79,
        regs: regs(dst, src),
        off,
        imm: 0,
    }
}
/// `dst = *(u32 *)(src + off)`
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    Insn {
        code: 0x61,
        regs: regs(dst, src),
        off,
        imm: 0,
    }
}
fn call(helper: i32) -> Insn {
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: helper,
    }
}
fn exit() -> Insn {
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    }
}
/// Conditions of forward jumps; their targets are patched once the
/// program is laid out.
#[derive(Clone, Copy)]
enum Cond {
    Always,
    /// `dst != imm`
    NeImm(u8, i32),
    /// `dst == imm`
    EqImm(u8, i32),
    /// `dst s<= imm`
    SleImm(u8, i32),
    /// `dst > imm` (unsigned)
    GtImm(u8, i32),
}

/// Two instructions: `dst = map fd` (a pseudo map-fd load).
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [
        Insn {
            code: 0x18,
            regs: regs(dst, 1),
            off: 0,
            imm: fd,
        },
        Insn {
            code: 0,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Allow,
    NoMatch,
    Report,
}

/// A program under construction, with forward jumps to labels.
#[derive(Default)]
struct Program {
    insns: Vec<Insn>,
    jumps: Vec<(usize, Cond, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Program {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn extend(&mut self, i: impl IntoIterator<Item = Insn>) {
        self.insns.extend(i);
    }
    fn jump(&mut self, cond: Cond, to: Label) {
        self.jumps.push((self.insns.len(), cond, to));
        self.insns.push(Insn {
            code: 0,
            regs: 0,
            off: 0,
            imm: 0,
        });
    }
    fn label(&mut self, label: Label) {
        self.labels.push((label, self.insns.len()));
    }
    /// `reg = r10 + off`, the usual stack-pointer argument.
    fn stack_arg(&mut self, reg: u8, off: i16) {
        self.push(mov_reg(reg, R10));
        self.push(add_imm(reg, i32::from(off)));
    }
    /// `*(r10 + dst) = *(ctx + field)`, `size` bytes, through
    /// `bpf_probe_read_kernel` (the real context is `bpf_sock_addr_kern`,
    /// whose fields the verifier does not expose); allows on failure.
    fn read_ctx(&mut self, dst: i16, size: i32, field: u32) {
        self.stack_arg(R1, dst);
        self.push(mov_imm(R2, size));
        self.push(mov_reg(R3, R6));
        self.push(add_imm(R3, field as i32));
        self.push(call(HELPER_PROBE_READ_KERNEL));
        self.jump(Cond::NeImm(R0, 0), Label::Allow);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, cond, to) in std::mem::take(&mut self.jumps) {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|(_, i)| *i)
                .expect("every label is placed");
            let off = (target - at - 1) as i16;
            self.insns[at] = match cond {
                Cond::Always => Insn {
                    code: 0x05,
                    regs: 0,
                    off,
                    imm: 0,
                },
                Cond::NeImm(r, imm) => Insn {
                    code: 0x55,
                    regs: regs(r, 0),
                    off,
                    imm,
                },
                Cond::EqImm(r, imm) => Insn {
                    code: 0x15,
                    regs: regs(r, 0),
                    off,
                    imm,
                },
                Cond::SleImm(r, imm) => Insn {
                    code: 0xd5,
                    regs: regs(r, 0),
                    off,
                    imm,
                },
                Cond::GtImm(r, imm) => Insn {
                    code: 0x25,
                    regs: regs(r, 0),
                    off,
                    imm,
                },
            };
        }
        self.insns
    }
}

/// The maps the program reads.
#[derive(Clone, Copy)]
pub struct Maps {
    /// `LG_UNIX`: path → rule.
    pub rules: i32,
    /// `LG_STATE`: the default egress action.
    pub state: i32,
    /// `LG_EVENTS`: refusals.
    pub events: i32,
}

/// The program: read the path the client passed and look it up. A target
/// or a deny entry is refused, an allow entry passes, and a path on no list
/// gets the default egress action; a refusal is reported like connect4's.
fn assemble(ctx: ContextOffsets, maps: Maps) -> Vec<Insn> {
    let mut p = Program::default();
    let event = |field: usize| EVENT + field as i16;
    p.push(mov_reg(R6, R1));
    // Zero the stack that is read: event, key, scratch.
    let mut at = EVENT;
    while at < 0 {
        p.push(st_dw(R10, at, 0));
        at += 8;
    }
    // scratch = ctx->uaddrlen, ctx->uaddr
    p.read_ctx(UADDRLEN, 4, ctx.uaddrlen);
    p.read_ctx(UADDR, 8, ctx.uaddr);
    // r7 = path bytes given: libpq passes all of sun_path (NUL padded),
    // others the path alone; both read as the NUL-padded key.
    p.push(ldx_w(R7, R10, UADDRLEN));
    p.push(add_imm(R7, -2));
    p.jump(Cond::SleImm(R7, 0), Label::Allow);
    p.jump(Cond::GtImm(R7, UNIX_PATH_MAX as i32), Label::Allow);
    p.push(ldx_dw(R8, R10, UADDR));
    p.push(add_imm(R8, 2));
    // key = sun_path[..len]
    p.stack_arg(R1, KEY);
    p.push(mov_reg(R2, R7));
    p.push(mov_reg(R3, R8));
    p.push(call(HELPER_PROBE_READ_KERNEL));
    p.jump(Cond::NeImm(R0, 0), Label::Allow);
    // rule = LG_UNIX[key]
    p.extend(ld_map_fd(R1, maps.rules));
    p.stack_arg(R2, KEY);
    p.push(call(HELPER_MAP_LOOKUP));
    p.jump(Cond::EqImm(R0, 0), Label::NoMatch);
    p.push(ldx_w(R9, R0, offset_of!(Rule, action) as i16));
    p.push(ldx_w(R1, R0, offset_of!(Rule, id) as i16));
    p.push(stx_w(R10, event(offset_of!(Refusal, rule)), R1));
    p.jump(Cond::EqImm(R9, action::ALLOW as i32), Label::Allow);
    p.push(st_w(R10, event(offset_of!(Refusal, reason)), refusal::EGRESS as i32));
    p.jump(Cond::NeImm(R9, action::REDIRECT as i32), Label::Report);
    p.push(st_w(
        R10,
        event(offset_of!(Refusal, reason)),
        refusal::UNIX_TARGET as i32,
    ));
    p.jump(Cond::Always, Label::Report);
    // No entry: the default egress action (LG_STATE[0]).
    p.label(Label::NoMatch);
    p.push(st_w(R10, UADDRLEN, 0));
    p.extend(ld_map_fd(R1, maps.state));
    p.stack_arg(R2, UADDRLEN);
    p.push(call(HELPER_MAP_LOOKUP));
    p.jump(Cond::EqImm(R0, 0), Label::Allow);
    p.push(ldx_w(R1, R0, offset_of!(State, default_action) as i16));
    p.jump(Cond::NeImm(R1, action::DENY as i32), Label::Allow);
    p.push(st_w(R10, event(offset_of!(Refusal, reason)), refusal::EGRESS as i32));
    p.push(st_w(R10, event(offset_of!(Refusal, rule)), NO_RULE as i32));
    // Report: the caller, the path, into the ring buffer; refuse.
    p.label(Label::Report);
    p.push(st_w(R10, event(offset_of!(Refusal, family)), libc::AF_UNIX));
    p.push(call(HELPER_CGROUP_ID));
    p.push(stx_dw(R10, event(offset_of!(Refusal, cgroup_id)), R0));
    p.push(call(HELPER_PID_TGID));
    p.push(stx_w(R10, event(offset_of!(Refusal, pid)), R0));
    p.push(rsh_imm(R0, 32));
    p.push(stx_w(R10, event(offset_of!(Refusal, tgid)), R0));
    p.push(call(HELPER_UID_GID));
    p.push(stx_w(R10, event(offset_of!(Refusal, uid)), R0));
    p.push(rsh_imm(R0, 32));
    p.push(stx_w(R10, event(offset_of!(Refusal, gid)), R0));
    p.stack_arg(R1, event(offset_of!(Refusal, comm)));
    p.push(mov_imm(R2, 16));
    p.push(call(HELPER_COMM));
    p.stack_arg(R1, event(offset_of!(Refusal, path)));
    p.push(mov_reg(R2, R7));
    p.push(mov_reg(R3, R8));
    p.push(call(HELPER_PROBE_READ_KERNEL));
    p.extend(ld_map_fd(R1, maps.events));
    p.stack_arg(R2, EVENT);
    p.push(mov_imm(R3, EVENT_SIZE));
    p.push(mov_imm(R4, 0));
    p.push(call(HELPER_RINGBUF_OUTPUT));
    p.push(mov_imm(R0, 0));
    p.push(exit());
    p.label(Label::Allow);
    p.push(mov_imm(R0, 1));
    p.push(exit());
    p.finish()
}

fn bpf(cmd: i64, attr: &mut [u8]) -> io::Result<i32> {
    // SAFETY: attr is a bpf_attr-sized buffer the command reads (and may
    // write into, e.g. the log).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// The loaded program.
pub struct UnixConnect {
    prog: OwnedFd,
}

impl UnixConnect {
    /// Assembles and loads the program. An older kernel (no
    /// `cgroup/connect_unix`) answers EINVAL, which becomes an error that
    /// says so.
    pub fn load(ctx: ContextOffsets, maps: Maps) -> io::Result<UnixConnect> {
        let insns = assemble(ctx, maps);
        let code: Vec<u8> = insns.iter().flat_map(|i| i.bytes()).collect();
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let name = b"lg_unix_connect\0";
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, PROG_TYPE_CGROUP_SOCK_ADDR);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, code.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        put_u32(&mut attr, 24, 1); // log_level
        put_u32(&mut attr, 28, log.len() as u32);
        put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
        attr[48..48 + 15].copy_from_slice(&name[..15]); // prog_name (16 bytes, NUL kept)
        put_u32(&mut attr, 68, ATTACH_UNIX_CONNECT); // expected_attach_type
        match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: a fresh descriptor from the kernel.
            Ok(fd) => Ok(UnixConnect {
                prog: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let verifier = String::from_utf8_lossy(&log[..end]);
                let hint = if e.raw_os_error() == Some(libc::EINVAL) && verifier.trim().is_empty() {
                    " (cgroup/connect_unix needs Linux 6.7 or newer)"
                } else {
                    ""
                };
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "loading the unix connect program: {e}{hint}; verifier: {}",
                        verifier.trim()
                    ),
                ))
            }
        }
    }

    /// Attaches to `cgroup` and pins the link at `pin`: from then on the
    /// pin alone keeps it, like the aya-loaded programs' links.
    pub fn attach_and_pin(&self, cgroup: BorrowedFd<'_>, pin: &Path) -> io::Result<()> {
        let mut attr = [0u8; 64];
        put_u32(&mut attr, 0, self.prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, cgroup.as_raw_fd() as u32);
        put_u32(&mut attr, 8, ATTACH_UNIX_CONNECT);
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: a fresh descriptor from the kernel.
        let link = unsafe { OwnedFd::from_raw_fd(link) };
        let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
        let mut attr = [0u8; 32];
        put_u64(&mut attr, 0, path.as_ptr() as u64);
        put_u32(&mut attr, 8, link.as_fd().as_raw_fd() as u32);
        bpf(BPF_OBJ_PIN, &mut attr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_inside_the_program_on_placed_labels() {
        let maps = Maps {
            rules: 3,
            state: 4,
            events: 5,
        };
        let insns = assemble(ContextOffsets { uaddr: 8, uaddrlen: 32 }, maps);
        let allow = insns.len() - 2;
        assert_eq!(insns[allow], mov_imm(R0, 1));
        assert_eq!(insns[allow - 2], mov_imm(R0, 0), "the refusing exit");
        for (i, insn) in insns.iter().enumerate() {
            if matches!(insn.code, 0x05 | 0x55 | 0x15 | 0xd5 | 0x25) {
                let to = i as i64 + 1 + i64::from(insn.off);
                assert!(to > i as i64 && to <= allow as i64, "jump at {i} to {to}");
            }
        }
        // The three map loads name the three maps.
        let fds: Vec<i32> = insns.iter().filter(|i| i.code == 0x18).map(|i| i.imm).collect();
        assert_eq!(fds, [3, 4, 5]);
        assert!(insns.len() < 140, "{} instructions", insns.len());
    }

    #[test]
    fn the_event_fits_the_stack_region() {
        assert!(i32::from(EVENT) + EVENT_SIZE <= i32::from(UADDRLEN));
        // A whole sun_path fits the key.
        assert!(i32::from(KEY) + UNIX_PATH_MAX as i32 <= 0);
        assert!(offset_of!(Refusal, path) + UNIX_PATH_MAX <= size_of::<Refusal>());
    }
}
