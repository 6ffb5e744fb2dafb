# HIPAA default rules. PHI tables and columns come from phi_catalog.json.
package loopgate.hipaa

stmt := input.statement.classification

threshold := data.phi_catalog.approval.row_threshold

# A catalogue entry for a table as written: `patients`, or `schema.patients`
# in any schema (erring towards treating a table as PHI).
entry(t) := data.phi_catalog.tables[t]

entry(t) := data.phi_catalog.tables[name] if {
	not data.phi_catalog.tables[t]
	parts := split(t, ".")
	count(parts) > 1
	name := parts[count(parts) - 1]
}

bare(t) := parts[count(parts) - 1] if {
	parts := split(t, ".")
}

phi_read := {t | some t in stmt.tables_read; entry(t)}

phi_written := {t | some t in stmt.tables_written; entry(t)}

phi_tables := phi_read | phi_written

words := {w | some w in split(lower(input.statement.normalized_text), " ")}

# What the statement can do: its own kind, each data-modifying CTE's, and
# what the body of a function it creates does (`effects`), as the
# built-in policy judges it. `CREATE FUNCTION f() ... AS 'TRUNCATE t'` is a
# TRUNCATE; `WITH d AS (DELETE ...) SELECT` is a DELETE.
does(kind) if stmt.kind == kind

does(kind) if kind in stmt.effects

# --- predicates on PHI ---

# `where ssn like '1%'` answers a question about a value the caller may not
# see: repeated, it reads the value out. `phi_catalog.refuse_phi_predicates`
# is "off" (default), "deny" or "hold" for such filters (WHERE, JOIN ... ON,
# HAVING, FILTER, anywhere in the statement) on a PHI column hidden from
# the caller (none of its groups in the column's `visible_to`).
predicate_setting := object.get(data.phi_catalog, "refuse_phi_predicates", "off")

# `table.column` (table as written, schema kept) → PHI column hidden from
# the caller.
hidden_predicate(ref) if {
	parts := split(ref, ".")
	count(parts) > 1
	column := parts[count(parts) - 1]
	table := concat(".", array.slice(parts, 0, count(parts) - 1))
	spec := entry(table).columns[column]
	not visible(spec)
}

visible(spec) if {
	some g in input.principal.groups
	g in spec.visible_to
}

hidden_predicates := sort([ref | some ref in stmt.predicate_columns; hidden_predicate(ref)])

# --- deny ---

# Token targets need an authenticated subject; process-identity targets
# name the caller by the kernel's attribution (subject `unix:<user>`).
deny contains {"rank": 10, "rule_id": "hipaa.deny_unknown_principal", "reason": "no authenticated principal"} if {
	input.principal.subject == ""
	input.target.identity != "process"
}

deny contains {"rank": 20, "rule_id": "hipaa.deny_unparseable", "reason": "SQL that cannot be parsed cannot be checked"} if {
	input.statement.error != null
}

deny contains {"rank": 20, "rule_id": "hipaa.deny_unparseable", "reason": "SQL that cannot be parsed cannot be checked"} if {
	input.statement.classification == null
}

deny contains {"rank": 30, "rule_id": "hipaa.deny_dynamic_sql", "reason": reason} if {
	stmt.dynamic != null
	reason := sprintf("dynamic SQL (%s) runs code that cannot be checked", [stmt.dynamic.reason])
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_truncate", "reason": reason} if {
	does("truncate")
	reason := sprintf("TRUNCATE is not allowed (%s)", [concat(", ", stmt.tables_written)])
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_drop_database", "reason": "DROP DATABASE and DROP SCHEMA are not allowed"} if {
	some kind in {"drop_database", "drop_schema"}
	does(kind)
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_drop_phi_table", "reason": reason} if {
	does("drop_table")
	count(phi_written) > 0
	reason := sprintf("DROP TABLE of PHI tables is not allowed (%s)", [concat(", ", sort(phi_written))])
}

# ALTER TABLE ... DROP [COLUMN | CONSTRAINT] on a PHI table destroys data
# or the constraints that protect it.
deny contains {"rank": 40, "rule_id": "hipaa.deny_alter_drop_phi", "reason": reason} if {
	does("alter")
	count(phi_written) > 0
	"drop" in words
	reason := sprintf("ALTER ... DROP on PHI tables is not allowed (%s)", [concat(", ", sort(phi_written))])
}

deny contains {"rank": 50, "rule_id": "hipaa.deny_phi_predicate", "reason": reason} if {
	predicate_setting == "deny"
	count(hidden_predicates) > 0
	reason := sprintf("a filter on PHI columns you may not see (%s) reveals their values", [concat(", ", hidden_predicates)])
}

# --- hold ---

hold contains {"rank": 40, "rule_id": "hipaa.hold_phi_predicate", "reason": reason, "row_threshold": null} if {
	predicate_setting == "hold"
	count(hidden_predicates) > 0
	reason := sprintf("a filter on PHI columns you may not see (%s) needs approval", [concat(", ", hidden_predicates)])
}

# COPY ... TO of a PHI table (or a query over one): always held.
hold contains {"rank": 10, "rule_id": "hipaa.hold_phi_export", "reason": reason, "row_threshold": null} if {
	stmt.kind == "copy_to"
	count(phi_tables) > 0
	reason := sprintf("COPY TO of PHI tables (%s) needs approval", [concat(", ", sort(phi_tables))])
}

# A SELECT on a PHI table with no WHERE and no (or a large, or a
# parameter) LIMIT: held when it would return more than the threshold.
hold contains {"rank": 20, "rule_id": "hipaa.hold_bulk_phi_select", "reason": reason, "row_threshold": threshold} if {
	stmt.kind == "select"
	not stmt.explain
	count(phi_read) > 0
	not stmt.has_where
	unbounded
	reason := sprintf("bulk read of PHI tables (%s) needs approval", [concat(", ", sort(phi_read))])
}

# A cursor over a PHI table with the same unbounded query: its rows come by
# FETCH, statements of their own that no row threshold can follow, so the
# cursor itself waits for approval.
hold contains {"rank": 30, "rule_id": "hipaa.hold_phi_cursor", "reason": reason, "row_threshold": null} if {
	stmt.kind == "declare_cursor"
	count(phi_read) > 0
	not stmt.has_where
	unbounded
	reason := sprintf("a cursor over PHI tables (%s) without WHERE needs approval", [concat(", ", sort(phi_read))])
}

unbounded if not stmt.has_limit

unbounded if {
	stmt.has_limit
	stmt.limit == null
}

unbounded if stmt.limit > threshold

# --- SSH ---

ssh := data.phi_catalog.ssh

ssh_command := input.action.command if input.action.kind == "ssh_exec"

# The words of an exec'd command line, shell separators read as spaces
# (`a;b`, `a|b`, `a&&b`, and `(`, `)`, `{`, `}`, backquotes, newlines, so
# `$(echo /srv/phi)` and `/srv/{phi,x}` show their paths) and a redirect
# starting a word (`a>f` is `a`, `>f`); quotes and backslashes removed as
# the shell removes them (`/srv/ph""i`, `'/srv/phi'`, `/srv/p\hi` are
# `/srv/phi`). A best-effort reading, not a shell parser: variables and
# scripts are not seen.
ssh_unquoted := strings.replace_n({"\"": "", "'": "", "\\": ""}, ssh_command)

ssh_line := strings.replace_n(
	{";": " ", "|": " ", "&": " ", "\t": " ", "\n": " ", "(": " ", ")": " ", "{": " ", "}": " ", "`": " ", ",": " ", ">": " >", "<": " <"},
	ssh_unquoted,
)

ssh_words := {w |
	some w in split(ssh_line, " ")
	w != ""
}

# Programs named in the command line, by base name (`/usr/bin/pg_dump`).
ssh_programs := {p |
	some w in ssh_words
	parts := split(w, "/")
	p := parts[count(parts) - 1]
}

# The words of the command line in order (for what follows a `>`).
ssh_word_list := [w |
	some w in split(ssh_line, " ")
	w != ""
]

# The path in a word, from its first `/` (`-C/srv/phi`, `--file=/srv/phi/y`,
# `>/srv/phi/z`), as its segments: empty and `.` segments dropped, so
# `/srv//phi/./a/` is `srv`, `phi`, `a`.
ssh_word_path(w) := [s |
	indexof(w, "/") >= 0
	some s in split(substring(w, indexof(w, "/"), -1), "/")
	not s in {"", "."}
]

# A path (as segments) is PHI-possible when it is under a PHI path or
# above one (`rm -rf /srv` removes /srv/phi too), compared segment by
# segment with shell globs (`/srv/p*`, `/*`) read as globs; a `..` segment
# cannot be placed without the shell's working directory, so it errs
# towards PHI.
phi_possible(path) if {
	some root in ssh.phi_paths
	r := [s | some s in split(root, "/"); s != ""]
	k := min([count(r), count(path)])
	phi_glob(array.slice(path, 0, k), array.slice(r, 0, k))
}

phi_possible(path) if ".." in path

# Under a PHI path (not above one): what a read reaches.
phi_under(path) if {
	some root in ssh.phi_paths
	r := [s | some s in split(root, "/"); s != ""]
	count(path) >= count(r)
	phi_glob(array.slice(path, 0, count(r)), r)
}

phi_under(path) if ".." in path

# The command's segments, globs read as globs, against a PHI path's. A
# `[` class becomes `?` (one character either way): an unclosed `[`
# (`sed 's/\[//'`) is no valid glob, and must not fail the decision.
phi_glob(path, root) if {
	pattern := strings.replace_n({"[": "?", "]": "?"}, concat("/", path))
	glob.match(pattern, ["/"], concat("/", root))
}

# A word's path (`/srv/phi`, `-C/srv/phi`), or a relative one that climbs
# (`../phi`: where it lands depends on the working directory).
ssh_word_paths := {[w, path] |
	some w in ssh_words
	contains(w, "/")
	parts := split(w, "/")
	path := array.concat(ssh_word_path(w), [".." | ".." in parts])
}

# Words naming a configured PHI path, or a path above one.
ssh_phi_paths := {w |
	some [w, path] in ssh_word_paths
	phi_possible(path)
}

# Words naming a configured PHI path or one under it (reads).
ssh_phi_read_paths := {w |
	some [w, path] in ssh_word_paths
	phi_under(path)
}

# Where output is redirected (`> f`, `>>f`, `2>f`): the file is changed.
ssh_redirects contains ssh_word_path(w) if {
	some w in ssh_word_list
	contains(w, ">")
	indexof(w, "/") > indexof(w, ">")
}

ssh_redirects contains ssh_word_path(ssh_word_list[i + 1]) if {
	some i, w in ssh_word_list
	endswith(w, ">")
	contains(ssh_word_list[i + 1], "/")
}

# A forward is a tunnel whose traffic loopgate cannot see.
deny contains {"rank": 30, "rule_id": "hipaa.deny_ssh_forward", "reason": reason} if {
	input.action.kind == "ssh_forward"
	not ssh.allow_forward
	reason := sprintf("SSH forwarding (%s) is not allowed: a tunnel's traffic cannot be checked", [input.action.channel])
}

# Destroying PHI records on a host is not undone by an approval.
deny contains {"rank": 40, "rule_id": "hipaa.deny_ssh_phi_delete", "reason": reason} if {
	some p in ssh_programs
	p in ssh.delete_programs
	count(ssh_phi_paths) > 0
	reason := sprintf("deleting PHI paths over SSH (%s) is not allowed", [p])
}

# Changing files under PHI paths over SSH (moving, linking, copying over,
# permissions, writing through a redirect) is not allowed: a link or a copy
# elsewhere would take them out of the paths these rules know.
deny contains {"rank": 40, "rule_id": "hipaa.deny_ssh_phi_change", "reason": reason} if {
	some p in ssh_programs
	p in ssh.change_programs
	count(ssh_phi_paths) > 0
	reason := sprintf("changing PHI paths over SSH (%s) is not allowed", [p])
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_ssh_phi_change", "reason": reason} if {
	some path in ssh_redirects
	phi_possible(path)
	reason := "writing to a PHI path through a redirect over SSH is not allowed"
}

# Programs that change or delete files by a flag, not by their name:
# `find -delete`, `sed -i`/`perl -i` (in place), `tar -x` (extracting over),
# `rsync --delete`.
ssh_flag_changes if {
	"find" in ssh_programs
	some w in ssh_words
	w in {"-delete", "-exec", "-execdir", "-ok"}
}

ssh_flag_changes if {
	some p in ssh_programs
	p in {"sed", "perl"}
	some w in ssh_words
	regex.match(`^-[a-zA-Z]*i`, w)
}

ssh_flag_changes if {
	"tar" in ssh_programs
	some w in ssh_words
	regex.match(`^(-?[A-Za-z]*x[A-Za-z]*|--extract|--get)$`, w)
}

ssh_flag_changes if {
	"rsync" in ssh_programs
	some w in ssh_words
	startswith(w, "--delete")
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_ssh_phi_change", "reason": "changing PHI paths over SSH (find -delete, sed -i, tar -x, rsync --delete) is not allowed"} if {
	ssh_flag_changes
	count(ssh_phi_paths) > 0
}

# SFTP: files under PHI paths are never changed over SFTP, and read or
# listed only with approval (a transfer is not masked: it is an export of
# the file; a listing's names may be patients'). loopgate gives every path as the server resolves it, links
# followed (`/srv//phi/../phi/a` and a link to /srv/phi/a are
# `/srv/phi/a`); `under_phi` compares whole segments.
sftp_changes := {"write", "remove", "rename", "link", "mkdir", "rmdir", "setstat", "symlink"}

under_phi(path) if {
	some root in ssh.phi_paths
	r := trim_right(root, "/")
	path == r
}

under_phi(path) if {
	some root in ssh.phi_paths
	startswith(path, concat("", [trim_right(root, "/"), "/"]))
}

# A directory a PHI path is under (`/srv` for `/srv/phi`): renaming,
# removing or changing it changes the PHI path too.
above_phi(path) if {
	some root in ssh.phi_paths
	startswith(concat("", [trim_right(root, "/"), "/"]), concat("", [trim_right(path, "/"), "/"]))
}

sftp_paths contains input.action.path if input.action.kind == "ssh_sftp"

sftp_paths contains input.action.to if {
	input.action.kind == "ssh_sftp"
	input.action.to != null
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_sftp_phi_write", "reason": reason} if {
	input.action.operation in sftp_changes
	some path in sftp_paths
	under_phi(path)
	reason := sprintf("SFTP %s under a PHI path is not allowed", [input.action.operation])
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_sftp_phi_write", "reason": reason} if {
	input.action.operation in sftp_changes
	some path in sftp_paths
	above_phi(path)
	reason := sprintf("SFTP %s of a directory a PHI path is under is not allowed", [input.action.operation])
}

hold contains {"rank": 20, "rule_id": "hipaa.hold_sftp_phi_read", "reason": reason, "row_threshold": null} if {
	input.action.kind == "ssh_sftp"
	input.action.operation in {"read", "list"}
	under_phi(input.action.path)
	not ssh_phi_reader
	reason := sprintf("SFTP %s under a PHI path (unmasked: file contents, or names) needs approval", [input.action.operation])
}

# Callers in one of ssh.read_groups read PHI paths without an approval
# each time (the column catalogue's visible_to, for files).
ssh_phi_reader if {
	some g in input.principal.groups
	g in object.get(ssh, "read_groups", [])
}

# A command naming a PHI path reads it (the changes and deletions above
# are refused outright): its output passes the value detectors only, and
# a file's names and addresses are no detected values, so it waits for a
# person. A word-by-word reading: a script on stdin is not seen (the
# server's permissions are the backstop, see README).
hold contains {"rank": 30, "rule_id": "hipaa.hold_ssh_phi_read", "reason": "a command naming PHI paths over SSH (its output is masked by value detectors only) needs approval", "row_threshold": null} if {
	input.action.kind == "ssh_exec"
	count(ssh_phi_read_paths) > 0
	not ssh_phi_reader
}

# Transfer programs (scp's legacy protocol, git's packs): what they carry
# is not masked. Writing into PHI paths with them is a change (refused);
# copying PHI paths out is an export (held).
ssh_transfer_writes if {
	"scp" in ssh_programs
	some w in ssh_words
	startswith(w, "-")
	not startswith(w, "--")
	contains(w, "t")
}

ssh_transfer_writes if "git-receive-pack" in ssh_programs

# rsync's remote side receives unless it is the sender.
ssh_transfer_writes if {
	"rsync" in ssh_programs
	"--server" in ssh_words
	not "--sender" in ssh_words
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_ssh_phi_change", "reason": "copying into a PHI path over SSH (scp, rsync, git push) is not allowed"} if {
	ssh_transfer_writes
	count(ssh_phi_paths) > 0
}

hold contains {"rank": 20, "rule_id": "hipaa.hold_ssh_phi_transfer", "reason": reason, "row_threshold": null} if {
	some p in ssh_programs
	p in ssh.transfer_programs
	count(ssh_phi_paths) > 0
	not ssh_phi_reader
	reason := sprintf("a copy of PHI paths over SSH (%s, not masked) needs approval", [p])
}

hold contains {"rank": 20, "rule_id": "hipaa.hold_ssh_db_dump", "reason": reason, "row_threshold": null} if {
	some p in ssh_programs
	p in ssh.dump_programs
	reason := sprintf("a database dump over SSH (%s) needs approval", [p])
}

hold contains {"rank": 20, "rule_id": "hipaa.hold_ssh_phi_archive", "reason": reason, "row_threshold": null} if {
	some p in ssh_programs
	p in ssh.archive_programs
	count(ssh_phi_paths) > 0
	reason := sprintf("an archive of PHI paths over SSH (%s) needs approval", [p])
}

# --- HTTP: FHIR and Kubernetes requests (input.action.kind "http_request") ---

http := input.action if input.action.kind == "http_request"

fhir := http.fhir

k8s := http.kubernetes

# The interactions a request carries: itself, and each entry of a batch
# or transaction (read from the body before the decision), so a DELETE
# inside a transaction is decided as a DELETE.
fhir_interactions contains fhir if fhir != null

fhir_interactions contains e if {
	some e in fhir.entries
}

fhir_type(r) := r.resource_type if r.resource_type != null

fhir_type(r) := "system" if r.resource_type == null

# FHIR delete destroys clinical records; corrections are updates.
deny contains {"rank": 40, "rule_id": "hipaa.deny_fhir_delete", "reason": reason} if {
	some r in fhir_interactions
	r.interaction == "delete"
	reason := sprintf("FHIR delete is not allowed (%s)", [fhir_type(r)])
}

# Kubernetes Secrets hold credentials to PHI stores: never read through
# loopgate (its own credential is the one that reaches them).
deny contains {"rank": 40, "rule_id": "hipaa.deny_k8s_secret_read", "reason": "reading Kubernetes Secrets is not allowed"} if {
	k8s.resource == "secrets"
	k8s.verb in {"get", "list", "watch"}
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_k8s_delete_namespace", "reason": "deleting namespaces is not allowed"} if {
	k8s.resource == "namespaces"
	k8s.verb in {"delete", "deletecollection"}
}

# port-forward and proxy are tunnels into a pod (or a service, a node):
# what passes is another protocol loopgate does not read — a database's
# rows unmasked, for one. Refused as SSH forwards are, unless
# kubernetes.allow_forward.
deny contains {"rank": 30, "rule_id": "hipaa.deny_k8s_forward", "reason": reason} if {
	k8s.verb in {"portforward", "proxy"}
	not data.phi_catalog.kubernetes.allow_forward
	reason := sprintf("kubectl %s is not allowed: a tunnel's traffic cannot be checked", [k8s.verb])
}

# exec and attach into a pod reach whatever it holds, PHI included. The
# pod's labels are not in the request (loopgate sees the path only), so
# every exec and attach is held, not only those into pods labelled PHI.
# An approved one runs with its output masked and recorded: the approval
# lets a person in, it does not unmask what the pod prints; stdin is not
# checked (an exec can run anything), which is why it is still held.
hold contains {"rank": 10, "rule_id": "hipaa.hold_k8s_exec", "reason": reason, "row_threshold": null} if {
	k8s.verb in {"exec", "attach"}
	reason := sprintf("kubectl %s into a pod needs approval", [k8s.verb])
}

# kubectl debug adds an ephemeral container to a running pod: it runs
# its own command beside the pod's data, no attach needed, so it waits
# as an exec does.
hold contains {"rank": 10, "rule_id": "hipaa.hold_k8s_exec", "reason": "kubectl debug (an ephemeral container in a pod) needs approval", "row_threshold": null} if {
	k8s.subresource == "ephemeralcontainers"
	not k8s.verb in {"get", "list", "watch"}
}

# kubectl create token (and the TokenRequest API): a service account token
# is a credential the automation would hold itself, good for the API
# server without loopgate in the way.
deny contains {"rank": 40, "rule_id": "hipaa.deny_k8s_token_request", "reason": "minting a service account token is not allowed: the automation would hold a credential of its own"} if {
	k8s.resource == "serviceaccounts"
	k8s.subresource == "token"
}

# A write's object, or its patch, is what the write does: loopgate reads
# the body whole before deciding (input.action.kubernetes.body). A Pod
# spec sits in Pods, Deployments, Jobs, CronJobs and custom resources
# alike, so the body is searched by field name at any depth, not by kind.
# Names are compared lower-cased: older API servers matched them so.

# [field, value] for every member of the body, at any depth.
k8s_fields contains [lower(key), value] if {
	walk(k8s.body, [path, value])
	count(path) > 0
	key := path[count(path) - 1]
	is_string(key)
}

# A JSON patch (RFC 6902) names its field in each op's path: [path
# segments, value]. copy and move bring a value loopgate cannot see,
# taken as the worst ("unknown").
k8s_patch_ops contains [segments, value] if {
	k8s.content_type == "application/json-patch+json"
	some op in k8s.body
	is_string(op.path)
	segments := [lower(replace(replace(part, "~1", "/"), "~0", "~")) | some part in split(op.path, "/")]
	value := k8s_op_value(op)
}

k8s_op_value(op) := object.get(op, "value", null) if op.op in {"add", "replace"}

k8s_op_value(op) := "unknown" if op.op in {"copy", "move"}

k8s_fields contains [segments[count(segments) - 1], value] if {
	some [segments, value] in k8s_patch_ops
	value != "unknown"
}

k8s_name(x) := lower(x) if is_string(x)

k8s_host_flags := {"privileged": "privileged", "hostnetwork": "hostNetwork", "hostpid": "hostPID", "hostipc": "hostIPC"}

k8s_host_capabilities := {"ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "DAC_READ_SEARCH", "DAC_OVERRIDE", "NET_ADMIN", "BPF", "PERFMON"}

# What in the body reaches the node: its disk, its namespaces, the kernel.
k8s_node_access contains name if {
	some [key, value] in k8s_fields
	value == true
	name := k8s_host_flags[key]
}

k8s_node_access contains "hostPath" if {
	some [key, value] in k8s_fields
	key == "hostpath"
	is_object(value)
}

k8s_node_access contains "procMount: Unmasked" if {
	some [key, value] in k8s_fields
	key == "procmount"
	k8s_name(value) == "unmasked"
}

k8s_node_access contains "capabilities" if {
	walk(k8s.body, [path, value])
	count(path) >= 3
	k8s_name(path[count(path) - 3]) == "capabilities"
	k8s_name(path[count(path) - 2]) == "add"
	is_string(value)
	upper(value) in k8s_host_capabilities
}

# A patch that sets a field loopgate cannot see the value of (copy,
# move), or adds to a hostPath or to added capabilities, counts as well.
k8s_node_access contains name if {
	some [segments, value] in k8s_patch_ops
	some i, part in segments
	name := k8s_patched_node_field(part, value, array.slice(segments, i + 1, count(segments)))
}

k8s_patched_node_field(part, _, _) := "hostPath" if part == "hostpath"

k8s_patched_node_field(part, "unknown", _) := name if name := k8s_host_flags[part]

k8s_patched_node_field(part, value, rest) := "capabilities" if {
	part == "capabilities"
	rest[0] == "add"
	some added in k8s_patched_values(value)
	is_string(added)
	upper(added) in k8s_host_capabilities
}

k8s_patched_values(value) := value if is_array(value)

k8s_patched_values(value) := [value] if {
	is_string(value)
	value != "unknown"
}

k8s_patched_values("unknown") := ["ALL"]

deny contains {"rank": 40, "rule_id": "hipaa.deny_k8s_node_access", "reason": reason} if {
	count(k8s_node_access) > 0
	reason := sprintf("a Pod spec that reaches the node (%s) is not allowed: what it reads there is not audited", [concat(", ", sort(k8s_node_access))])
}

# A Pod that takes a Secret (as environment or a volume) can print what
# the rule above never lets through loopgate: it waits for a person.
k8s_secret_refs := {"secret", "secretref", "secretkeyref"}

k8s_secret_use if {
	some [key, value] in k8s_fields
	key in k8s_secret_refs
	is_object(value)
}

k8s_secret_use if {
	some [segments, _] in k8s_patch_ops
	some part in segments
	part in k8s_secret_refs
}

hold contains {"rank": 10, "rule_id": "hipaa.hold_k8s_secret_use", "reason": "a workload that reads a Secret (environment or volume) needs approval", "row_threshold": null} if {
	k8s_secret_use
}

# Bulk data export ($export: system, Patient or Group level) is held.
hold contains {"rank": 10, "rule_id": "hipaa.hold_fhir_export", "reason": reason, "row_threshold": null} if {
	some r in fhir_interactions
	r.operation == "$export"
	reason := sprintf("FHIR bulk export (%s) needs approval", [fhir_type(r)])
}

# --- mask ---

# Every PHI column of every PHI table the statement touches, as
# `table.column` rules; `keep` where one of the caller's groups may see it.
mask contains {"column": sprintf("%s.%s", [bare(t), column]), "mode": mode(spec)} if {
	some t in phi_tables
	some column, spec in entry(t).columns
}

mode(spec) := "keep" if {
	some g in input.principal.groups
	g in spec.visible_to
} else := spec.mode
