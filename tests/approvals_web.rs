//! The approvals page in a real browser (Debian's chromium, headless,
//! driven through chromedriver by selenium) against the real agent: an
//! approver signs in with the one-time link `loopgate approvals web` gives
//! them, sees the held COPY with its masked command, requester, process,
//! rule and time left, approves it with a reason, and finds it in the
//! decision history — while psql, waiting in place, gets its masked rows.
//! Screenshots go to target/test-artifacts/approvals-web/.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    clinic::{Clinic, has_ssn, policy_pack},
    env::workspace_root,
    postgres::PgOptions,
    python, require_ebpf,
};
use serde_json::{Value, json};

/// `users` (gid 100) approves; daemon (uid 1) is the approver.
const APPROVERS_GID: u32 = 100;
const APPROVER: u32 = 1;

/// Opens the link, checks the pending request, approves it with a reason
/// and waits for it in the history; prints what it saw as JSON.
const BROWSER: &str = r##"
import json, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, shots = sys.argv[1], sys.argv[2]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    wait = WebDriverWait(driver, 20)
    driver.get(url)
    request = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".request"))
    seen = {"pending": request.text, "who": driver.find_element(By.ID, "who").text, "url": driver.current_url}
    driver.save_screenshot(shots + "/1-pending.png")
    request.find_element(By.CSS_SELECTOR, "input").send_keys("export for the quarterly report")
    request.find_element(By.CSS_SELECTOR, "button.approve").click()
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#history tbody tr"))
    seen["history"] = row.text
    seen["none_waiting"] = driver.find_element(By.ID, "none").is_displayed()
    driver.save_screenshot(shots + "/2-decided.png")
    print(json.dumps(seen))
finally:
    driver.quit()
"##;

fn group_name(gid: u32) -> String {
    loopgate_e2e::group_name(gid).unwrap()
}

/// curl's status code for `url` with `args`.
fn curl_status(url: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_held_copy_is_released_from_the_page() {
    require_ebpf!();
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_pack(
        dir.path(),
        json!({"group": group_name(APPROVERS_GID), "min_approvals": 1, "timeout_secs": 120}),
    );
    let key = dir.path().join("hash.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let extra = format!(
        "[mask]\nhash_key_file = \"{}\"\n[policy]\ndir = \"{}\"\n[approvals]\nweb_listen = \"127.0.0.1:0\"\n",
        key.display(),
        policies.display()
    );
    let f = Clinic::start_sized(PgOptions::default(), 50, &extra, |t, _| t);

    let psql = f
        .psql_command("COPY patients TO STDOUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = f.agent.approvals_as(APPROVER, &[APPROVERS_GID], &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !list.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "nothing held\n{}", f.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The page refuses strangers and other host names.
    let link = f.agent.approvals_as(APPROVER, &[APPROVERS_GID], &["web"]);
    assert!(link.status.success(), "{}", String::from_utf8_lossy(&link.stderr));
    let url = String::from_utf8_lossy(&link.stdout).trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/login?t="),
        "{url}"
    );
    let base = url.split("/login").next().unwrap().to_owned();
    assert_eq!(curl_status(&format!("{base}/api/pending"), &[]), "401");
    assert_eq!(
        curl_status(&format!("{base}/"), &["-H", "Host: attacker.example"]),
        "421"
    );

    let shots = workspace_root().join("target/test-artifacts/approvals-web");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new(python())
        .args(["-c", BROWSER, &url])
        .arg(&shots)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending = seen["pending"].as_str().unwrap();
    for part in [
        "COPY patients TO STDOUT",
        "unix:nobody",
        "hipaa.hold_phi_export",
        "psql",
        "patients-db",
    ] {
        assert!(pending.contains(part), "{part:?} not on the page:\n{pending}");
    }
    assert!(pending.contains(" s"), "no time left shown:\n{pending}");
    assert!(seen["who"].as_str().unwrap().contains("unix:daemon"), "{seen}");
    let history = seen["history"].as_str().unwrap();
    assert!(
        history.contains("approved") && history.contains("unix:daemon"),
        "{history}"
    );
    assert!(history.contains("export for the quarterly report"), "{history}");
    assert!(seen["none_waiting"].as_bool().unwrap(), "{seen}");
    assert!(shots.join("1-pending.png").exists() && shots.join("2-decided.png").exists());

    // The link was spent; psql got its (masked) rows.
    assert_eq!(curl_status(&url, &[]), "403");
    let done = psql.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let rows = String::from_utf8_lossy(&done.stdout);
    assert_eq!(rows.lines().count(), 50);
    assert!(!has_ssn(&rows), "raw SSNs in the export");
    // The audit names the approver.
    let events = f.agent.events();
    let approved = events
        .iter()
        .find(|e| e["kind"] == "approval" && e["decision"]["verdict"] == "approved")
        .expect("an approved event");
    assert_eq!(approved["decision"]["approver"], "unix:daemon");
    let reason = approved["decision"]["reason"].as_str().unwrap();
    assert!(reason.ends_with(": export for the quarterly report"), "{reason}");
}
