//! HTTPS end to end: a FHIR-shaped JSON API over TLS (fhir_server.py, a
//! Python http.server with canned answers) and a real FHIR R4 server
//! (Medplum's engine, `fhir_medplum.js`) behind loopgate with the HIPAA
//! pack, reached by unmodified curl (HTTP/2 and HTTP/1.1), Python requests
//! and fhirclient inside the intercepted cgroup, trusting loopgate's CA
//! from `loopgate ca export`.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use loopgate_e2e::{
    Agent, Target,
    clinic::policy_pack,
    fhir::{FhirServer, TestCa},
    require_ebpf,
};
use serde_json::{Value, json};

const PATIENTS: usize = 40;
const CLIENT_TOKEN: &str = "client-own-secret-token";
const UPSTREAM_TOKEN: &str = "loopgate-upstream-token";
/// The approver group is a unix group every Debian/Ubuntu has (`users`).
const APPROVERS_GID: u32 = 100;
const ALICE: u32 = 1;

struct Fixture {
    server: FhirServer,
    agent: Agent,
    /// The upstream's CA (what a client going direct would trust).
    upstream_ca: PathBuf,
    /// loopgate's CA, as `loopgate ca export` printed it.
    loopgate_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.server.port)
    }

    /// curl inside the cgroup: (HTTP status, HTTP version, body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String, String) {
        let ca = self.loopgate_ca.to_string_lossy().into_owned();
        let url = self.url(path);
        let auth = format!("Authorization: Bearer {CLIENT_TOKEN}");
        let mut all = vec!["curl", "-sS", "--cacert", &ca, "-H", &auth, "-H", "Cookie: client=1"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-w", "\n%{http_code} %{http_version}", &url]);
        split_status(&self.agent.exec(&all))
    }

    /// A Python script run inside the cgroup with the FHIR base URL as
    /// its argument, trusting loopgate's CA; its stdout (it must succeed).
    fn python(&self, script: &str) -> String {
        let python = loopgate_e2e::env::python();
        let ca = format!("REQUESTS_CA_BUNDLE={}", self.loopgate_ca.display());
        let base = self.url("/fhir");
        let out = self
            .agent
            .exec(&["env", &ca, &python.to_string_lossy(), "-c", script, &base]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// The recorded text of each request to the FHIR target.
    fn command_texts(&self) -> Vec<String> {
        self.command_events()
            .iter()
            .map(|c| c["command"]["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn command_events(&self) -> Vec<Value> {
        self.agent
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "command" && e["target"]["name"] == "fhir")
            .collect()
    }
}

fn split_status(out: &Output) -> (u16, String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut parts = tail.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        panic!(
            "no status from curl: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, parts.next().unwrap_or("").to_owned(), body.to_owned())
}

/// Sets the pack's `kubernetes.allow_forward` and waits for the reload.
fn allow_k8s_forwards(agent: &Agent, dir: &std::path::Path) {
    let catalog_path = dir.join("policies/phi_catalog.json");
    let mut catalog: Value = serde_json::from_slice(&std::fs::read(&catalog_path).unwrap()).unwrap();
    catalog["phi_catalog"]["kubernetes"]["allow_forward"] = json!(true);
    std::fs::write(&catalog_path, serde_json::to_vec_pretty(&catalog).unwrap()).unwrap();
    agent.wait_events("the policy reload", |e| {
        e.iter()
            .any(|e| e["kind"] == "policy_reload" && e["decision"]["verdict"] != "error")
    });
}

fn approver_group() -> String {
    loopgate_e2e::group_name(APPROVERS_GID).unwrap()
}

/// The FHIR server, the agent with the HIPAA pack and a target for it, and
/// `extra` targets made from the test CA's file.
fn fixture(extra: impl FnOnce(&TestCa, &std::path::Path) -> Vec<Target>) -> Fixture {
    fixture_with("process", "", python_server(PATIENTS), extra)
}

/// The FHIR fixture plus a second target, `k8s`: an `api = "kubernetes"`
/// https target in front of a test server of its own.
fn kubernetes_fixture() -> (Fixture, FhirServer) {
    let mut servers = Vec::new();
    let f = fixture(|ca, files| {
        let server = FhirServer::start(ca, &["127.0.0.1"], 1);
        let target = Target {
            name: "k8s".into(),
            protocol: "https".into(),
            address: format!("127.0.0.1:{}", server.port),
            extra: format!(
                "identity = \"process\"\n[target.http]\napi = \"kubernetes\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
                files.join("upstream-ca.pem").display(),
                files.join("upstream.token").display()
            ),
        };
        servers.push(server);
        vec![target]
    });
    (f, servers.remove(0))
}

/// The FHIR-shaped Python server with `patients` patients.
fn python_server(patients: usize) -> impl FnOnce(&TestCa) -> FhirServer {
    move |ca| FhirServer::start(ca, &["127.0.0.1"], patients)
}

/// As [`fixture`], the FHIR target (`server`) with `identity`, the agent
/// config with `agent_extra`.
fn fixture_with(
    identity: &str,
    agent_extra: &str,
    server: impl FnOnce(&TestCa) -> FhirServer,
    extra: impl FnOnce(&TestCa, &std::path::Path) -> Vec<Target>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new("fhir test CA");
    let ca_file = dir.path().join("upstream-ca.pem");
    ca.write(&ca_file);
    let server = server(&ca);
    let token = dir.path().join("upstream.token");
    std::fs::write(&token, format!("{UPSTREAM_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policies = policy_pack(dir.path(), json!({"group": approver_group(), "timeout_secs": 60}));
    let target = Target {
        name: "fhir".into(),
        protocol: "https".into(),
        address: format!("127.0.0.1:{}", server.port),
        extra: format!(
            "identity = \"{identity}\"\n[target.http]\napi = \"fhir\"\nca_file = \"{}\"\ntoken_file = \"{}\"\n",
            ca_file.display(),
            token.display()
        ),
    };
    let mut targets = vec![target];
    targets.extend(extra(&ca, dir.path()));
    let ca_dir = dir.path().join("loopgate-ca");
    let agent = Agent::start(
        &targets,
        &format!(
            "[policy]\ndir = \"{}\"\n[tls]\nca_dir = \"{}\"\n{agent_extra}",
            policies.display(),
            ca_dir.display()
        ),
    );
    let export = agent.loopgate(&["ca", "export"]).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let pem = String::from_utf8(export.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let loopgate_ca = dir.path().join("loopgate-ca.pem");
    std::fs::write(&loopgate_ca, pem).unwrap();
    Fixture {
        server,
        agent,
        upstream_ca: ca_file,
        loopgate_ca,
        _dir: dir,
    }
}

/// What no client output may contain: the server's raw PHI.
fn assert_no_raw_phi(body: &str) {
    for i in [1, 2, PATIENTS] {
        let ssn = format!("{:03}-{:02}-{:04}", 100 + i % 600, 10 + i % 89, 1000 + i);
        for raw in [
            ssn,
            format!("MRN{i:08}"),
            format!("Zed{i}"),
            format!("{i} Elm Street"),
            format!("(555) {:03}-{:04}", 200 + i % 800, 1000 + i % 9000),
            format!("19{:02}-0{}-1{}", 40 + i % 60, 1 + i % 9, i % 10),
        ] {
            assert!(!body.contains(&raw), "raw {raw:?} reached the client:\n{body}");
        }
    }
    assert!(!body.contains("Quincy"), "a name reached the client");
}

fn assert_masked_bundle(body: &str) {
    let bundle: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(bundle["resourceType"], "Bundle");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), PATIENTS);
    let p = &entries[0]["resource"];
    assert_eq!(p["id"], "p1");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["name"][0]["family"], "***");
    assert_eq!(p["identifier"][0]["value"], "***");
    assert_eq!(p["identifier"][1]["system"], "urn:mrn");
    // A masked date is absent, said so (FHIR's data-absent-reason), so
    // strict clients still read the resource.
    assert!(p.get("birthDate").is_none(), "{p}");
    assert_eq!(p["_birthDate"]["extension"][0]["valueCode"], "masked");
    assert_eq!(p["extension"][0]["valueString"], "callback ssn ***");
    // The self link is the search: its values are masked, not the names.
    let link = bundle["link"][0]["url"].as_str().unwrap();
    let (_, query) = link.split_once('?').unwrap_or(("", ""));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        assert!(pair.ends_with("=***"), "{link}");
    }
    assert_no_raw_phi(body);
}

#[test]
fn patient_search_is_masked_over_h2_and_h1_and_the_upstream_sees_only_loopgates_credential() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());

    let (status, version, body) = f.curl(&["--http2"], "/fhir/Patient?name=Zed1&birthdate=1970");
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert_masked_bundle(&body);

    let (status, version, body) = f.curl(&["--http1.1"], "/fhir/Patient?name=Zed1");
    assert_eq!((status, version.as_str()), (200, "1.1"), "{body}");
    assert_masked_bundle(&body);

    // Headers the client sees: no upstream session cookie; the search in
    // Content-Location without its values.
    let (status, _, head) = f.curl(&["--http1.1", "-D", "-", "-o", "/dev/null"], "/fhir/Patient/p2");
    assert_eq!(status, 200);
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    let (status, _, head) = f.curl(
        &["--http1.1", "-D", "-", "-o", "/dev/null"],
        "/fhir/Patient?identifier=urn%3Aoid%3A1%7C123%2D45%2D6789&name=Zed1&_count=50",
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-location: https://fhir.test/fhir/patient?identifier=***&name=***&_count=50"),
        "{head}"
    );

    // Python requests, a second real client.
    let script = format!(
        "import requests, sys\n\
         r = requests.get('{}', verify='{}', headers={{'Authorization': 'Bearer {CLIENT_TOKEN}'}})\n\
         print(r.status_code)\nprint(r.text)\n",
        f.url("/fhir/Patient"),
        f.loopgate_ca.display()
    );
    let out = f.agent.exec(&["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let (code, body) = text.split_once('\n').unwrap();
    assert_eq!(code, "200");
    assert_masked_bundle(body.trim_end());

    // DELETE refused by the pack, in FHIR's own shape; never sent.
    let (status, _, body) = f.curl(&["-X", "DELETE"], "/fhir/Patient/p3");
    assert_eq!(status, 403, "{body}");
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "forbidden");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("hipaa.deny_fhir_delete"), "{diagnostics}");

    // The upstream saw loopgate's token on every request, never the
    // client's token or cookie, and never the DELETE.
    let requests = f.server.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    for r in &requests {
        assert_eq!(r["headers"]["authorization"], format!("Bearer {UPSTREAM_TOKEN}"), "{r}");
        assert!(r["headers"].get("cookie").is_none(), "{r}");
        assert_eq!(r["headers"]["accept-encoding"], "identity", "{r}");
        assert_eq!(r["headers"]["accept"], "application/fhir+json", "{r}");
        assert_eq!(r["method"], "GET");
    }
    assert!(!serde_json::to_string(&requests).unwrap().contains(CLIENT_TOKEN));

    // One command and one result per request; query values never recorded.
    let events = f.agent.wait_events("six results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 6
    });
    let commands = f.command_events();
    assert_eq!(commands.len(), 6, "{commands:?}");
    let search = &commands[0];
    assert_eq!(search["command"]["text"], "GET /fhir/Patient?name=?&birthdate=?");
    assert_eq!(search["command"]["kind"], "search");
    assert_eq!(search["command"]["tables"], json!(["Patient"]));
    assert_eq!(search["decision"]["verdict"], "allow");
    let result = events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["command_id"] == search["event_id"])
        .unwrap();
    assert_eq!(result["outcome"]["status"], "ok");
    assert_eq!(result["outcome"]["error_code"], "200");
    assert!(
        result["outcome"]["masked_count"].as_u64().unwrap() >= 9 * PATIENTS as u64,
        "{result}"
    );
    assert!(result["outcome"]["bytes_to_client"].as_u64().unwrap() > 1000);
    let fields = result["outcome"]["masked_fields"].to_string();
    assert!(
        fields.contains("Patient.name") && fields.contains("detector"),
        "{fields}"
    );
    let delete = commands.iter().find(|c| c["command"]["kind"] == "delete").unwrap();
    assert_eq!(delete["decision"]["verdict"], "block");
    assert_eq!(delete["decision"]["rule_id"], "hipaa.deny_fhir_delete");
    // What loopgate wrote of the requests (events also carry the process's
    // command line as the kernel gave it, which here has the URL and the
    // client's token in it).
    for e in &events {
        let text = format!("{} {} {}", e["command"], e["decision"], e["outcome"]);
        assert!(
            !text.contains("Zed1") && !text.contains(CLIENT_TOKEN),
            "PHI or a token in the audit: {text}"
        );
    }
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "{report}");
}

fn spawn_curl(f: &Fixture, path: &str) -> Child {
    spawn_curl_as(f, "--http2", path)
}

fn spawn_curl_as(f: &Fixture, version: &str, path: &str) -> Child {
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let url = f.url(path);
    f.agent
        .loopgate(&["exec"])
        .args([
            "--",
            "curl",
            "-sS",
            version,
            "--cacert",
            &ca,
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_pending(f: &Fixture) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(p) = list.first() {
            return p["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "nothing held\n{}", f.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn export_waits_in_place_until_approved_or_denied() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());

    // Held, approved: the export runs, its NDJSON masked line by line.
    let client = spawn_curl(&f, "/fhir/$export");
    let id = wait_pending(&f);
    assert!(f.server.requests().is_empty(), "sent before approval");
    let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["approve", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, version, body) = split_status(&client.wait_with_output().unwrap());
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    assert_eq!(body.lines().count(), PATIENTS);
    for line in body.lines() {
        let p: Value = serde_json::from_str(line).unwrap();
        assert_eq!(p["name"][0]["family"], "***");
    }
    assert_no_raw_phi(&body);
    assert_eq!(f.server.requests().len(), 1);

    // Held, denied: a FHIR OperationOutcome, nothing sent.
    let client = spawn_curl(&f, "/fhir/Patient/$export");
    let id = wait_pending(&f);
    let out = f
        .agent
        .approvals_as(ALICE, &[APPROVERS_GID], &["deny", &id, "--reason", "no export ticket"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, _, body) = split_status(&client.wait_with_output().unwrap());
    assert_eq!(status, 403, "{body}");
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(
        outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("denied"),
        "{body}"
    );
    assert_eq!(f.server.requests().len(), 1, "the denied export reached the server");

    let events = f.agent.wait_events("two export results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 2
    });
    let commands = f.command_events();
    assert_eq!(commands.len(), 2);
    for c in &commands {
        assert_eq!(c["decision"]["verdict"], "hold");
        assert_eq!(c["decision"]["rule_id"], "hipaa.hold_fhir_export");
    }
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "command_result")
        .map(|e| &e["outcome"]["status"])
        .collect();
    assert!(
        statuses.contains(&&json!("ok")) && statuses.contains(&&json!("denied")),
        "{statuses:?}"
    );
}

#[test]
fn a_held_request_whose_client_leaves_is_withdrawn() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());
    for version in ["--http2", "--http1.1"] {
        let mut client = spawn_curl_as(&f, version, "/fhir/$export");
        let id = wait_pending(&f);
        client.kill().unwrap();
        client.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["list", "--json"]);
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if list.iter().all(|p| p["id"] != id.as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "{version}: the hold outlived its client");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(f.server.requests().is_empty());
    let events = f.agent.wait_events("two withdrawn results", |e| {
        e.iter()
            .filter(|e| e["kind"] == "command_result" && e["outcome"]["status"] == "withdrawn")
            .count()
            == 2
    });
    assert_eq!(events.iter().filter(|e| e["kind"] == "command").count(), 2);
}

#[test]
fn an_upstream_whose_certificate_does_not_verify_is_refused() {
    require_ebpf!();
    let impostor_ca = TestCa::new("somebody else's CA");
    let mut servers = Vec::new();
    let f = fixture(|ca, files| {
        let ca_file = files.join("upstream-ca.pem");
        // Signed by a CA the target does not trust; and signed by the
        // right CA for another name.
        let wrong_ca = FhirServer::start(&impostor_ca, &["127.0.0.1"], 1);
        let wrong_name = FhirServer::start(ca, &["fhir.elsewhere.example"], 1);
        let targets = [("wrong-ca", wrong_ca.port), ("wrong-name", wrong_name.port)]
            .into_iter()
            .map(|(name, port)| Target {
                name: name.into(),
                protocol: "https".into(),
                address: format!("127.0.0.1:{port}"),
                extra: format!(
                    "identity = \"process\"\n[target.http]\napi = \"fhir\"\nca_file = \"{}\"\n",
                    ca_file.display()
                ),
            })
            .collect();
        servers.push(wrong_ca);
        servers.push(wrong_name);
        targets
    });
    for server in &servers {
        let ca = f.loopgate_ca.to_string_lossy().into_owned();
        let url = format!("https://127.0.0.1:{}/fhir/Patient", server.port);
        let (status, _, body) = split_status(&f.agent.exec(&[
            "curl",
            "-sS",
            "--cacert",
            &ca,
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ]));
        assert_eq!(status, 502, "{body}");
        let outcome: Value = serde_json::from_str(&body).unwrap();
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains("certificate is not trusted"), "{diagnostics}");
        assert!(server.requests().is_empty(), "a request reached an unverified server");
    }
}

#[test]
fn kubernetes_requests_are_decided_by_verb_impersonate_the_caller_and_mask_secrets() {
    require_ebpf!();
    let (f, server) = kubernetes_fixture();
    let server = &server;
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let kubectl_like = |args: &[&str], path: &str| {
        let url = format!("https://127.0.0.1:{}{path}", server.port);
        let mut all = vec![
            "curl",
            "-sS",
            "--cacert",
            &ca,
            "-H",
            "Authorization: Bearer client-own-secret-token",
            "-H",
            "Impersonate-User: admin",
            "-H",
            "Impersonate-Group: system:masters",
            "-H",
            "Accept: application/vnd.kubernetes.protobuf, application/json",
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-w", "\n%{http_code} %{http_version}", &url]);
        split_status(&f.agent.exec(&all))
    };

    let (status, _, body) = kubectl_like(&[], "/api/v1/namespaces/ward/pods");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["items"][0]["metadata"]["name"],
        "p1"
    );

    // A ConfigMap's values are scanned by the detectors.
    let (status, _, body) = kubectl_like(&[], "/api/v1/namespaces/ward/configmaps/c1");
    assert_eq!(status, 200, "{body}");
    let cm: Value = serde_json::from_str(&body).unwrap();
    // A key is scanned too (it stays a key: the redaction token).
    assert_eq!(
        cm["data"],
        json!({"mode": "fast", "contact": "ssn ***", "***": "a key that is an SSN"})
    );

    // Creating a Secret is allowed; what comes back has its data masked.
    let (status, _, body) = kubectl_like(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"kind\":\"Secret\"}",
        ],
        "/api/v1/namespaces/ward/secrets",
    );
    assert_eq!(status, 201, "{body}");
    let secret: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(secret["data"]["password"], "***");
    assert!(!body.contains("aHVudGVyMg=="));

    // Reading Secrets and deleting a namespace: refused as a Status.
    for (args, path, rule) in [
        (&[][..], "/api/v1/namespaces/ward/secrets", "hipaa.deny_k8s_secret_read"),
        (
            &["-X", "DELETE"][..],
            "/api/v1/namespaces/ward",
            "hipaa.deny_k8s_delete_namespace",
        ),
    ] {
        let (status, _, body) = kubectl_like(args, path);
        assert_eq!(status, 403, "{body}");
        let st: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (st["kind"].as_str(), st["reason"].as_str(), st["code"].as_u64()),
            (Some("Status"), Some("Forbidden"), Some(403))
        );
        assert!(st["message"].as_str().unwrap().contains(rule), "{body}");
    }

    // The API server saw loopgate's token and the real caller as the
    // impersonated user, never the client's own impersonation or token;
    // JSON asked for instead of protobuf.
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for r in &requests {
        let h = &r["headers"];
        assert_eq!(h["authorization"], format!("Bearer {UPSTREAM_TOKEN}"), "{r}");
        assert_eq!(h["impersonate-user"], "unix:root", "{r}");
        assert!(h.get("impersonate-group").is_none(), "{r}");
        assert_eq!(h["accept"], "application/json", "{r}");
    }
    let events = f.agent.wait_events("five k8s results", |e| {
        e.iter()
            .filter(|e| e["kind"] == "command_result" && e["target"]["name"] == "k8s")
            .count()
            >= 5
    });
    let verbs: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "command" && e["target"]["name"] == "k8s")
        .map(|e| &e["command"]["kind"])
        .collect();
    assert_eq!(
        verbs,
        [
            &json!("list"),
            &json!("get"),
            &json!("create"),
            &json!("list"),
            &json!("delete")
        ]
    );
}

/// Encoded, legacy and ambiguous request targets: decided as the server
/// reads them and sent as decided, or refused (400 in the API's shape)
/// and never sent; codings that hide a compressed body are refused; a
/// port-forward is refused by the pack until it allows them, then a
/// refused upgrade is the server's own answer, masked.
#[test]
fn targets_are_decided_as_the_server_reads_them_or_refused() {
    require_ebpf!();
    let (f, k8s) = kubernetes_fixture();
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let curl_k8s = |args: &[&str], path: &str| {
        let url = format!("https://127.0.0.1:{}{path}", k8s.port);
        let mut all = vec!["curl", "-sS", "--path-as-is", "--cacert", &ca];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-w", "\n%{http_code} %{http_version}", &url]);
        split_status(&f.agent.exec(&all))
    };
    let status_of = |body: &str| -> Value { serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")) };

    // Spelled otherwise, still Secrets (and still refused), in every way
    // the API server reads as a read of Secrets.
    for path in [
        "/api/v1/namespaces/ward/secret%73",
        "/api/v1/namespaces/ward/secrets/",
        "/api/v1/namespaces/ward/secrets?watch=t",
        "/api/v1/namespaces/ward/secrets?w%61tch=True",
        "/api/v1/watch/namespaces/ward/secrets",
        "/api/v1/namespaces/ward/secrets/db/extra",
    ] {
        let (status, _, body) = curl_k8s(&[], path);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            status_of(&body)["message"]
                .as_str()
                .unwrap()
                .contains("hipaa.deny_k8s_secret_read"),
            "{path}: {body}"
        );
    }
    // What servers would read differently: refused, never sent.
    for path in [
        "/api/v1/namespaces/ward%2Fsecrets",
        "/api/v1//namespaces/ward/secrets",
        "/api/v1/namespaces/ward/./secrets",
        "/api/v1/namespaces/ward/pods/../secrets",
        "/api/v1/namespaces/ward/secrets;x=1",
        "/api/v1/namespaces/ward/secret%2573",
        "/api/v1/namespaces/ward/configmaps?watch=1;x=2",
    ] {
        let (status, _, body) = curl_k8s(&[], path);
        assert_eq!(status, 400, "{path}: {body}");
        let st = status_of(&body);
        assert_eq!(
            (st["kind"].as_str(), st["reason"].as_str()),
            (Some("Status"), Some("BadRequest")),
            "{body}"
        );
    }
    let (status, _, body) = curl_k8s(
        &["-H", "X-HTTP-Method-Override: DELETE"],
        "/api/v1/namespaces/ward/pods",
    );
    assert_eq!(status, 400, "{body}");
    // Allowed, and sent as it was decided: the server gets the decoded path.
    let (status, _, body) = curl_k8s(&[], "/api/v1/namespaces/ward/config%6Daps/c1");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("123-45-6789") && !body.contains("321-54-9876"), "{body}");
    let paths: Vec<String> = k8s
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/api/v1/namespaces/ward/configmaps/c1"],
        "only the allowed request was sent"
    );

    // A port-forward is refused by the pack (a tunnel loopgate cannot
    // read), in the API's own shape.
    let forward = [
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let (status, _, body) = curl_k8s(&forward, "/api/v1/namespaces/ward/pods/p1/portforward");
    assert_eq!(status, 403, "{body}");
    let st = status_of(&body);
    assert!(
        st["message"].as_str().unwrap().contains("hipaa.deny_k8s_forward"),
        "{body}"
    );
    allow_k8s_forwards(&f.agent, f._dir.path());

    // Allowed, a refused port-forward: the server's own Status, masked.
    let (status, _, body) = curl_k8s(&forward, "/api/v1/namespaces/ward/pods/gone/portforward");
    assert_eq!(status, 404, "{body}");
    let st = status_of(&body);
    assert_eq!(
        (st["reason"].as_str(), st["code"].as_u64()),
        (Some("NotFound"), Some(404)),
        "{body}"
    );
    assert_eq!(st["message"], "pods \"gone\" not found (owner ssn ***)");

    // FHIR: a type in another case is refused; encoded, a type is a type.
    let (status, _, body) = f.curl(&[], "/fhir/patient/p1");
    assert_eq!(status, 400, "{body}");
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["issue"][0]["code"], "invalid", "{body}");
    let (status, _, body) = f.curl(&["-X", "DELETE"], "/fhir/Pat%69ent/p3");
    assert_eq!(status, 403, "{body}");
    // Compressed bodies behind "identity, gzip" or a second header: 502.
    for path in ["/fhir/Binary/enc-chain", "/fhir/Binary/enc-two"] {
        let (status, _, body) = f.curl(&[], path);
        assert_eq!(status, 502, "{path}: {body}");
        assert!(body.contains("cannot be masked"), "{body}");
    }

    // The audit: the verbs as the server reads them, ambiguous requests
    // recorded as refused, no PHI from the paths.
    let events = f.agent.wait_events("k8s results", |e| {
        e.iter()
            .filter(|e| e["kind"] == "command_result" && e["target"]["name"] == "k8s")
            .count()
            >= 2
    });
    let k8s_commands: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "command" && e["target"]["name"] == "k8s")
        .collect();
    let kinds: Vec<&str> = k8s_commands
        .iter()
        .map(|e| e["command"]["kind"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        &kinds[..6],
        ["list", "list", "watch", "watch", "watch", "get"],
        "{kinds:?}"
    );
    let ambiguous = k8s_commands
        .iter()
        .filter(|e| e["decision"]["rule_id"] == "loopgate.ambiguous_request")
        .count();
    assert_eq!(ambiguous, 8, "{k8s_commands:?}");
    for e in &events {
        let text = e["command"].to_string();
        assert!(!text.contains("123-45-6789") && !text.contains("222-33-4444"), "{text}");
    }
}

#[test]
fn with_oidc_the_bearer_token_is_the_principal_and_never_forwarded() {
    require_ebpf!();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = runtime
        .block_on(loopgate::identity::test_issuer::TestIssuer::start())
        .unwrap();
    let oidc = format!(
        "[identity.oidc]\nissuer = \"{}\"\naudience = \"loopgate\"\n",
        issuer.issuer()
    );
    let f = fixture_with("oidc", &oidc, python_server(PATIENTS), |_, _| Vec::new());
    let mut claims = issuer.claims("nurse-1", "loopgate");
    claims["groups"] = json!(["clinical-staff"]);
    let token = issuer.mint(&claims);
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let url = f.url("/fhir/Patient/p1");
    let get = |auth: Option<&str>| {
        let header = auth.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["curl", "-sS", "--cacert", &ca, "-w", "\n%{http_code} %{http_version}"];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        split_status(&f.agent.exec(&args))
    };

    for auth in [None, Some("not-a-jwt")] {
        let (status, _, body) = get(auth);
        assert_eq!(status, 401, "{body}");
        let outcome: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["issue"][0]["code"], "login", "{body}");
    }
    assert!(f.server.requests().is_empty(), "an unauthenticated request was sent");

    let (status, _, body) = get(Some(&token));
    assert_eq!(status, 200, "{body}\n{}", f.agent.log());
    let patient: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(patient["name"][0]["family"], "***");
    let requests = f.server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0]["headers"]["authorization"],
        format!("Bearer {UPSTREAM_TOKEN}")
    );
    assert!(
        !requests[0].to_string().contains(&token),
        "the OIDC token reached the server"
    );

    let events = f.agent.wait_events("the request's result", |e| {
        e.iter()
            .any(|e| e["kind"] == "command_result" && e["target"]["name"] == "fhir")
    });
    let commands: Vec<&Value> = events.iter().filter(|e| e["kind"] == "command").collect();
    assert_eq!(commands.len(), 3);
    for refused in &commands[..2] {
        assert_eq!(refused["decision"]["verdict"], "block");
        assert_eq!(refused["decision"]["rule_id"], "loopgate.authentication");
        assert!(refused["principal"].is_null(), "{refused}");
    }
    let command = commands[2];
    assert_eq!(command["decision"]["verdict"], "allow");
    assert_eq!(command["principal"]["subject"], "nurse-1");
    assert_eq!(command["principal"]["groups"], json!(["clinical-staff"]));
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_large_bundle_streams_through_masked_without_being_held_whole() {
    require_ebpf!();
    const BIG: usize = 60_000;
    let f = fixture_with("process", "", python_server(BIG), |_, _| Vec::new());
    let pid = f.agent.pid().unwrap();
    let before = peak_rss_kib(pid);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    let direct_file = dir.path().join("direct.json");
    let started = Instant::now();
    let direct = std::process::Command::new("curl")
        .args(["-sS", "--http1.1", "--cacert"])
        .arg(&f.upstream_ca)
        .arg("-o")
        .arg(&direct_file)
        .arg(f.url("/fhir/Patient"))
        .output()
        .unwrap();
    let direct_time = started.elapsed();
    assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
    let direct_bytes = std::fs::metadata(&direct_file).unwrap().len();

    let through_file = dir.path().join("through.json");
    let out_path = through_file.to_string_lossy().into_owned();
    let started = Instant::now();
    let (status, _, _) = f.curl(&["--http2", "-o", &out_path], "/fhir/Patient");
    let through_time = started.elapsed();
    assert_eq!(status, 200);
    let through = std::fs::read(&through_file).unwrap();
    let bundle: Value = serde_json::from_slice(&through).unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), BIG);
    assert_eq!(bundle["entry"][BIG - 1]["resource"]["name"][0]["family"], "***");
    let grew = peak_rss_kib(pid).saturating_sub(before);
    eprintln!(
        "{direct_bytes} bytes: direct {direct_time:?} ({:.1} MB/s), through loopgate {} bytes masked in {through_time:?} ({:.1} MB/s); agent peak RSS +{grew} KiB",
        direct_bytes as f64 / direct_time.as_secs_f64() / 1e6,
        through.len(),
        direct_bytes as f64 / through_time.as_secs_f64() / 1e6,
    );
    assert!(direct_bytes > 30_000_000, "{direct_bytes}");
    // Streamed: the agent never held a sizeable part of the 30+ MB body.
    assert!(grew < 16 * 1024, "the agent's peak memory grew by {grew} KiB");
}

/// FHIR's POST `_search` sends its parameters as a form: read before the
/// decision (the policy's `search_params` and the record hold its names,
/// never its values), sent on as it came, the Bundle masked. A body that
/// is not a form, or a form too large to read, is refused unsent.
#[test]
fn post_search_forms_are_read_before_the_decision_and_sent_as_they_came() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());
    let form = "family=Zed1&birthdate=ge1940-01-01";
    let (status, _, body) = f.curl(&["--data", form], "/fhir/Patient/_search?_count=5");
    assert_eq!(status, 200, "{body}");
    assert_no_raw_phi(&body);
    let bundle: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["total"], 1, "{body}");
    assert_eq!(bundle["entry"][0]["resource"]["name"][0]["family"], "***");
    let sent = f.server.requests();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["body"], form);
    assert_eq!(sent[0]["headers"]["content-type"], "application/x-www-form-urlencoded");

    let json = ["-H", "Content-Type: application/json", "--data", r#"{"family":"Zed1"}"#];
    let (status, _, body) = f.curl(&json, "/fhir/Patient/_search");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("read only as a form"), "{body}");
    // Untyped, a server may not read it as a form at all.
    let untyped = ["-H", "Content-Type:", "--data", "family=Zed1&_count=1"];
    let (status, _, body) = f.curl(&untyped, "/fhir/Patient/_search");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("read only as a form"), "{body}");
    let big = format!("family={}", "x".repeat(70 * 1024));
    let (status, _, body) = f.curl(&["--data", &big], "/fhir/Patient/_search");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("over 64 KiB"), "{body}");
    assert_eq!(f.server.requests().len(), 1, "a refused search was sent");

    f.agent.wait_events("four results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 4
    });
    let commands = f.command_events();
    assert_eq!(
        commands[0]["command"]["text"],
        "POST /fhir/Patient/_search?_count=? (form: family=?&birthdate=?)"
    );
    assert_eq!(commands[0]["command"]["kind"], "search");
    assert_eq!(commands.len(), 4, "{commands:?}");
    for c in &commands[1..] {
        assert_eq!(c["decision"]["rule_id"], "loopgate.ambiguous_request", "{c}");
    }
    let all = serde_json::to_string(&f.agent.events()).unwrap();
    assert!(!all.contains("Zed1"), "a form value in the audit");
}

/// SIGHUP reloads the pack (compiled off the runtime's workers) while
/// requests keep being served, and the reload is on the record.
#[test]
fn sighup_reloads_the_pack_while_requests_are_served() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());
    assert!(
        f.agent.events().iter().all(|e| e["kind"] != "policy_reload"),
        "a reload before the signal"
    );
    let pid = f.agent.pid().expect("the agent runs") as i32;
    // SAFETY: a signal to the agent this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let (status, _, body) = f.curl(&[], "/fhir/Patient/p2");
    assert_eq!(status, 200, "{body}");
    let events = f
        .agent
        .wait_events("the SIGHUP reload", |e| e.iter().any(|e| e["kind"] == "policy_reload"));
    let reload = events.iter().find(|e| e["kind"] == "policy_reload").unwrap();
    assert_eq!(reload["decision"]["verdict"], "allow", "{reload}");
    assert!(
        reload["decision"]["reason"].as_str().unwrap().starts_with("loaded "),
        "{reload}"
    );
}

#[test]
fn plain_http_targets_serve_http1_and_h2_prior_knowledge() {
    require_ebpf!();
    let mut servers = Vec::new();
    let f = fixture(|_, _| {
        let server = FhirServer::start_plain(3);
        let target = Target {
            name: "plain".into(),
            protocol: "http".into(),
            address: format!("127.0.0.1:{}", server.port),
            extra: "identity = \"process\"\n[target.http]\napi = \"fhir\"\n".into(),
        };
        servers.push(server);
        vec![target]
    });
    let server = &servers[0];
    let url = format!("http://127.0.0.1:{}/fhir/Patient", server.port);
    for (flag, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let (status, got, body) =
            split_status(
                &f.agent
                    .exec(&["curl", "-sS", flag, "-w", "\n%{http_code} %{http_version}", &url]),
            );
        assert_eq!((status, got.as_str()), (200, version), "{body}");
        let bundle: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            bundle["entry"][2]["resource"]["_birthDate"]["extension"][0]["valueCode"],
            "masked"
        );
    }
    // FHIR as XML would get the detectors only, not the resource paths:
    // refused, not passed on.
    let xml = format!("http://127.0.0.1:{}/fhir/Patient/p1?_format=xml", server.port);
    let (status, _, body) = split_status(
        &f.agent
            .exec(&["curl", "-sS", "-w", "\n%{http_code} %{http_version}", &xml]),
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        !body.contains("Zed1") && body.contains("application/fhir+json"),
        "{body}"
    );
    assert_eq!(server.requests().len(), 3);
}

/// kubectl 1.35 from `cargo xtask setup` (target/tools).
/// A FHIR client library, SMART on FHIR's `fhirclient` (PyPI, in the test
/// venv by `cargo xtask setup`), searches Patients through loopgate: its
/// strict models accept what loopgate returns (a masked date is a
/// data-absent-reason, not `***`), and what it reads is masked.
#[test]
fn fhirclient_searches_patients_through_loopgate_and_reads_them_masked() {
    require_ebpf!();
    let f = fixture(|_, _| Vec::new());
    let script = "import json, sys\n\
        try:\n    from fhirclient import client\n    from fhirclient.models.patient import Patient\n\
        except ImportError:\n    sys.exit('fhirclient missing from the test venv: run cargo xtask setup')\n\
        smart = client.FHIRClient(settings={'app_id': 'loopgate-e2e', 'api_base': sys.argv[1]})\n\
        found = Patient.where(struct={'name': 'Zed1', 'identifier': '123-45-6789'}).perform_resources(smart.server)\n\
        one = Patient.read('p2', smart.server)\n\
        print(json.dumps({'found': [p.as_json() for p in found], 'one': one.as_json(),\n\
                          'birth': [str(p.birthDate) for p in found[:1]]}))\n";
    let stdout = f.python(script);
    let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let found = got["found"].as_array().unwrap();
    assert_eq!(found.len(), PATIENTS);
    let p = &found[0];
    assert_eq!((p["id"].as_str(), p["gender"].as_str()), (Some("p1"), Some("female")));
    assert_eq!(p["name"][0]["family"], "***");
    assert_eq!(p["identifier"][0]["value"], "***");
    assert_eq!(got["birth"], json!(["None"]), "the date is absent to the client");
    assert_eq!(got["one"]["id"], "p2");
    assert_eq!(got["one"]["telecom"][0]["value"], "***");
    assert_no_raw_phi(&stdout);
    // What the server was asked: the search as fhirclient wrote it; what
    // the audit kept of it: the names.
    let requests = f.server.requests();
    assert!(
        requests[0]["path"].as_str().unwrap().starts_with("/fhir/Patient?"),
        "{requests:?}"
    );
    f.agent.wait_events("two results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 2
    });
    let texts = f.command_texts();
    assert!(
        texts.iter().all(|t| !t.contains("Zed1") && !t.contains("123-45-6789")),
        "{texts:?}"
    );
    assert!(texts.contains(&"GET /fhir/Patient/p2".to_owned()), "{texts:?}");
}

/// A real FHIR R4 server (Medplum's engine: its own search semantics,
/// validation and ids) behind loopgate: Patients created through loopgate
/// come back masked; fhirclient's searches (by family, by a birthdate
/// prefix the server evaluates) and a POST `_search` form find what the
/// server finds, masked; the server's own refusal of an invalid resource
/// reaches the client; the server sees only loopgate's credential.
#[test]
fn a_real_fhir_server_behind_loopgate_creates_searches_and_reads_masked() {
    require_ebpf!();
    let f = fixture_with(
        "process",
        "",
        |ca| FhirServer::start_medplum(ca, &["127.0.0.1"]),
        |_, _| Vec::new(),
    );
    let script = r#"import json, sys, requests
from fhirclient import client
from fhirclient.models.patient import Patient
base = sys.argv[1]
fhir = {'Content-Type': 'application/fhir+json', 'Authorization': 'Bearer client-own-secret-token'}
people = [('Zed1', '1950-02-03', '123-45-6789'), ('Zed2', '1980-05-06', '234-56-7890'), ('Zed3', '1990-07-08', '345-67-8901')]
created = []
for family, born, ssn in people:
    r = requests.post(base + '/Patient', headers=fhir, json={
        'resourceType': 'Patient', 'name': [{'family': family, 'given': ['Quincy']}], 'birthDate': born,
        'identifier': [{'system': 'urn:oid:2.16.840.1.113883.4.1', 'value': ssn}],
        'telecom': [{'system': 'phone', 'value': '(555) 201-1001'}]})
    created.append({'status': r.status_code, 'body': r.json()})
bad = requests.post(base + '/Patient', headers=fhir, json={'resourceType': 'Patient', 'birthDate': '1970-13-45'})
smart = client.FHIRClient(settings={'app_id': 'loopgate-e2e', 'api_base': base})
old = Patient.where(struct={'birthdate': 'lt1960-01-01'}).perform_resources(smart.server)
zed2 = Patient.where(struct={'family': 'Zed2'}).perform_resources(smart.server)
form = requests.post(base + '/Patient/_search', data={'family': 'Zed3'}).json()
one = Patient.read(created[0]['body']['id'], smart.server)
print(json.dumps({'created': created, 'bad': [bad.status_code, bad.json()],
                  'old': [p.as_json() for p in old], 'zed2': [p.as_json() for p in zed2],
                  'form': form, 'one': one.as_json()}))
"#;
    let stdout = f.python(script);
    assert_no_raw_phi(&stdout);
    for raw in ["Zed3", "234-56-7890", "345-67-8901", "1950-02-03", "(555) 201-1001"] {
        assert!(!stdout.contains(raw), "raw {raw:?} reached the client:\n{stdout}");
    }
    let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let ids: Vec<&str> = got["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["status"], 201, "{c}");
            assert_eq!(c["body"]["name"][0]["family"], "***", "{c}");
            c["body"]["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(got["bad"][0], 400, "{}", got["bad"]);
    assert_eq!(got["bad"][1]["resourceType"], "OperationOutcome");
    // The server's search, not loopgate's: one Patient born before 1960.
    let found = |key: &str| -> Vec<&str> {
        got[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["name"][0]["family"], "***", "{p}");
                assert_eq!(p["identifier"][0]["value"], "***", "{p}");
                p["id"].as_str().unwrap()
            })
            .collect()
    };
    assert_eq!(found("old"), [ids[0]]);
    assert_eq!(found("zed2"), [ids[1]]);
    let form = &got["form"]["entry"];
    assert_eq!(form.as_array().map(Vec::len), Some(1), "{}", got["form"]);
    assert_eq!(form[0]["resource"]["id"], ids[2]);
    assert_eq!(got["one"]["telecom"][0]["value"], "***");
    assert!(got["one"].get("birthDate").is_none(), "{}", got["one"]);

    let requests = f.server.requests();
    assert_eq!(requests.len(), 8, "{requests:?}");
    for r in &requests {
        assert_eq!(r["headers"]["authorization"], format!("Bearer {UPSTREAM_TOKEN}"), "{r}");
    }
    assert!(!serde_json::to_string(&requests).unwrap().contains(CLIENT_TOKEN));
    let form_sent = requests.iter().find(|r| r["path"] == "/fhir/Patient/_search").unwrap();
    assert_eq!(form_sent["body"], "family=Zed3");
    f.agent.wait_events("eight results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 8
    });
    let texts = f.command_texts();
    assert!(texts.contains(&"POST /fhir/Patient".to_owned()), "{texts:?}");
    assert!(
        texts.iter().all(|t| !t.contains("Zed") && !t.contains("1960")),
        "{texts:?}"
    );
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "{report}");
}

/// A batch or transaction is decided by its entries, each read as if it
/// came alone: one that loads Patients runs on the real server (its answer
/// masked), one with a DELETE among its entries is refused unsent, and the
/// record names what the entries did.
#[test]
fn a_transaction_is_decided_by_its_entries() {
    require_ebpf!();
    let f = fixture_with(
        "process",
        "",
        |ca| FhirServer::start_medplum(ca, &["127.0.0.1"]),
        |_, _| Vec::new(),
    );
    let script = r#"import json, sys, requests
base = sys.argv[1]
fhir = {'Content-Type': 'application/fhir+json'}
def patient(family, ssn):
    return {'resource': {'resourceType': 'Patient', 'name': [{'family': family}],
                         'identifier': [{'system': 'urn:oid:2.16.840.1.113883.4.1', 'value': ssn}]},
            'request': {'method': 'POST', 'url': 'Patient'}}
load = requests.post(base, headers=fhir, json={'resourceType': 'Bundle', 'type': 'transaction',
                     'entry': [patient('Tx1', '456-78-9012'), patient('Tx2', '567-89-0123')]})
found = requests.get(base + '/Patient', params={'identifier': '456-78-9012'})
purge = requests.post(base, headers=fhir, json={'resourceType': 'Bundle', 'type': 'batch', 'entry': [
    patient('Tx3', '678-90-1234'), {'request': {'method': 'DELETE', 'url': 'Patient?identifier=456-78-9012'}}]})
print(json.dumps({'load': [load.status_code, load.json()], 'found': found.json(),
                  'purge': [purge.status_code, purge.json()]}))
"#;
    let stdout = f.python(script);
    for raw in ["Tx1", "Tx2", "456-78-9012", "567-89-0123"] {
        assert!(!stdout.contains(raw), "raw {raw:?} reached the client:\n{stdout}");
    }
    let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(got["load"][0], 200, "{}", got["load"]);
    assert_eq!(got["load"][1]["type"], "transaction-response");
    let results = got["load"][1]["entry"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["response"]["status"].as_str().unwrap().starts_with("201"), "{r}");
    }
    // The server ran it: the first Patient is found (masked) by its SSN.
    assert_eq!(
        got["found"]["entry"].as_array().map(Vec::len),
        Some(1),
        "{}",
        got["found"]
    );
    assert_eq!(got["found"]["entry"][0]["resource"]["name"][0]["family"], "***");
    // A DELETE among a batch's entries is a DELETE: refused, not sent.
    assert_eq!(got["purge"][0], 403, "{}", got["purge"]);
    assert_eq!(got["purge"][1]["resourceType"], "OperationOutcome");
    let diagnostics = got["purge"][1]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("hipaa.deny_fhir_delete"), "{diagnostics}");
    let requests = f.server.requests();
    assert_eq!(requests.len(), 2, "the refused batch reached the server: {requests:?}");

    f.agent.wait_events("three results", |e| {
        e.iter().filter(|e| e["kind"] == "command_result").count() >= 3
    });
    let texts = f.command_texts();
    for expected in [
        "POST /fhir (transaction: 2 create Patient)",
        "POST /fhir (batch: 1 create Patient, 1 delete Patient)",
    ] {
        assert!(texts.iter().any(|t| t == expected), "{expected:?} not in {texts:?}");
    }
}

fn kubectl_bin() -> PathBuf {
    let path = loopgate_e2e::env::workspace_root().join("target/tools/bin/kubectl-1.35");
    assert!(path.is_file(), "{} missing: run `cargo xtask setup`", path.display());
    path
}

/// A kubeconfig in `dir` naming the `k8s` target and trusting loopgate's
/// CA, with the client's own token (which never reaches the server).
fn write_kubeconfig(f: &Fixture, server: &FhirServer, dir: &std::path::Path) -> PathBuf {
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {CLIENT_TOKEN}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: ward}}\ncurrent-context: x\n",
            server.port,
            f.loopgate_ca.display()
        ),
    )
    .unwrap();
    kubeconfig
}

/// Unmodified kubectl 1.35 through loopgate, against the Kubernetes-shaped
/// endpoints of the test server (discovery, an in-memory ConfigMap store,
/// a pods watch; it is not a real API server: none installs from the
/// registries this project reaches). Its kubeconfig names the target and
/// trusts the CA `loopgate ca export` printed, with the client's own token,
/// which never reaches the server.
#[test]
fn kubectl_get_apply_delete_and_watch_through_loopgate() {
    require_ebpf!();
    let (f, server) = kubernetes_fixture();
    let server = &server;
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(&f, server, home.path());
    let manifest = home.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\ndata:\n  note: ssn 555-12-3456\n",
    )
    .unwrap();
    let bin = kubectl_bin().to_string_lossy().into_owned();
    let kc = kubeconfig.to_string_lossy().into_owned();
    let cache = home.path().join("cache").to_string_lossy().into_owned();
    let base = [bin.as_str(), "--kubeconfig", &kc, "--cache-dir", &cache];
    let kubectl = |args: &[&str]| {
        let mut all = base.to_vec();
        all.extend_from_slice(args);
        let out = f.agent.exec(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // get: discovery, then the list.
    let (ok, out, err) = kubectl(&["get", "pods", "-o", "name"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "pod/p1");

    // apply creates a ConfigMap; what comes back is scanned by the
    // detectors, and so is the list it then appears in.
    let m = manifest.to_string_lossy().into_owned();
    let (ok, out, err) = kubectl(&["apply", "--validate=false", "-f", &m, "-o", "json"]);
    assert!(ok, "{out}{err}");
    let applied: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(applied["data"]["note"], "ssn ***", "{out}");
    let (ok, out, err) = kubectl(&["get", "configmaps", "-o", "json"]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("555-12-3456") && !out.contains("123-45-6789"), "{out}");
    assert!(out.contains("\"c2\""), "{out}");

    // delete of a ConfigMap is allowed and goes through.
    let (ok, out, err) = kubectl(&["delete", "configmap", "c2"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("configmap \"c2\" deleted"), "{out}");

    // Refused: kubectl prints loopgate's Status as the server's error.
    for (args, rule) in [
        (&["get", "secrets"][..], "hipaa.deny_k8s_secret_read"),
        (&["delete", "namespace", "ward"][..], "hipaa.deny_k8s_delete_namespace"),
    ] {
        let (ok, out, err) = kubectl(args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains("Error from server (Forbidden)"), "{err}");
        assert!(err.contains(rule), "{err}");
    }

    // A watch streams: the first event reaches kubectl, masked, while the
    // server still holds back the second.
    let mut all = base.to_vec();
    all.extend_from_slice(&[
        "get",
        "pods",
        "-w",
        "-o",
        "jsonpath={.metadata.name}={.metadata.annotations.note}{\"\\n\"}",
    ]);
    let mut watch = f
        .agent
        .loopgate(&["exec"])
        .arg("--")
        .args(&all)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut next = || lines.next().expect("watch output ended").unwrap();
    assert_eq!(next(), "p1=");
    assert_eq!(next(), "w1=ssn ***");
    server.release_watch();
    assert_eq!(next(), "w2=ssn ***");
    let _ = watch.kill();
    let _ = watch.wait();

    // exec is held by the HIPAA pack (pod labels cannot be seen, so every
    // exec); denied, the client gets a 403 Status and nothing is sent.
    // (curl sends kubectl's WebSocket upgrade request.)
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let upgrade = |path: &str| {
        f.agent
            .loopgate(&["exec"])
            .args(["--", "curl", "-sS", "--http1.1", "--cacert", &ca])
            .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
            .args([
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ])
            .args(["-H", "Sec-WebSocket-Protocol: v5.channel.k8s.io"])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://127.0.0.1:{}{path}", server.port))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let client = upgrade("/api/v1/namespaces/ward/pods/p1/exec?command=cat&command=%2Fetc%2Fphi&stdout=true");
    let id = wait_pending(&f);
    let out = f
        .agent
        .approvals_as(ALICE, &[APPROVERS_GID], &["deny", &id, "--reason", "no ticket"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, _, body) = split_status(&client.wait_with_output().unwrap());
    assert_eq!(status, 403, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st["kind"].as_str(), st["code"].as_u64()), (Some("Status"), Some(403)));
    assert!(st["message"].as_str().unwrap().contains("denied"), "{body}");
    // An allowed port-forward is relayed byte for byte after the 101.
    allow_k8s_forwards(&f.agent, f._dir.path());
    let relay = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="127.0.0.1")
s.sendall(b"GET /api/v1/namespaces/ward/pods/p1/portforward?ports=5432 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
          b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print(head.split(b"\r\n")[0].decode())
payload = bytes(range(256)) * 64
s.sendall(payload)
got = b""
while len(got) < len(payload):
    got += s.recv(65536)
print("echoed", len(got), got == payload)
"#;
    let port = server.port.to_string();
    let out = f.agent.exec(&["python3", "-c", relay, &ca, &port]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["HTTP/1.1 101 Switching Protocols", "echoed 16384 True"],
        "{stdout}"
    );

    // Everything that reached the server carried loopgate's token and the
    // impersonated caller, never the client's token; the refused requests
    // never reached it.
    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let h = &r["headers"];
        assert_eq!(h["authorization"], format!("Bearer {UPSTREAM_TOKEN}"), "{r}");
        assert_eq!(h["impersonate-user"], "unix:root", "{r}");
    }
    assert!(
        !requests.iter().any(|r| r["path"].as_str().unwrap().contains("secrets")
            || (r["method"] == "DELETE" && r["path"] == "/api/v1/namespaces/ward")),
        "{requests:?}"
    );
    let verbs: Vec<String> = f
        .agent
        .events()
        .iter()
        .filter(|e| e["kind"] == "command" && e["target"]["name"] == "k8s")
        .map(|e| e["command"]["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    for verb in ["get", "list", "create", "delete", "watch", "exec", "portforward"] {
        assert!(verbs.iter().any(|v| v == verb), "{verb} not in {verbs:?}");
    }
    // The port-forward's result counts its bytes each way (not masked).
    let events = f.agent.wait_events("the port-forward's result", |e| {
        let pf = e
            .iter()
            .find(|e| e["kind"] == "command" && e["command"]["kind"] == "portforward");
        pf.is_some_and(|pf| {
            e.iter()
                .any(|r| r["kind"] == "command_result" && r["command_id"] == pf["event_id"])
        })
    });
    let pf = events
        .iter()
        .find(|e| e["kind"] == "command" && e["command"]["kind"] == "portforward")
        .unwrap();
    let result = events
        .iter()
        .find(|r| r["kind"] == "command_result" && r["command_id"] == pf["event_id"])
        .unwrap();
    assert_eq!(result["outcome"]["bytes_to_server"], 16384, "{result}");
    assert_eq!(result["outcome"]["bytes_to_client"], 16384, "{result}");
}

/// A write's object is what it does: kubectl's Pod specs and patches (JSON)
/// and its typed clients' objects (protobuf) are read before the decision.
/// One that reaches the node is refused, one that reads a Secret waits for
/// a person, a plain one reaches the server exactly as kubectl sent it,
/// and a body loopgate cannot read is not sent.
#[test]
fn kubectl_writes_are_decided_by_what_their_objects_ask_for() {
    require_ebpf!();
    let (f, server) = kubernetes_fixture();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(&f, &server, home.path())
        .to_string_lossy()
        .into_owned();
    let cache = home.path().join("cache").to_string_lossy().into_owned();
    let kubectl = |args: &[&str]| {
        f.agent
            .loopgate(&["exec"])
            .args(["--", &kubectl_bin().to_string_lossy(), "--kubeconfig", &kubeconfig])
            .args(["--cache-dir", &cache])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let done = |child: Child| {
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let manifest = |name: &str, spec: Value| {
        let path = home.path().join(format!("{name}.json"));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
        std::fs::write(&path, pod.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let container = json!({"name": "app", "image": "busybox", "command": ["sleep", "1d"]});
    let pod_posts = || {
        server
            .requests()
            .into_iter()
            .filter(|r| {
                let path = r["path"].as_str().unwrap_or("");
                r["method"] == "POST" && path.split('?').next() == Some("/api/v1/namespaces/ward/pods")
            })
            .collect::<Vec<_>>()
    };

    // A plain Pod: created, and the server got kubectl's object unchanged.
    let plain = manifest("plain", json!({"containers": [container]}));
    let (ok, out, err) = done(kubectl(&["create", "--validate=false", "-f", &plain, "-o", "name"]));
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "pod/plain");
    let posted = pod_posts();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let sent: Value = serde_json::from_str(posted[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["spec"]["containers"][0], container, "{sent}");

    // Pod specs and patches that reach the node: refused, never sent.
    let privileged = manifest(
        "root",
        json!({"containers": [{"name": "app", "image": "busybox", "securityContext": {"privileged": true}}],
               "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}),
    );
    let host_network = r#"[{"op":"add","path":"/spec/hostNetwork","value":true}]"#;
    for (args, field) in [
        (
            vec!["create", "--validate=false", "-f", &privileged],
            "hostPath, privileged",
        ),
        (
            vec!["patch", "pod", "p1", "--type=json", "-p", host_network],
            "hostNetwork",
        ),
    ] {
        let (ok, out, err) = done(kubectl(&args));
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains("Error from server (Forbidden)"), "{err}");
        assert!(
            err.contains("hipaa.deny_k8s_node_access") && err.contains(field),
            "{err}"
        );
    }
    // A service account token would be a credential of the automation's own.
    let (ok, out, err) = done(kubectl(&["create", "token", "builder"]));
    assert!(!ok && err.contains("hipaa.deny_k8s_token_request"), "{out}{err}");
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r["method"] == "PATCH" || r["path"].as_str().unwrap().contains("/token")),
        "a refused write reached the server"
    );
    assert_eq!(pod_posts().len(), 1, "a refused Pod reached the server");

    // A Pod that reads a Secret waits; denied, kubectl says so.
    let env = json!([{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]);
    let reads_secret = manifest(
        "reader",
        json!({"containers": [{"name": "app", "image": "busybox", "env": env}]}),
    );
    let client = kubectl(&["create", "--validate=false", "-f", &reads_secret]);
    let id = wait_pending(&f);
    assert_eq!(pod_posts().len(), 1, "sent before a decision");
    let out = f
        .agent
        .approvals_as(ALICE, &[APPROVERS_GID], &["deny", &id, "--reason", "no secret reads"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, out, err) = done(client);
    assert!(!ok && err.contains("Error from server (Forbidden)"), "{out}{err}");
    assert_eq!(pod_posts().len(), 1);

    // kubectl's typed clients send protobuf: read through the API's
    // schema, decided like JSON, sent as they came.
    let (ok, out, err) = done(kubectl(&["create", "job", "nightly", "--image=busybox", "--", "true"]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("job.batch/nightly created"), "{out}");
    let job = server
        .requests()
        .into_iter()
        .find(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .starts_with("/apis/batch/v1/namespaces/ward/jobs")
        })
        .expect("the job reached the server");
    assert_eq!(job["headers"]["content-type"], "application/vnd.kubernetes.protobuf");
    assert!(job["body"].as_str().unwrap().starts_with("k8s\u{0}"), "{job}");

    // A body loopgate cannot read as the API server will: not sent.
    let ca = f.loopgate_ca.to_string_lossy().into_owned();
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces/ward/pods", server.port);
    let out = f.agent.exec(&[
        "curl",
        "-sS",
        "--cacert",
        &ca,
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/cbor",
        "--data-binary",
        "pod",
        &url,
    ]);
    let (status, _, body) = split_status(&out);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("read as JSON or protobuf only"), "{body}");
    assert_eq!(pod_posts().len(), 1, "an unread body reached the server");

    // On the record, each with the rule that decided it.
    let rules = [
        "hipaa.deny_k8s_node_access",
        "hipaa.deny_k8s_token_request",
        "hipaa.hold_k8s_secret_use",
    ];
    f.agent.wait_events("the writes' decisions", |events| {
        rules.iter().all(|rule| {
            events
                .iter()
                .any(|e| e["kind"] == "command" && e["target"]["name"] == "k8s" && e["decision"]["rule_id"] == *rule)
        })
    });
}

/// `kubectl exec` (1.35: WebSocket, v5.channel.k8s.io) through loopgate:
/// held by the HIPAA pack; denied, kubectl says so; approved, its stdout
/// and stderr reach the terminal masked, stdin reaches the command as
/// typed, the exit status comes back, and the session is recorded
/// (masked), verified and replayed. kubectl 1.20 (SPDY) is refused.
#[test]
fn kubectl_exec_is_masked_recorded_verified_and_replayed() {
    require_ebpf!();
    let (f, server) = kubernetes_fixture();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(&f, &server, home.path());
    let kubectl_exec = |args: &[&str]| {
        f.agent
            .loopgate(&["exec"])
            .arg("--")
            .arg(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .arg("exec")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Denied: kubectl says so. (kubectl retries a refused WebSocket exec
    // over SPDY at once and prints only that answer; loopgate refuses SPDY
    // exec before any decision, answering with the denial it just gave.)
    let client = kubectl_exec(&["p1", "--", "cat", "/etc/hostname"]);
    let id = wait_pending(&f);
    let out = f
        .agent
        .approvals_as(ALICE, &[APPROVERS_GID], &["deny", &id, "--reason", "no ticket"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Error from server (Forbidden)") && stderr.contains("denied"),
        "{stderr}"
    );
    let pending = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["list", "--json"]);
    let pending: Vec<Value> = serde_json::from_slice(&pending.stdout).unwrap();
    assert!(pending.is_empty(), "{pending:?}");

    let script = "echo patient ssn 123-45-6789; cat; echo err 321-54-9876 >&2; exit 3";
    let mut client = kubectl_exec(&["-i", "p1", "--", "sh", "-c", script]);
    let id = wait_pending(&f);
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r["path"].as_str().unwrap().contains("/exec")),
        "sent before approval"
    );
    let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["approve", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    {
        use std::io::Write as _;
        let mut stdin = client.stdin.take().unwrap();
        stdin.write_all(b"typed 555-12-3456\n").unwrap();
    }
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}\n{}", f.agent.log());
    assert_eq!(stdout, "patient ssn ***\ntyped ***\n", "{stderr}");
    assert!(stderr.contains("err ***"), "{stderr}");
    for raw in ["123-45-6789", "321-54-9876", "555-12-3456"] {
        assert!(
            !stdout.contains(raw) && !stderr.contains(raw),
            "{raw} reached the terminal"
        );
    }

    // The result names the recording; it holds the masked output and the
    // masked stdin, its hash checks, and the replay plays it.
    let events = f.agent.wait_events("the exec's result", |e| {
        e.iter().any(|e| {
            e["kind"] == "command_result" && e["command"]["parameters"].as_array().is_some_and(|p| !p.is_empty())
        })
    });
    let execs: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "command" && e["command"]["kind"] == "exec")
        .collect();
    let rules: Vec<&str> = execs
        .iter()
        .map(|e| e["decision"]["rule_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        rules,
        [
            "hipaa.hold_k8s_exec",
            "loopgate.upgrade_not_relayed",
            "hipaa.hold_k8s_exec"
        ],
        "the denied exec, its SPDY retry, the approved exec"
    );
    let exec = execs[2];
    let result = events
        .iter()
        .find(|e| e["kind"] == "command_result" && e["command_id"] == exec["event_id"])
        .expect("the exec's result");
    assert_eq!(result["outcome"]["status"], "failed", "{result}");
    assert_eq!(result["outcome"]["error_code"], "exit:3", "{result}");
    assert!(result["outcome"]["masked_count"].as_u64().unwrap() >= 2, "{result}");
    let params: Vec<&str> = result["command"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let cast = params
        .iter()
        .find_map(|p| p.strip_prefix("recording="))
        .unwrap_or_else(|| panic!("no recording in {params:?}"));
    let text = std::fs::read_to_string(f.agent.audit_dir.join(cast)).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["version"], 2, "{text}");
    let title = lines[0]["title"].as_str().unwrap();
    assert!(
        title.starts_with("kubectl exec ward/p1") && title.contains(" -- sh -c echo patient ssn ***;"),
        "{title}"
    );
    let of = |code: &str| -> String {
        lines[1..]
            .iter()
            .filter(|e| e[1] == code)
            .map(|e| e[2].as_str().unwrap())
            .collect()
    };
    assert!(
        of("o").contains("patient ssn ***\n") && of("o").contains("err ***"),
        "{text}"
    );
    // stdin is recorded as the lines read back (its echo is the command's
    // output), masked, each ended as Enter is: never the raw bytes.
    assert_eq!(of("i"), "typed ***\r", "{text}");
    for raw in ["123-45-6789", "321-54-9876", "555-12-3456"] {
        assert!(!text.contains(raw), "{raw} in the recording");
    }
    let (code, report) = f.agent.verify_audit();
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("1 recordings match"), "{report}");
    let session = exec["session_id"].as_str().unwrap();
    let replay = std::process::Command::new(loopgate_e2e::env::loopgate_bin())
        .args(["audit", "replay", session, "--no-wait", "--dir"])
        .arg(&f.agent.audit_dir)
        .output()
        .unwrap();
    let played = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{played}");
    assert!(
        played.contains("-- recording 1 of 1: GET /api/v1/namespaces/ward/pods/p1/exec?"),
        "{played}"
    );
    assert!(
        played.contains("patient ssn ***") && played.contains("typed ***"),
        "{played}"
    );
    assert!(
        !played.contains("123-45-6789") && !played.contains("555-12-3456"),
        "{played}"
    );

    // Rewritten (an SSN put back), the recording fails verify.
    std::fs::write(
        f.agent.audit_dir.join(cast),
        text.replace("patient ssn ***", "patient ssn 123-45-6789"),
    )
    .unwrap();
    let (code, report) = f.agent.verify_audit();
    assert_ne!(code, Some(0), "{report}");
    assert!(report.contains("was rewritten"), "{report}");

    // stdin larger than every buffer on the way, echoed back by `cat`
    // while kubectl is still writing it: it all comes back, in order.
    let input: String = (0..40_000)
        .map(|i| format!("line {} of the input\n", "abc".repeat(i % 7 + 1)))
        .collect();
    let mut client = kubectl_exec(&["-i", "p1", "--", "cat"]);
    let id = wait_pending(&f);
    let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["approve", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut stdin = client.stdin.take().unwrap();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || {
            use std::io::Write as _;
            stdin.write_all(input.as_bytes()).unwrap();
        })
    };
    let out = client.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout == input.as_bytes(),
        "{} of {} bytes came back",
        out.stdout.len(),
        input.len()
    );

    // The server itself refuses an approved exec (its RBAC): kubectl
    // prints the answer of its SPDY retry, which is the server's, masked.
    let client = kubectl_exec(&["p2", "--", "true"]);
    let id = wait_pending(&f);
    let out = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["approve", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Error from server (Forbidden)")
            && stderr.contains(r#"pods "p2" is forbidden: no exec for you (owner ssn ***)"#),
        "{stderr}"
    );
    assert!(!stderr.contains("222-33-4444"), "{stderr}");

    // kubectl 1.20 speaks SPDY only: its exec is refused at once (SPDY is
    // not parsed, so it could not be masked), nobody is asked to approve
    // it, and nothing reaches the server.
    let old = loopgate_e2e::env::workspace_root().join("target/tools/bin/kubectl-1.20");
    assert!(old.is_file(), "{} missing: run `cargo xtask setup`", old.display());
    let before = server.requests().len();
    let out = f
        .agent
        .loopgate(&["exec"])
        .arg("--")
        .arg(&old)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(home.path().join("cache-1.20"))
        .args(["exec", "p1", "--", "cat", "/etc/hostname"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("relayed over WebSocket only"), "{stderr}");
    let pending = f.agent.approvals_as(ALICE, &[APPROVERS_GID], &["list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&pending.stdout).trim(), "[]");
    let reached: Vec<Value> = server.requests().split_off(before);
    assert!(
        reached.iter().all(|r| !r["path"].as_str().unwrap().contains("/exec")),
        "{reached:?}"
    );
}
