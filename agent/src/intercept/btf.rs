//! Field offsets of kernel structs, read from the running kernel's BTF.
//!
//! The eBPF programs follow a few kernel pointers (the caller's executable,
//! a socket's cgroup, a unix socket's bound name) with
//! `bpf_probe_read_kernel`. Struct layouts differ between kernel builds, so
//! the offsets come from `/sys/kernel/btf/vmlinux` at load time — CO-RE
//! done by the loader, as the Rust toolchain cannot emit relocations.
//!
//! Only what offsets need is parsed: the type section's structs and unions
//! and the string section; every other kind is skipped by its size.
use std::{collections::HashMap, io, path::Path};

use agent_ebpf::{KernelOffsets, offsets};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

enum Type {
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: a name for `type_id`.
    Alias {
        type_id: u32,
    },
    Other,
}

/// The struct and union layouts of one BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Index i holds type id i + 1.
    types: Vec<Type>,
    /// Struct name → type id (first definition wins).
    structs: HashMap<String, u32>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> io::Result<Btf> {
        Btf::read(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn read(path: &Path) -> io::Result<Btf> {
        let data = std::fs::read(path)?;
        Btf::parse(&data).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    pub fn parse(data: &[u8]) -> io::Result<Btf> {
        let u16_at = |at: usize| -> io::Result<u16> {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| invalid("truncated"))
        };
        let u32_at = |at: usize| -> io::Result<u32> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("truncated"))
        };
        if u16_at(0)? != MAGIC {
            return Err(invalid("not little-endian BTF"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| invalid("string section out of bounds"))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err(invalid("type section out of bounds"));
        }
        let mut types = Vec::new();
        let mut structs = HashMap::new();
        let mut at = start;
        while at < end {
            let name = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(m + 8)?;
                        members.push(Member {
                            name: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag { offset & 0xff_ffff } else { offset },
                        });
                    }
                    at += 12 * vlen;
                    if kind == KIND_STRUCT && name != 0 {
                        let id = types.len() as u32 + 1;
                        structs.entry(str_at(&strings, name).to_owned()).or_insert(id);
                    }
                    Type::Composite { members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { type_id: size_or_type }
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_ENUM | KIND_FUNC_PROTO => {
                    at += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    at += 12 * vlen;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
                other => return Err(invalid(format!("unknown BTF kind {other}"))),
            };
            types.push(ty);
        }
        Ok(Btf {
            strings,
            types,
            structs,
        })
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.ty(id)? {
                Type::Alias { type_id } => id = *type_id,
                other => return Some(other),
            }
        }
        None
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous
    /// structs and unions (where the kernel hides many fields).
    pub fn offset(&self, name: &str, field: &str) -> Option<u32> {
        let id = *self.structs.get(name)?;
        let bits = self.member_bits(id, field, 0)?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    fn member_bits(&self, id: u32, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members } = self.resolve(id)? else {
            return None;
        };
        for m in members {
            if m.name != 0 && str_at(&self.strings, m.name) == field {
                return Some(m.bit_offset);
            }
        }
        members.iter().filter(|m| m.name == 0).find_map(|m| {
            self.member_bits(m.type_id, field, depth + 1)
                .map(|inner| m.bit_offset + inner)
        })
    }

    /// Byte offset of a dotted path of fields, e.g. `("sock",
    /// "__sk_common.skc_family")`.
    pub fn path_offset(&self, name: &str, path: &str) -> Option<u32> {
        let mut id = *self.structs.get(name)?;
        let mut total = 0;
        let mut fields = path.split('.').peekable();
        while let Some(field) = fields.next() {
            let bits = self.member_bits(id, field, 0)?;
            if bits % 8 != 0 {
                return None;
            }
            total += bits / 8;
            if fields.peek().is_some() {
                id = self.member_type(id, field, 0)?;
            }
        }
        Some(total)
    }

    fn member_type(&self, id: u32, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members } = self.resolve(id)? else {
            return None;
        };
        members
            .iter()
            .find(|m| m.name != 0 && str_at(&self.strings, m.name) == field)
            .map(|m| m.type_id)
            .or_else(|| {
                members
                    .iter()
                    .filter(|m| m.name == 0)
                    .find_map(|m| self.member_type(m.type_id, field, depth + 1))
            })
    }

    /// Every offset the programs use; a group whose fields are not all
    /// found stays invalid (its programs then read nothing).
    pub fn kernel_offsets(&self) -> KernelOffsets {
        let mut k = KernelOffsets::default();
        let exe = (|| {
            k.task_mm = self.offset("task_struct", "mm")?;
            k.task_start_boottime = self.offset("task_struct", "start_boottime")?;
            k.mm_exe_file = self.offset("mm_struct", "exe_file")?;
            k.file_inode = self.offset("file", "f_inode")?;
            k.inode_ino = self.offset("inode", "i_ino")?;
            k.inode_sb = self.offset("inode", "i_sb")?;
            k.sb_dev = self.offset("super_block", "s_dev")?;
            Some(())
        })();
        if exe.is_some() {
            k.valid |= offsets::EXE;
        }
        k
    }
}

fn str_at(strings: &[u8], offset: u32) -> &str {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct outer { int a; union { int b; struct { int c; }; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0".to_vec();
        let (outer, a, b, c, int) = (1u32, 7, 9, 11, 13);
        let mut types = Vec::new();
        let push = |types: &mut Vec<u8>, words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&mut types, &[int, KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int c; }
        push(&mut types, &[0, (KIND_STRUCT << 24) | 1, 4, c, 1, 0]);
        // 3: anonymous union { int b; struct {c}; }
        push(&mut types, &[0, (KIND_UNION << 24) | 2, 4, b, 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union; }
        push(&mut types, &[outer, (KIND_STRUCT << 24) | 2, 8, a, 1, 0, 0, 3, 32]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", "a"), Some(0));
        assert_eq!(btf.offset("outer", "b"), Some(4));
        assert_eq!(btf.offset("outer", "c"), Some(4));
        assert_eq!(btf.offset("outer", "missing"), None);
        assert_eq!(btf.offset("nope", "a"), None);
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error() {
        let data = blob();
        assert!(Btf::parse(&data[..30]).is_err());
        assert!(Btf::parse(b"\x7fELF....................").is_err());
    }

    #[test]
    fn the_running_kernel_has_every_offset() {
        // loopgate requires a kernel with BTF (CONFIG_DEBUG_INFO_BTF).
        let btf = Btf::kernel().expect("the running kernel's BTF");
        let k = btf.kernel_offsets();
        assert_eq!(k.valid, offsets::EXE, "{k:?}");
        // What the unix connect program reads.
        assert_eq!(btf.offset("bpf_sock_addr_kern", "uaddr"), Some(8));
        assert!(
            btf.path_offset("sock", "__sk_common.skc_family")
                .is_some_and(|o| o > 0 && o < 64)
        );
    }
}
