//! Builds the eBPF programs (agent-ebpf, nightly, bpfel-unknown-none) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`; compiles the
//! Kubernetes API's `.proto` files (agent/proto) into the descriptor set
//! `protocols::http::kubernetes::protobuf` reads bodies with.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    kubernetes_schema()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("agent-ebpf manifest has no parent directory"))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs; run `cargo xtask setup` if bpf-linker or the nightly rust-src is missing")
}

/// `OUT_DIR/kubernetes.binpb`: every `.proto` under agent/proto, compiled
/// by protox (pure Rust: no protoc to install).
fn kubernetes_schema() -> anyhow::Result<()> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect_protos(root, &mut files)?;
    files.sort();
    let relative: Vec<&Path> = files.iter().filter_map(|f| f.strip_prefix(root).ok()).collect();
    let set = protox::Compiler::new([root])
        .context("the Kubernetes .proto files")?
        .open_files(relative)
        .context("compiling the Kubernetes .proto files")?
        .encode_file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("kubernetes.binpb");
    std::fs::write(&out, set).with_context(|| format!("writing {}", out.display()))
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    Ok(())
}
