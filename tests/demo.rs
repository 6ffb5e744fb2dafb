//! `cargo xtask demo` keeps working: the newcomer's first look at the
//! product runs every step and cleans up after itself.
use std::process::Command;

use loopgate_e2e::require_ebpf;

#[test]
fn the_demo_runs_every_step_and_leaves_nothing_behind() {
    require_ebpf!();
    let out = Command::new(env!("CARGO_BIN_EXE_loopgate-demo")).output().unwrap();
    let narration = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{narration}");
    for step in [
        "masked rows",
        "a blocked DROP",
        "an export held, then approved",
        "the chain verified",
        "the week's report",
    ] {
        assert!(narration.contains(&format!("ok     {step}")), "{step}:\n{narration}");
    }
    // What the automation saw never holds the synthetic identifiers.
    let seen: String = narration
        .lines()
        .skip_while(|l| !l.contains("the automation asks"))
        .collect();
    assert!(
        !seen.contains("987-65-432") || seen.contains("***-**-432"),
        "{narration}"
    );
    // The report names who was refused and who approved, and its page is kept.
    assert!(narration.contains("approved by unix:"), "{narration}");
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/demo/audit-report.html"))
        .expect("the demo keeps the report's page");
    assert!(page.contains("<svg") && page.contains("Refusals"), "{page}");
    // Its cgroup is gone.
    let cgroup = narration
        .split("runs in cgroup ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the demo names its cgroup");
    let mount = loopgate_e2e::agent::cgroup2_mount();
    assert!(!mount.join(cgroup).exists(), "cgroup {cgroup} left behind");
}
