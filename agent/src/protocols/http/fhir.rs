//! FHIR's RESTful API as the policy reads it: which interaction a request
//! is, on which resource type and id, with which search parameters
//! (<https://hl7.org/fhir/http.html>).
use super::canonical::{Ambiguous, Target};
use crate::policy::FhirRequest;

/// The resource types of FHIR R4 and R5. Types are case-sensitive; a
/// segment that is one of these in another case (`patient`) is refused:
/// some servers match types case-insensitively, and the policy would read
/// it as the service base.
const RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "ActorDefinition",
    "AdministrableProductDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "ArtifactAssessment",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BiologicallyDerivedProductDispense",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Citation",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "ClinicalUseDefinition",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "ConditionDefinition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceAssociation",
    "DeviceDefinition",
    "DeviceDispense",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUsage",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "EncounterHistory",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceReport",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "FormularyItem",
    "GenomicStudy",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingSelection",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "Ingredient",
    "InsurancePlan",
    "InventoryItem",
    "InventoryReport",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "ManufacturedItemDefinition",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductDefinition",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionIntake",
    "NutritionOrder",
    "NutritionProduct",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "PackagedProductDefinition",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Permission",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RegulatedAuthorization",
    "RelatedPerson",
    "RequestGroup",
    "RequestOrchestration",
    "Requirements",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "SubscriptionStatus",
    "SubscriptionTopic",
    "Substance",
    "SubstanceDefinition",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestPlan",
    "TestReport",
    "TestScript",
    "Transport",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// The FHIR parts of a request. The service base (`/fhir`, `/baseR4`,
/// Epic's `/api/FHIR/R4`) is whatever comes before the first segment that
/// names a resource type of R4 or R5, an operation (`$op`), `metadata`,
/// `_history` or `_search`; a base-only POST is a batch or transaction;
/// `Patient/1/Observation` is a search of Observations in the Patient's
/// compartment. A known type in another case is refused.
pub fn parse(method: &str, target: &Target) -> Result<FhirRequest, Ambiguous> {
    let segments: Vec<&str> = target.segments.iter().map(String::as_str).collect();
    let start = segments
        .iter()
        .position(|s| is_resource_type(s) || s.starts_with('$') || matches!(*s, "metadata" | "_history" | "_search"))
        .unwrap_or(segments.len());
    let rest = &segments[start..];
    // Where a type may stand: in the base (`/fhir/patient` would be read
    // as all base), first, and after `Type/id` (a compartment).
    let type_places = segments[..start].iter().chain(rest.first()).chain(
        rest.get(2)
            .filter(|_| rest.first().is_some_and(|t| is_resource_type(t))),
    );
    if type_places.into_iter().any(|s| miscased_type(s)) {
        return Err("a FHIR resource type is spelled in another case (types are case-sensitive)");
    }
    let mut search_params: Vec<String> = target
        .params
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| !name.is_empty())
        .collect();
    search_params.sort();
    search_params.dedup();

    let op = |s: &str| s.starts_with('$').then(|| s.to_owned());
    let mut r = FhirRequest {
        search_params,
        ..FhirRequest::default()
    };
    let (ty, tail): (Option<&str>, &[&str]) = match rest.first() {
        Some(t) if is_resource_type(t) => (Some(t), &rest[1..]),
        _ => (None, rest),
    };
    r.resource_type = ty.map(str::to_owned);
    r.interaction = match (method, tail) {
        (_, [o]) if o.starts_with('$') => {
            r.operation = op(o);
            "operation"
        }
        (_, [id, o]) if o.starts_with('$') => {
            r.id = Some((*id).to_owned());
            r.operation = op(o);
            "operation"
        }
        ("GET", ["metadata"]) if ty.is_none() => "capabilities",
        ("GET" | "HEAD", []) if ty.is_some() => "search",
        ("POST" | "GET", ["_search"]) => "search",
        ("POST", []) if ty.is_some() => "create",
        ("POST", []) => "batch",
        ("GET" | "HEAD", []) => "search",
        ("DELETE", []) if ty.is_some() => "delete",
        // Conditional update and patch: `PUT Patient?identifier=...`.
        ("PUT", []) if ty.is_some() => "update",
        ("PATCH", []) if ty.is_some() => "patch",
        ("GET", ["_history"]) | ("GET", [_, "_history"]) => {
            if let [id, _] = tail {
                r.id = Some((*id).to_owned());
            }
            "history"
        }
        ("GET", [id, "_history", _vid]) => {
            r.id = Some((*id).to_owned());
            "vread"
        }
        // A compartment search: `Patient/1/Observation`, `Patient/1/*`,
        // `Patient/1/Observation/_search`.
        ("GET" | "HEAD", [id, t]) | ("POST", [id, t, "_search"])
            if ty.is_some() && (is_resource_type(t) || *t == "*") =>
        {
            r.compartment = Some(format!("{}/{id}", ty.unwrap_or_default()));
            r.resource_type = (*t != "*").then(|| (*t).to_owned());
            "search"
        }
        (m, [id]) if ty.is_some() => {
            r.id = Some((*id).to_owned());
            match m {
                "GET" | "HEAD" => "read",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "other",
            }
        }
        // Whatever else a DELETE names (a version's history, a conditional
        // delete across types, a type loopgate does not know) deletes.
        ("DELETE", _) => "delete",
        _ => "other",
    }
    .to_owned();
    Ok(r)
}

/// The most of a batch or transaction read before the decision.
pub const MAX_BUNDLE: usize = 16 << 20;

/// A batch or transaction Bundle as the policy reads it: its type and each
/// entry's `request` (method and URL, relative to the base) read as if it
/// came alone. What servers could read another way is refused: a member
/// given twice (servers differ on which wins), an absolute or `/`-rooted
/// entry URL, a method FHIR does not have, an entry without a request, or
/// an entry that is itself a batch.
pub fn bundle(body: &[u8]) -> Result<(String, Vec<FhirRequest>), Ambiguous> {
    #[derive(serde::Deserialize)]
    struct Bundle {
        #[serde(rename = "resourceType")]
        resource_type: String,
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        entry: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        request: Option<EntryRequest>,
    }
    #[derive(serde::Deserialize)]
    struct EntryRequest {
        method: String,
        url: String,
    }
    let bundle: Bundle = serde_json::from_slice(body)
        .map_err(|_| "a POST to the FHIR base is read only as a JSON Bundle, each member once")?;
    let kind = bundle
        .kind
        .filter(|k| bundle.resource_type == "Bundle" && matches!(k.as_str(), "batch" | "transaction"))
        .ok_or("a POST to the FHIR base is read only as a batch or transaction Bundle")?;
    let entries = bundle
        .entry
        .into_iter()
        .map(|entry| {
            let request = entry.request.ok_or("a batch or transaction entry has no request")?;
            if !matches!(
                request.method.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
            ) {
                return Err("a batch or transaction entry has a method FHIR does not have");
            }
            if request.url.contains("://") || request.url.starts_with('/') {
                return Err("a batch or transaction entry's URL is not relative to the base");
            }
            let (path, query) = match request.url.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (request.url.as_str(), None),
            };
            let target = super::canonical::read(&format!("/{path}"), query)?;
            let read = parse(&request.method, &target)?;
            if read.interaction == "batch" {
                return Err("a batch or transaction entry is itself a batch");
            }
            Ok(read)
        })
        .collect::<Result<Vec<_>, Ambiguous>>()?;
    Ok((kind, entries))
}

/// What a batch's or transaction's record says of its entries: each
/// interaction and type with its count, in order of first appearance
/// (` (transaction: 2 create Patient, 1 delete Observation)`); no ids, no
/// search values.
pub fn bundle_summary(r: &FhirRequest) -> Option<String> {
    let kind = r.bundle_type.as_deref()?;
    let mut counts: Vec<((&str, &str), usize)> = Vec::new();
    for e in &r.entries {
        let key = (e.interaction.as_str(), e.resource_type.as_deref().unwrap_or("system"));
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    let shown: Vec<String> = counts
        .iter()
        .map(|((interaction, ty), n)| format!("{n} {interaction} {ty}"))
        .collect();
    Some(format!(
        " ({kind}: {})",
        if shown.is_empty() {
            "no entries".to_owned()
        } else {
            shown.join(", ")
        }
    ))
}

/// A known resource type in another case.
fn miscased_type(s: &str) -> bool {
    !RESOURCE_TYPES.contains(&s) && RESOURCE_TYPES.iter().any(|t| t.eq_ignore_ascii_case(s))
}

/// A FHIR resource type of R4 or R5: `Patient`, `MedicationRequest` (a
/// capitalised base segment such as Epic's `FHIR` is none).
fn is_resource_type(s: &str) -> bool {
    RESOURCE_TYPES.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, target: &str) -> FhirRequest {
        try_p(method, target).unwrap()
    }

    fn try_p(method: &str, target: &str) -> Result<FhirRequest, Ambiguous> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        parse(method, &super::super::canonical::read(path, query).unwrap())
    }

    #[test]
    fn a_transactions_entries_read_as_if_each_came_alone() {
        let body = br#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
            {"request":{"method":"PUT","url":"Patient?identifier=x%7C1"}},
            {"request":{"method":"DELETE","url":"Observation/o1"}},
            {"request":{"method":"GET","url":"Patient/p1/$everything"}}]}"#;
        let (kind, entries) = bundle(body).unwrap();
        assert_eq!(kind, "transaction");
        let read: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|e| (e.interaction.as_str(), e.resource_type.as_deref()))
            .collect();
        assert_eq!(
            read,
            [
                ("create", Some("Patient")),
                ("update", Some("Patient")),
                ("delete", Some("Observation")),
                ("operation", Some("Patient"))
            ]
        );
        assert_eq!(entries[1].search_params, ["identifier"]);
        assert_eq!(entries[3].operation.as_deref(), Some("$everything"));
        let summary = FhirRequest {
            bundle_type: Some(kind),
            entries: entries.iter().chain(&entries[..1]).cloned().collect(),
            ..FhirRequest::default()
        };
        assert_eq!(
            bundle_summary(&summary).unwrap(),
            " (transaction: 2 create Patient, 1 update Patient, 1 delete Observation, 1 operation Patient)"
        );
        let (kind, entries) = bundle(br#"{"resourceType":"Bundle","type":"batch"}"#).unwrap();
        assert_eq!((kind.as_str(), entries.len()), ("batch", 0));
    }

    #[test]
    fn bundles_a_server_could_read_another_way_are_refused() {
        for body in [
            r#"{"resourceType":"Bundle","type":"collection","entry":[]}"#,
            r#"{"resourceType":"Patient","type":"transaction"}"#,
            r#"{"resourceType":"Bundle","type":"batch","type":"transaction"}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient"},"request":{"method":"DELETE","url":"Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"delete","url":"Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"DELETE","url":"https://other/fhir/Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"DELETE","url":"/Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"DELETE","url":"patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":""}}]}"#,
            "<Bundle xmlns=\"http://hl7.org/fhir\"/>",
        ] {
            assert!(bundle(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn interactions_per_the_rest_api() {
        let cases = [
            ("GET", "/fhir/Patient/123", "read", Some("Patient"), Some("123"), None),
            (
                "GET",
                "/fhir/Patient/123/_history/2",
                "vread",
                Some("Patient"),
                Some("123"),
                None,
            ),
            (
                "GET",
                "/fhir/Patient/123/_history",
                "history",
                Some("Patient"),
                Some("123"),
                None,
            ),
            ("PUT", "/fhir/Patient/123", "update", Some("Patient"), Some("123"), None),
            ("PATCH", "/Patient/123", "patch", Some("Patient"), Some("123"), None),
            (
                "DELETE",
                "/baseR4/Patient/123",
                "delete",
                Some("Patient"),
                Some("123"),
                None,
            ),
            (
                "DELETE",
                "/fhir/Patient?identifier=x",
                "delete",
                Some("Patient"),
                None,
                None,
            ),
            ("POST", "/fhir/Patient", "create", Some("Patient"), None, None),
            ("GET", "/fhir/Patient?name=smith", "search", Some("Patient"), None, None),
            ("POST", "/fhir/Patient/_search", "search", Some("Patient"), None, None),
            ("GET", "/fhir/metadata", "capabilities", None, None, None),
            ("POST", "/fhir", "batch", None, None, None),
            ("GET", "/fhir/$export", "operation", None, None, Some("$export")),
            (
                "GET",
                "/fhir/Patient/$export",
                "operation",
                Some("Patient"),
                None,
                Some("$export"),
            ),
            (
                "GET",
                "/fhir/Group/g1/$export",
                "operation",
                Some("Group"),
                Some("g1"),
                Some("$export"),
            ),
            (
                "GET",
                "/fhir/Patient/1/$everything",
                "operation",
                Some("Patient"),
                Some("1"),
                Some("$everything"),
            ),
        ];
        for (method, target, interaction, ty, id, op) in cases {
            let r = p(method, target);
            assert_eq!(r.interaction, interaction, "{method} {target}");
            assert_eq!(r.resource_type.as_deref(), ty, "{method} {target}");
            assert_eq!(r.id.as_deref(), id, "{method} {target}");
            assert_eq!(r.operation.as_deref(), op, "{method} {target}");
        }
    }

    #[test]
    fn search_params_are_names_only() {
        let r = p(
            "GET",
            "/fhir/Patient?name%3Aexact=Smith&birthdate=1970-01-01&name=x&_count=10",
        );
        assert_eq!(r.search_params, ["_count", "birthdate", "name", "name:exact"]);
        assert!(!format!("{r:?}").contains("Smith"));
    }

    #[test]
    fn encoded_and_case_variant_types() {
        let r = p("GET", "/fhir/Pat%69ent/1");
        assert_eq!(
            (r.interaction.as_str(), r.resource_type.as_deref()),
            ("read", Some("Patient"))
        );
        for bad in [
            "/fhir/patient/1",
            "/fhir/PATIENT",
            "/fhir/paTient?name=x",
            "/fhir/Patient/1/observation",
        ] {
            assert!(try_p("GET", bad).is_err(), "{bad}");
        }
        // An id that happens to be a word is not a type.
        assert_eq!(p("GET", "/fhir/Patient/list").id.as_deref(), Some("list"));
        // A trailing slash: the same request.
        assert_eq!(p("GET", "/fhir/Patient/").interaction, "search");
    }

    #[test]
    fn compartment_searches_name_the_searched_type() {
        let r = p("GET", "/fhir/Patient/p1/Observation?code=x");
        assert_eq!(
            (
                r.interaction.as_str(),
                r.resource_type.as_deref(),
                r.compartment.as_deref()
            ),
            ("search", Some("Observation"), Some("Patient/p1"))
        );
        let r = p("GET", "/fhir/Patient/p1/*");
        assert_eq!(
            (r.interaction.as_str(), r.resource_type, r.compartment.as_deref()),
            ("search", None, Some("Patient/p1"))
        );
        let r = p("POST", "/fhir/Patient/p1/Condition/_search");
        assert_eq!(
            (r.interaction.as_str(), r.resource_type.as_deref()),
            ("search", Some("Condition"))
        );
    }

    #[test]
    fn a_capitalised_base_is_no_type_and_every_delete_is_a_delete() {
        let epic = p("DELETE", "/api/FHIR/R4/Patient/1");
        assert_eq!(
            (
                epic.interaction.as_str(),
                epic.resource_type.as_deref(),
                epic.id.as_deref()
            ),
            ("delete", Some("Patient"), Some("1"))
        );
        for target in ["/fhir/Patient/1/_history/2", "/fhir?identifier=x", "/fhir/Custom/1"] {
            assert_eq!(p("DELETE", target).interaction, "delete", "{target}");
        }
        assert_eq!(p("PUT", "/fhir/Patient?identifier=x").interaction, "update");
        assert_eq!(p("GET", "/fhir/Patient/_search").interaction, "search");
        assert_eq!(p("DELETE", "/fhir/Patient/1/$purge").interaction, "operation");
    }
}
