//! The closed set of FHIR R4 resource types.

use std::fmt;

/// Every R4 (4.0.1) resource type, sorted by byte order so that lookups are a binary search.
/// Generated from `profiles/fhir.schema.json`; a test checks that both lists agree.
pub const R4_RESOURCE_TYPES: [&str; 146] = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
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
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
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
    "Substance",
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
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// A resource type name that is known to be one of [`R4_RESOURCE_TYPES`].
///
/// The only way to obtain one is [`ResourceType::parse`], so a value that exists is valid and
/// can be used as a storage-key component without further checks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// `Patient`, which the master patient index and the patient compartment name often.
    pub const PATIENT: ResourceType = ResourceType("Patient");
    /// `Observation` and `Device`, which vitals ingest writes.
    pub const OBSERVATION: ResourceType = ResourceType("Observation");
    pub const DEVICE: ResourceType = ResourceType("Device");
    /// `Appointment` and `Communication`, which appointment reminders read and write.
    pub const APPOINTMENT: ResourceType = ResourceType("Appointment");
    pub const COMMUNICATION: ResourceType = ResourceType("Communication");

    /// Looks `name` up among the R4 resource types (case-sensitive, as FHIR requires).
    pub fn parse(name: &str) -> Option<Self> {
        R4_RESOURCE_TYPES.binary_search(&name).ok().map(|index| ResourceType(R4_RESOURCE_TYPES[index]))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    pub fn all() -> impl Iterator<Item = ResourceType> {
        R4_RESOURCE_TYPES.iter().map(|name| ResourceType(name))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_parse_and_unknown_ones_do_not() {
        assert_eq!(ResourceType::parse("Patient").map(|t| t.as_str()), Some("Patient"));
        assert_eq!(ResourceType::parse("Patient"), Some(ResourceType::PATIENT));
        assert_eq!(ResourceType::parse("Observation"), Some(ResourceType::OBSERVATION));
        assert_eq!(ResourceType::parse("Device"), Some(ResourceType::DEVICE));
        assert!(ResourceType::parse("patient").is_none());
        assert!(ResourceType::parse("Project").is_none());
        assert_eq!(ResourceType::all().count(), 146);
    }

    #[test]
    fn the_list_is_sorted_for_binary_search() {
        assert!(R4_RESOURCE_TYPES.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
