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
	stmt.kind == "truncate"
	reason := sprintf("TRUNCATE is not allowed (%s)", [concat(", ", stmt.tables_written)])
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_drop_database", "reason": "DROP DATABASE and DROP SCHEMA are not allowed"} if {
	stmt.kind in {"drop_database", "drop_schema"}
}

deny contains {"rank": 40, "rule_id": "hipaa.deny_drop_phi_table", "reason": reason} if {
	stmt.kind == "drop_table"
	count(phi_written) > 0
	reason := sprintf("DROP TABLE of PHI tables is not allowed (%s)", [concat(", ", sort(phi_written))])
}

# ALTER TABLE ... DROP [COLUMN | CONSTRAINT] on a PHI table destroys data
# or the constraints that protect it.
deny contains {"rank": 40, "rule_id": "hipaa.deny_alter_drop_phi", "reason": reason} if {
	stmt.kind == "alter"
	count(phi_written) > 0
	"drop" in words
	reason := sprintf("ALTER ... DROP on PHI tables is not allowed (%s)", [concat(", ", sort(phi_written))])
}

# --- hold ---

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

# --- HTTP: FHIR and Kubernetes requests (input.action.kind "http_request") ---

http := input.action if input.action.kind == "http_request"

fhir := http.fhir

k8s := http.kubernetes

fhir_type := t if {
	t := fhir.resource_type
	t != null
} else := "system"

# FHIR delete destroys clinical records; corrections are updates.
deny contains {"rank": 40, "rule_id": "hipaa.deny_fhir_delete", "reason": reason} if {
	fhir.interaction == "delete"
	reason := sprintf("FHIR delete is not allowed (%s)", [fhir_type])
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

# Bulk data export ($export: system, Patient or Group level) is held.
hold contains {"rank": 10, "rule_id": "hipaa.hold_fhir_export", "reason": reason, "row_threshold": null} if {
	fhir.operation == "$export"
	reason := sprintf("FHIR bulk export (%s) needs approval", [fhir_type])
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
