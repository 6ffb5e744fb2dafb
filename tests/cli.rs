//! The command line without the kernel: config checking and errors.
use std::process::Command;

use loopgate_e2e::loopgate_bin;

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(loopgate_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_shipped_default_config() {
    let shipped = loopgate_e2e::env::workspace_root().join("agent/packaging/agent.toml");
    let out = Command::new(loopgate_bin())
        .args(["check", "--config"])
        .arg(shipped)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn a_bad_config_names_the_key_and_line_and_exits_2() {
    let out = check(
        "[intercept]\ncgroups = [\"agents\"]\n\n[[target]]\nname = \"db\"\nprotocol = \"tcp\"\naddress = \"db.invalid\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":7:") && stderr.contains("target.address"), "{stderr}");

    let out = check("[intercept]\nlisten_port = 99999\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("listen_port"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_an_error_when_named() {
    let out = Command::new(loopgate_bin())
        .args(["check", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn exec_without_a_command_is_a_usage_error() {
    let out = Command::new(loopgate_bin()).args(["exec"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
