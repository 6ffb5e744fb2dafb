# Entry point: data.loopgate.decision (see README.md for its shape).
# A deny from any pack wins over a hold, a hold over an allow; among
# several, the lowest rank (then rule id) is reported.
package loopgate

import data.loopgate.hipaa

denies := sort([[d.rank, d.rule_id, d.reason] | some d in hipaa.deny])

holds := sort([[h.rank, h.rule_id, h.reason, h.row_threshold] | some h in hipaa.hold])

mask := [m | some m in hipaa.mask]

approval := data.phi_catalog.approval

decision := {"decision": "deny", "rule_id": denies[0][1], "reason": denies[0][2]} if {
	count(denies) > 0
} else := {
	"decision": "hold",
	"rule_id": holds[0][1],
	"reason": holds[0][2],
	"mask": mask,
	"approval": {
		"group": approval.group,
		"min_approvals": approval.min_approvals,
		"timeout_secs": approval.timeout_secs,
		"row_threshold": holds[0][3],
	},
} if {
	count(holds) > 0
} else := {"decision": "allow", "mask": mask}
