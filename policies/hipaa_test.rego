# Unit tests for the HIPAA pack: `loopgate policy test policies/`.
package loopgate.hipaa_test

import data.loopgate

# --- input builders (the shape PolicyInput serializes to) ---

principal(subject, groups) := {"subject": subject, "groups": groups}

analyst := principal("alice", ["analysts"])

clinician := principal("bob", ["clinical-staff"])

nobody := principal("", [])

stmt(kind, read, written) := {
	"kind": kind,
	"tables_read": read,
	"tables_written": written,
	"columns": [{"expr": "*", "alias": null}],
	"has_where": false,
	"has_limit": false,
	"limit": null,
	"dynamic": null,
	"explain": false,
	"copy_query": null,
}

req(who, identity, classification, text) := {
	"principal": who,
	"process": {"pid": 42, "uid": 1000, "user": "bot", "unit": "etl.service", "exe": "/usr/bin/psql", "comm": "psql"},
	"target": {"name": "clinic", "protocol": "postgres", "identity": identity},
	"statement": {
		"fingerprint": "00000000000000aa",
		"normalized_text": text,
		"masked_text": text,
		"classification": classification,
		"error": null,
	},
	"session": {"id": "s-1", "database": "clinic", "application_name": null},
	"time": {"unix_secs": 0, "weekday": 4, "hour": 0, "minute": 0},
}

ask(classification) := req(analyst, "token", classification, "")

where(s) := object.union(s, {"has_where": true})

limited(s, n) := object.union(s, {"has_limit": true, "limit": n})

# --- deny ---

test_truncate_denied_anywhere if {
	d := loopgate.decision with input as ask(stmt("truncate", [], ["scratch"]))
	d.decision == "deny"
	d.rule_id == "hipaa.deny_truncate"
	d.reason == "TRUNCATE is not allowed (scratch)"
}

test_drop_phi_table_denied if {
	d := loopgate.decision with input as ask(stmt("drop_table", [], ["public.patients"]))
	d.rule_id == "hipaa.deny_drop_phi_table"
}

test_drop_other_table_allowed if {
	d := loopgate.decision with input as ask(stmt("drop_table", [], ["scratch"]))
	d.decision == "allow"
}

test_alter_drop_column_on_phi_denied if {
	d := loopgate.decision with input as req(analyst, "token", stmt("alter", [], ["patients"]), "ALTER TABLE patients DROP COLUMN ssn")
	d.rule_id == "hipaa.deny_alter_drop_phi"
}

test_alter_add_column_on_phi_allowed if {
	d := loopgate.decision with input as req(analyst, "token", stmt("alter", [], ["patients"]), "ALTER TABLE patients ADD COLUMN x int")
	d.decision == "allow"
}

test_drop_database_denied if {
	d := loopgate.decision with input as ask(stmt("drop_database", [], []))
	d.rule_id == "hipaa.deny_drop_database"
}

test_unparseable_denied if {
	i := object.union(ask(null), {"statement": {"classification": null, "error": {"error": "parse", "message": "x", "line": 1, "column": 2}}})
	d := loopgate.decision with input as i
	d.rule_id == "hipaa.deny_unparseable"
}

test_dynamic_denied if {
	s := object.union(stmt("do_block", [], []), {"dynamic": {"reason": "do_block"}})
	d := loopgate.decision with input as ask(s)
	d.rule_id == "hipaa.deny_dynamic_sql"
	d.reason == "dynamic SQL (do_block) runs code that cannot be checked"
}

test_unknown_principal_denied_on_token_target if {
	d := loopgate.decision with input as req(nobody, "token", where(stmt("select", ["visits"], [])), "")
	d.rule_id == "hipaa.deny_unknown_principal"
}

test_unknown_principal_allowed_on_process_target if {
	d := loopgate.decision with input as req(nobody, "process", where(stmt("select", ["scratch"], [])), "")
	d.decision == "allow"
}

test_deny_wins_over_hold if {
	# Unknown principal and a bulk PHI read: the deny is reported.
	d := loopgate.decision with input as req(nobody, "token", stmt("select", ["patients"], []), "")
	d.decision == "deny"
}

# --- hold ---

test_copy_to_of_phi_held_always if {
	d := loopgate.decision with input as ask(stmt("copy_to", ["patients"], []))
	d.decision == "hold"
	d.rule_id == "hipaa.hold_phi_export"
	d.approval.group == "phi-approvers"
	d.approval.row_threshold == null
}

test_unbounded_phi_select_held_past_threshold if {
	d := loopgate.decision with input as ask(stmt("select", ["patients"], []))
	d.decision == "hold"
	d.rule_id == "hipaa.hold_bulk_phi_select"
	d.approval.row_threshold == 1000
	d.approval.min_approvals == 1
	d.approval.timeout_secs == 900
	{"column": "patients.ssn", "mode": "partial"} in d.mask
}

test_unbounded_phi_cursor_held_before_it_runs if {
	d := loopgate.decision with input as ask(stmt("declare_cursor", ["patients"], []))
	d.decision == "hold"
	d.rule_id == "hipaa.hold_phi_cursor"
	d.approval.row_threshold == null
}

test_bounded_phi_cursor_allowed if {
	d := loopgate.decision with input as ask(where(stmt("declare_cursor", ["patients"], [])))
	d.decision == "allow"
}

test_large_limit_held if {
	d := loopgate.decision with input as ask(limited(stmt("select", ["patients"], []), 50000))
	d.rule_id == "hipaa.hold_bulk_phi_select"
}

test_small_limit_allowed if {
	d := loopgate.decision with input as ask(limited(stmt("select", ["patients"], []), 10))
	d.decision == "allow"
}

test_select_with_where_allowed if {
	d := loopgate.decision with input as ask(where(stmt("select", ["patients"], [])))
	d.decision == "allow"
}

test_unbounded_select_of_non_phi_allowed if {
	d := loopgate.decision with input as ask(stmt("select", ["scratch"], []))
	d.decision == "allow"
	d.mask == []
}

# --- mask ---

test_phi_masked_by_default if {
	d := loopgate.decision with input as ask(where(stmt("select", ["patients"], [])))
	{"column": "patients.name", "mode": "redact"} in d.mask
	{"column": "patients.ssn", "mode": "partial"} in d.mask
}

test_clinical_staff_see_name_never_ssn if {
	i := req(clinician, "token", where(stmt("select", ["public.patients"], [])), "")
	d := loopgate.decision with input as i
	{"column": "patients.name", "mode": "keep"} in d.mask
	{"column": "patients.ssn", "mode": "partial"} in d.mask
	not {"column": "patients.ssn", "mode": "keep"} in d.mask
}

test_returning_of_phi_write_masked if {
	d := loopgate.decision with input as ask(where(stmt("update", [], ["patients"])))
	d.decision == "allow"
	{"column": "patients.ssn", "mode": "partial"} in d.mask
}

# --- SSH ---

ssh_req(identity, action) := {
	"principal": principal("unix:deploy", []),
	"process": {"pid": 42, "uid": 1000, "user": "deploy", "unit": "etl.service", "exe": "/usr/bin/ssh", "comm": "ssh"},
	"target": {"name": "ehr-host", "protocol": "ssh", "identity": identity},
	"action": action,
	"session": {"id": "s-1", "database": null, "application_name": null},
	"time": {"unix_secs": 1795680000, "weekday": 4, "hour": 14, "minute": 0},
}

exec(command) := ssh_req("process", {"kind": "ssh_exec", "command": command})

test_ssh_exec_allowed if {
	d := loopgate.decision with input as exec("uptime; df -h")
	d.decision == "allow"
	d.mask == []
}

test_ssh_shell_and_sftp_allowed if {
	shell := loopgate.decision with input as ssh_req("process", {"kind": "ssh_shell", "pty": true, "term": "xterm"})
	shell.decision == "allow"
	sftp := loopgate.decision with input as ssh_req("process", {"kind": "ssh_sftp", "operation": "session", "path": ""})
	sftp.decision == "allow"
}

test_ssh_forwards_denied if {
	tunnel := {"kind": "ssh_forward", "channel": "direct-tcpip", "host": "db", "port": 5432}
	d := loopgate.decision with input as ssh_req("process", tunnel)
	d.decision == "deny"
	d.rule_id == "hipaa.deny_ssh_forward"
	agent := loopgate.decision with input as ssh_req("process", {"kind": "ssh_forward", "channel": "agent", "host": "", "port": 0})
	agent.rule_id == "hipaa.deny_ssh_forward"
}

test_ssh_forward_allowed_when_configured if {
	tunnel := {"kind": "ssh_forward", "channel": "direct-tcpip", "host": "db", "port": 5432}
	d := loopgate.decision with input as ssh_req("process", tunnel) with data.phi_catalog.ssh.allow_forward as true
	d.decision == "allow"
}

test_ssh_deleting_phi_paths_denied if {
	d := loopgate.decision with input as exec("rm -rf /srv/phi/2024")
	d.decision == "deny"
	d.rule_id == "hipaa.deny_ssh_phi_delete"
	tmp := loopgate.decision with input as exec("rm -rf /tmp/scratch")
	tmp.decision == "allow"
}

test_ssh_database_dumps_held if {
	d := loopgate.decision with input as exec("/usr/bin/pg_dump -Fc clinic > /tmp/c.dump")
	d.decision == "hold"
	d.rule_id == "hipaa.hold_ssh_db_dump"
	d.approval.row_threshold == null
	piped := loopgate.decision with input as exec("cd /tmp&&mysqldump ehr|gzip")
	piped.rule_id == "hipaa.hold_ssh_db_dump"
}

test_ssh_archives_of_phi_paths_held if {
	d := loopgate.decision with input as exec("tar czf - /srv/phi/records")
	d.decision == "hold"
	d.rule_id == "hipaa.hold_ssh_phi_archive"
	c := loopgate.decision with input as exec("tar -C/var/lib/ehr -cf - .")
	c.rule_id == "hipaa.hold_ssh_phi_archive"
}

test_ssh_archives_elsewhere_allowed if {
	d := loopgate.decision with input as exec("tar czf - /var/log/nginx")
	d.decision == "allow"
	cat := loopgate.decision with input as exec("cat /srv/www/records.csv")
	cat.decision == "allow"
}

test_ssh_relative_climbs_flag_changes_and_brackets if {
	every command in ["cd /srv/www && rm -rf ../phi", "rm -rf ../../x"] {
		d := loopgate.decision with input as exec(command)
		d.rule_id == "hipaa.deny_ssh_phi_delete"
	}
	every command in [
		"find /srv/phi -name '*.csv' -delete",
		"sed -i s/a/b/ /srv/phi/a.csv",
		"perl -pi -e s/a/b/ /srv/phi/a.csv",
		"tar -xzf /tmp/x.tgz -C /srv/phi",
		"tar xf /tmp/x.tar --directory=/srv/phi",
		"rsync -a --delete /tmp/empty/ /srv/phi/",
	] {
		d := loopgate.decision with input as exec(command)
		d.rule_id == "hipaa.deny_ssh_phi_change"
	}
	# An unclosed `[` is no glob, and no policy error.
	sed := loopgate.decision with input as exec("sed -e 's/\\[//g' /tmp/a")
	sed.decision == "allow"
	ls := loopgate.decision with input as exec("ls /tmp/[")
	ls.decision == "allow"
	# A path above a PHI path is no read of one.
	df := loopgate.decision with input as exec("df -h /")
	df.decision == "allow"
	# SFTP changes to a directory a PHI path is under.
	mv := loopgate.decision with input as sftp("rename", "/srv", "/tmp/srv")
	mv.rule_id == "hipaa.deny_sftp_phi_write"
	chmod := loopgate.decision with input as sftp("setstat", "/var/lib/", null)
	chmod.rule_id == "hipaa.deny_sftp_phi_write"
	beside := loopgate.decision with input as sftp("rename", "/srv/www/a", "/srv/www/b")
	beside.decision == "allow"
}

test_ssh_phi_paths_quoted_or_in_substitutions_are_phi if {
	every command in [
		"rm -rf /srv/ph\"\"i",
		"rm -rf '/srv/phi/2024'",
		"rm -rf /srv/p\\hi",
		"rm -rf $(echo /srv/phi)",
		"rm -rf `echo /var/lib/ehr`",
		"rm -rf /srv/{phi,tmp}",
		"x=1\nrm -rf /srv/phi",
	] {
		d := loopgate.decision with input as exec(command)
		d.rule_id == "hipaa.deny_ssh_phi_delete"
	}
	d := loopgate.decision with input as exec("cat \"/srv/phi/a b.csv\"")
	d.rule_id == "hipaa.hold_ssh_phi_read"
	ok := loopgate.decision with input as exec("echo '(hello, world)' && ls /tmp")
	ok.decision == "allow"
}

test_ssh_phi_paths_spelled_otherwise_or_above_are_phi if {
	every command in [
		"rm -rf /srv//phi/2024",
		"rm -rf /srv/./phi",
		"rm -rf /srv/p*",
		"rm -rf /*",
		"rm -rf /srv",
		"rm -rf /srv/x/../phi",
		"shred -u /var/lib/ehr/",
	] {
		d := loopgate.decision with input as exec(command)
		d.rule_id == "hipaa.deny_ssh_phi_delete"
	}
	other := loopgate.decision with input as exec("rm -rf /srv/phix /srv/www/p*")
	other.decision == "allow"
}

test_ssh_changes_to_phi_paths_denied if {
	every command in [
		"ln -s /srv/phi /tmp/out",
		"mv /srv/phi/a.csv /tmp/",
		"cp /srv/phi/a.csv /tmp/a.csv",
		"chmod -R 777 /srv/phi",
		"echo x >> /srv/phi/a.csv",
		"echo x 2>/var/lib/ehr/log",
		"sort /tmp/a>/srv/phi/b",
	] {
		d := loopgate.decision with input as exec(command)
		d.rule_id == "hipaa.deny_ssh_phi_change"
	}
	every command in ["cp /tmp/a /tmp/b", "echo x > /tmp/y"] {
		d := loopgate.decision with input as exec(command)
		d.decision == "allow"
	}
	read := loopgate.decision with input as exec("cat /srv/phi/a.csv")
	read.rule_id == "hipaa.hold_ssh_phi_read"
}

sftp(operation, path, to) := ssh_req("process", {"kind": "ssh_sftp", "operation": operation, "path": path, "to": to})

test_sftp_changes_under_phi_paths_denied if {
	w := loopgate.decision with input as sftp("write", "/srv/phi/new.csv", null)
	w.rule_id == "hipaa.deny_sftp_phi_write"
	into := loopgate.decision with input as sftp("rename", "/tmp/x.csv", "/srv/phi/x.csv")
	into.rule_id == "hipaa.deny_sftp_phi_write"
	link := loopgate.decision with input as sftp("link", "/srv/phi/a", "/tmp/a")
	link.rule_id == "hipaa.deny_sftp_phi_write"
	dir := loopgate.decision with input as sftp("rmdir", "/srv/phi", null)
	dir.rule_id == "hipaa.deny_sftp_phi_write"
	beside := loopgate.decision with input as sftp("write", "/srv/phix/a", null)
	beside.decision == "allow"
	rm := loopgate.decision with input as sftp("remove", "/var/lib/ehr/a", null)
	rm.decision == "deny"
}

test_sftp_reads_of_phi_held_and_other_paths_allowed if {
	r := loopgate.decision with input as sftp("read", "/srv/phi/records.csv", null)
	r.decision == "hold"
	r.rule_id == "hipaa.hold_sftp_phi_read"
	l := loopgate.decision with input as sftp("list", "/srv/phi", null)
	l.decision == "hold"
	l.rule_id == "hipaa.hold_sftp_phi_read"
	l2 := loopgate.decision with input as sftp("list", "/srv", null)
	l2.decision == "allow"
	o := loopgate.decision with input as sftp("read", "/srv/phix/a", null)
	o.decision == "allow"
	w := loopgate.decision with input as sftp("write", "/tmp/upload.bin", null)
	w.decision == "allow"
}

test_commands_naming_phi_paths_held_unless_the_caller_reads_phi if {
	every command in ["cat /srv/phi/records.csv", "head -n 5 /srv/phi/a.csv | cut -d, -f1", "ls /srv/phi", "python3 etl.py --in=/var/lib/ehr/x"] {
		d := loopgate.decision with input as exec(command)
		d.decision == "hold"
		d.rule_id == "hipaa.hold_ssh_phi_read"
	}
	reader := object.union(exec("cat /srv/phi/records.csv"), {"principal": principal("unix:etl", ["phi-readers"])})
	r := loopgate.decision with input as reader with data.phi_catalog.ssh.read_groups as ["phi-readers"]
	r.decision == "allow"
	sftp_reader := object.union(sftp("read", "/srv/phi/records.csv", null), {"principal": principal("unix:etl", ["phi-readers"])})
	s := loopgate.decision with input as sftp_reader with data.phi_catalog.ssh.read_groups as ["phi-readers"]
	s.decision == "allow"
	# A reader still may not delete, and an archive (bulk) still waits.
	rm := loopgate.decision with input as object.union(exec("rm /srv/phi/a"), {"principal": principal("unix:etl", ["phi-readers"])}) with data.phi_catalog.ssh.read_groups as ["phi-readers"]
	rm.decision == "deny"
	tar := loopgate.decision with input as object.union(exec("tar -cf - /srv/phi"), {"principal": principal("unix:etl", ["phi-readers"])}) with data.phi_catalog.ssh.read_groups as ["phi-readers"]
	tar.rule_id == "hipaa.hold_ssh_phi_archive"
	other := loopgate.decision with input as exec("cat /srv/www/index.html")
	other.decision == "allow"
}

test_scp_and_git_into_phi_denied_out_of_phi_held if {
	up := loopgate.decision with input as exec("scp -t /srv/phi/x.csv")
	up.rule_id == "hipaa.deny_ssh_phi_change"
	up_dir := loopgate.decision with input as exec("scp -r -d -t -- /srv/phi")
	up_dir.rule_id == "hipaa.deny_ssh_phi_change"
	push := loopgate.decision with input as exec("git-receive-pack '/srv/phi/repo.git'")
	push.rule_id == "hipaa.deny_ssh_phi_change"
	down := loopgate.decision with input as exec("scp -f /srv/phi/records.csv")
	down.decision == "hold"
	down.rule_id == "hipaa.hold_ssh_phi_transfer"
	clone := loopgate.decision with input as exec("git-upload-pack '/srv/phi/repo.git'")
	clone.rule_id == "hipaa.hold_ssh_phi_transfer"
	rsync_up := loopgate.decision with input as exec("rsync --server -logDtpre.iLsfxCIvu . /srv/phi/")
	rsync_up.rule_id == "hipaa.deny_ssh_phi_change"
	rsync_down := loopgate.decision with input as exec("rsync --server --sender -logDtpre.iLsfxCIvu . /srv/phi/records.csv")
	rsync_down.rule_id == "hipaa.hold_ssh_phi_archive"
	elsewhere := loopgate.decision with input as exec("scp -t /tmp/x.csv")
	elsewhere.decision == "allow"
	fetch := loopgate.decision with input as exec("scp -f /srv/www/index.html")
	fetch.decision == "allow"
}

test_ssh_oidc_targets_need_a_principal if {
	i := object.union(ssh_req("oidc", {"kind": "ssh_exec", "command": "uptime"}), {"principal": nobody})
	d := loopgate.decision with input as i
	d.rule_id == "hipaa.deny_unknown_principal"
}

# --- effects: what the statement's CTEs and created functions do ---

effects(s, kinds) := object.union(s, {"effects": kinds})

test_truncate_in_a_function_body_denied if {
	s := effects(stmt("create_function", [], ["visits"]), ["create_function", "truncate"])
	d := loopgate.decision with input as ask(s)
	d.rule_id == "hipaa.deny_truncate"
}

test_drop_of_phi_in_a_function_body_denied if {
	s := effects(stmt("create_function", [], ["patients"]), ["create_function", "drop_table"])
	d := loopgate.decision with input as ask(s)
	d.rule_id == "hipaa.deny_drop_phi_table"
}

test_drop_schema_in_a_cte_or_body_denied if {
	s := effects(where(stmt("select", [], [])), ["drop_schema", "select"])
	d := loopgate.decision with input as ask(s)
	d.rule_id == "hipaa.deny_drop_database"
}

test_harmless_function_allowed if {
	s := effects(stmt("create_function", [], []), ["create_function"])
	d := loopgate.decision with input as ask(s)
	d.decision == "allow"
}

# --- predicates on PHI columns ---

filtered(s, columns) := object.union(where(s), {"predicate_columns": columns})

by_ssn := filtered(stmt("select", ["patients"], []), ["patients.id", "patients.ssn"])

test_phi_predicates_allowed_by_default if {
	d := loopgate.decision with input as ask(by_ssn)
	d.decision == "allow"
}

test_phi_predicates_denied_when_set_to_deny if {
	d := loopgate.decision with input as ask(by_ssn)
		with data.phi_catalog.refuse_phi_predicates as "deny"
	d.decision == "deny"
	d.rule_id == "hipaa.deny_phi_predicate"
	d.reason == "a filter on PHI columns you may not see (patients.ssn) reveals their values"
}

test_phi_predicates_held_when_set_to_hold if {
	d := loopgate.decision with input as ask(by_ssn)
		with data.phi_catalog.refuse_phi_predicates as "hold"
	d.decision == "hold"
	d.rule_id == "hipaa.hold_phi_predicate"
	d.approval.row_threshold == null
	{"column": "patients.ssn", "mode": "partial"} in d.mask
}

test_predicates_on_columns_the_caller_sees_allowed if {
	s := filtered(stmt("select", ["patients"], []), ["patients.name", "patients.dob"])
	d := loopgate.decision with input as req(clinician, "token", s, "")
		with data.phi_catalog.refuse_phi_predicates as "deny"
	d.decision == "allow"
}

test_predicates_on_hidden_columns_refused_for_clinicians_too if {
	d := loopgate.decision with input as req(clinician, "token", by_ssn, "")
		with data.phi_catalog.refuse_phi_predicates as "deny"
	d.rule_id == "hipaa.deny_phi_predicate"
}

test_schema_qualified_phi_predicate_refused if {
	s := filtered(stmt("select", ["public.patients"], []), ["public.patients.email"])
	d := loopgate.decision with input as ask(s)
		with data.phi_catalog.refuse_phi_predicates as "deny"
	d.rule_id == "hipaa.deny_phi_predicate"
}

test_non_phi_predicates_allowed if {
	s := filtered(stmt("select", ["patients", "scratch"], []), ["patients.id", "patients.city", "scratch.ssn"])
	d := loopgate.decision with input as ask(s)
		with data.phi_catalog.refuse_phi_predicates as "deny"
	d.decision == "allow"
}

# --- HTTP: FHIR and Kubernetes ---

http_req(fhir, k8s, method, path) := {
	"principal": analyst,
	"process": {"pid": 42, "uid": 1000, "user": "bot", "unit": "etl.service", "exe": "/usr/bin/curl", "comm": "curl"},
	"target": {"name": "fhir", "protocol": "https", "identity": "oidc"},
	"action": {"kind": "http_request", "method": method, "host": "fhir.example", "path": path, "query": null, "fhir": fhir, "kubernetes": k8s},
	"session": {"id": "s-1", "database": null, "application_name": null},
	"time": {"unix_secs": 0, "weekday": 4, "hour": 0, "minute": 0},
}

fhir_req(interaction, type, operation) := http_req(
	{"interaction": interaction, "resource_type": type, "id": null, "operation": operation, "search_params": []},
	null, "GET", "/fhir",
)

k8s_req(verb, resource) := http_req(
	null,
	{"verb": verb, "group": "", "version": "v1", "resource": resource, "subresource": null, "namespace": "ward", "name": null},
	"GET", "/api/v1",
)

test_fhir_search_allowed if {
	d := loopgate.decision with input as fhir_req("search", "Patient", null)
	d.decision == "allow"
	d.mask == []
}

test_fhir_delete_denied if {
	d := loopgate.decision with input as fhir_req("delete", "Patient", null)
	d.decision == "deny"
	d.rule_id == "hipaa.deny_fhir_delete"
	d.reason == "FHIR delete is not allowed (Patient)"
}

test_fhir_export_held_at_every_level if {
	every type in ["Patient", "Group", null] {
		d := loopgate.decision with input as fhir_req("operation", type, "$export")
		d.decision == "hold"
		d.rule_id == "hipaa.hold_fhir_export"
		d.approval.row_threshold == null
	}
}

test_fhir_everything_allowed if {
	d := loopgate.decision with input as fhir_req("operation", "Patient", "$everything")
	d.decision == "allow"
}

test_k8s_secrets_never_read if {
	every verb in ["get", "list", "watch"] {
		d := loopgate.decision with input as k8s_req(verb, "secrets")
		d.rule_id == "hipaa.deny_k8s_secret_read"
	}
}

test_k8s_secret_create_allowed if {
	d := loopgate.decision with input as k8s_req("create", "secrets")
	d.decision == "allow"
}

test_k8s_namespace_delete_denied if {
	d := loopgate.decision with input as k8s_req("delete", "namespaces")
	d.rule_id == "hipaa.deny_k8s_delete_namespace"
}

test_k8s_exec_held if {
	d := loopgate.decision with input as k8s_req("exec", "pods")
	d.decision == "hold"
	d.rule_id == "hipaa.hold_k8s_exec"
}

test_k8s_debug_held_as_an_exec if {
	debug := object.union(k8s_req("patch", "pods"), {"action": {"kubernetes": {"subresource": "ephemeralcontainers"}}})
	d := loopgate.decision with input as debug
	d.decision == "hold"
	d.reason == "kubectl debug (an ephemeral container in a pod) needs approval"
	read := object.union(k8s_req("get", "pods"), {"action": {"kubernetes": {"subresource": "ephemeralcontainers"}}})
	r := loopgate.decision with input as read
	r.decision == "allow"
}

test_k8s_tunnels_denied_unless_allowed if {
	every verb in ["portforward", "proxy"] {
		d := loopgate.decision with input as k8s_req(verb, "pods")
		d.decision == "deny"
		d.rule_id == "hipaa.deny_k8s_forward"
		allowed := loopgate.decision with input as k8s_req(verb, "pods") with data.phi_catalog.kubernetes.allow_forward as true
		allowed.decision == "allow"
	}
}

k8s_write(verb, resource, content_type, body) := object.union(
	k8s_req(verb, resource),
	{"action": {"method": "POST", "kubernetes": {"body": body, "content_type": content_type}}},
)

pod_with(spec) := {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}

plain_container := {"name": "app", "image": "busybox", "command": ["sleep", "1d"]}

test_k8s_plain_pod_create_allowed if {
	d := loopgate.decision with input as k8s_write("create", "pods", "application/json", pod_with({"containers": [plain_container]}))
	d.decision == "allow"
}

test_k8s_pod_specs_that_reach_the_node_denied_in_any_kind if {
	privileged := object.union(plain_container, {"securityContext": {"privileged": true}})
	cases := [
		[pod_with({"containers": [privileged]}), "privileged"],
		[pod_with({"hostNetwork": true, "containers": [plain_container]}), "hostNetwork"],
		[pod_with({"HostPID": true, "containers": [plain_container]}), "hostPID"],
		[pod_with({"containers": [plain_container], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}), "hostPath"],
		[pod_with({"containers": [object.union(plain_container, {"securityContext": {"capabilities": {"add": ["sys_admin"]}}})]}), "capabilities"],
		# A Deployment's template, a CronJob's, a custom resource's: the same spec.
		[{"kind": "Deployment", "spec": {"template": {"spec": {"containers": [privileged]}}}}, "privileged"],
		[{"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostIPC": true}}}}}}, "hostIPC"],
		[{"kind": "Workflow", "spec": {"templates": [{"container": privileged}]}}, "privileged"],
		[{"kind": "PersistentVolume", "spec": {"hostPath": {"path": "/srv/phi"}}}, "hostPath"],
	]
	every c in cases {
		d := loopgate.decision with input as k8s_write("create", "pods", "application/json", c[0])
		d.decision == "deny"
		d.rule_id == "hipaa.deny_k8s_node_access"
		contains(d.reason, c[1])
	}
}

test_k8s_patches_that_reach_the_node_denied if {
	cases := [
		["application/strategic-merge-patch+json", {"spec": {"template": {"spec": {"hostNetwork": true}}}}],
		["application/merge-patch+json", {"spec": {"volumes": [{"name": "r", "hostPath": {"path": "/"}}]}}],
		["application/json-patch+json", [{"op": "add", "path": "/spec/hostNetwork", "value": true}]],
		["application/json-patch+json", [{"op": "replace", "path": "/spec/containers/0/securityContext", "value": {"privileged": true}}]],
		["application/json-patch+json", [{"op": "replace", "path": "/spec/volumes/0/hostPath/path", "value": "/"}]],
		["application/json-patch+json", [{"op": "add", "path": "/spec/containers/0/securityContext/capabilities/add/-", "value": "SYS_ADMIN"}]],
		["application/json-patch+json", [{"op": "copy", "from": "/metadata/labels/x", "path": "/spec/hostPID"}]],
		["application/json-patch+json", [{"op": "move", "from": "/metadata/labels/x", "path": "/spec/containers/0/securityContext/capabilities/add"}]],
	]
	every c in cases {
		d := loopgate.decision with input as k8s_write("patch", "deployments", c[0], c[1])
		d.decision == "deny"
		d.rule_id == "hipaa.deny_k8s_node_access"
	}
}

test_k8s_harmless_patches_and_look_alikes_allowed if {
	cases := [
		["application/json-patch+json", [{"op": "add", "path": "/spec/hostNetwork", "value": false}]],
		["application/json-patch+json", [{"op": "add", "path": "/metadata/labels/tier", "value": "web"}]],
		["application/json-patch+json", [{"op": "add", "path": "/spec/containers/0/securityContext/capabilities/add/-", "value": "NET_BIND_SERVICE"}]],
		["application/json-patch+json", [{"op": "remove", "path": "/spec/hostNetwork"}]],
		["application/merge-patch+json", {"spec": {"replicas": 3}}],
		# A ConfigMap's values are strings, whatever their keys say.
		["application/json", {"kind": "ConfigMap", "data": {"hostPath": "/srv", "privileged": "true", "secret": "s"}}],
	]
	every c in cases {
		d := loopgate.decision with input as k8s_write("patch", "deployments", c[0], c[1])
		d.decision == "allow"
	}
}

test_k8s_workloads_that_read_secrets_held if {
	env := object.union(plain_container, {"env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]})
	env_from := object.union(plain_container, {"envFrom": [{"secretRef": {"name": "db"}}]})
	cases := [
		["application/json", pod_with({"containers": [env]})],
		["application/json", pod_with({"containers": [env_from]})],
		["application/json", {"kind": "Job", "spec": {"template": {"spec": {"containers": [plain_container], "volumes": [{"name": "s", "secret": {"secretName": "db"}}]}}}}],
		["application/json-patch+json", [{"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "s", "secret": {"secretName": "db"}}}]],
		["application/json-patch+json", [{"op": "copy", "from": "/spec/volumes/0", "path": "/spec/template/spec/containers/0/envFrom/0/secretRef"}]],
	]
	every c in cases {
		d := loopgate.decision with input as k8s_write("create", "jobs", c[0], c[1])
		d.decision == "hold"
		d.rule_id == "hipaa.hold_k8s_secret_use"
	}
}

test_k8s_token_requests_denied if {
	i := object.union(k8s_req("create", "serviceaccounts"), {"action": {"kubernetes": {"subresource": "token", "name": "builder"}}})
	d := loopgate.decision with input as i
	d.decision == "deny"
	d.rule_id == "hipaa.deny_k8s_token_request"
}

test_k8s_pod_list_allowed if {
	d := loopgate.decision with input as k8s_req("list", "pods")
	d.decision == "allow"
}

test_http_without_principal_denied if {
	i := object.union(fhir_req("search", "Patient", null), {"principal": nobody})
	d := loopgate.decision with input as i
	d.rule_id == "hipaa.deny_unknown_principal"
}

fhir_bundle(kind, entries) := object.union(
	fhir_req("batch", null, null),
	{"action": {"method": "POST", "fhir": {"bundle_type": kind, "entries": entries}}},
)

fhir_entry(interaction, type, operation) := {"interaction": interaction, "resource_type": type, "id": null, "operation": operation, "search_params": [], "entries": []}

test_fhir_transaction_decided_by_its_entries if {
	loads := fhir_bundle("transaction", [fhir_entry("create", "Patient", null), fhir_entry("update", "Observation", null)])
	d := loopgate.decision with input as loads
	d.decision == "allow"
	deletes := fhir_bundle("batch", [fhir_entry("create", "Patient", null), fhir_entry("delete", "Observation", null)])
	denied := loopgate.decision with input as deletes
	denied.decision == "deny"
	denied.rule_id == "hipaa.deny_fhir_delete"
	denied.reason == "FHIR delete is not allowed (Observation)"
	exports := fhir_bundle("batch", [fhir_entry("operation", null, "$export")])
	held := loopgate.decision with input as exports
	held.decision == "hold"
	held.rule_id == "hipaa.hold_fhir_export"
	held.reason == "FHIR bulk export (system) needs approval"
}
