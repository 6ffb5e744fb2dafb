//! Harness for loopgate's end-to-end tests: starts the real agent binary on
//! a cgroup, pin directory and port of its own, runs real clients inside the
//! cgroup, and reads what the agent recorded. Everything a test creates is
//! removed when its [`Agent`] drops, on failure too.
pub mod agent;
pub mod bench;
pub mod clinic;
pub mod echo;
pub mod env;
pub mod fhir;
pub mod postgres;
pub mod s3;
pub mod sshd;

pub use agent::{Agent, Target};
pub use echo::EchoServer;
pub use env::{ebpf_available, group_name, loopgate_bin, python};
pub use postgres::{PgOptions, PgServer};

/// Skips the calling test when eBPF interception cannot run here; fails it
/// instead where `LOOPGATE_REQUIRE_EBPF=1`.
#[macro_export]
macro_rules! require_ebpf {
    () => {
        if !$crate::ebpf_available() {
            return;
        }
    };
}

/// A Python client run inside the cgroup: an unmodified program using plain
/// sockets. Opens `count` connections at once to HOST:PORT, sends each a
/// distinct payload of `size` bytes, checks the echo, and prints JSON with
/// what it saw (peer and local addresses as getpeername/getsockname show).
pub const ECHO_CLIENT: &str = include_str!("echo_client.py");

/// A raw extended-protocol PostgreSQL client that fetches a portal in
/// batches (Execute with a row limit); see the script's docstring.
pub const PG_BATCHES: &str = include_str!("pg_batches.py");
