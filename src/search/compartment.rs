//! The Patient compartment (`profiles/compartmentdefinition-patient.json`): which parameters
//! of each resource type put a resource into a patient's compartment.
//!
//! The indexer turns membership into ordinary index entries under the key [`COMPARTMENT_KEY`]
//! (value `Patient/<id>`), so compartment search and `$everything` are scans of the versioned
//! index like any other clause, with the same snapshot guarantees.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use crate::fhir::ResourceType;

/// The index key of compartment membership entries. Not a FHIR parameter name (it cannot
/// collide: FHIR codes do not start with '$').
pub const COMPARTMENT_KEY: &str = "$compartment";

pub struct PatientCompartment {
    params: HashMap<ResourceType, Vec<String>>,
}

static COMPARTMENT: LazyLock<PatientCompartment> =
    LazyLock::new(|| PatientCompartment::load(include_str!("../../profiles/compartmentdefinition-patient.json")));

pub fn patient_compartment() -> &'static PatientCompartment {
    &COMPARTMENT
}

impl PatientCompartment {
    fn load(text: &str) -> Self {
        let definition: Value = serde_json::from_str(text).expect("the compartment definition is JSON");
        let mut params = HashMap::new();
        for resource in definition["resource"].as_array().expect("a resource list") {
            let Some(resource_type) = resource["code"].as_str().and_then(ResourceType::parse) else { continue };
            let codes: Vec<String> = resource["param"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect();
            if !codes.is_empty() {
                params.insert(resource_type, codes);
            }
        }
        PatientCompartment { params }
    }

    /// The parameters linking `resource_type` to a patient (empty: never in the compartment).
    pub fn params(&self, resource_type: ResourceType) -> &[String] {
        self.params.get(&resource_type).map_or(&[], Vec::as_slice)
    }

    /// Whether a resource of `resource_type` can be in a patient's compartment (a Patient is in
    /// its own).
    pub fn contains(&self, resource_type: ResourceType) -> bool {
        resource_type == ResourceType::PATIENT || self.params.contains_key(&resource_type)
    }

    /// The types that can be in a patient's compartment, in name order, Patient included.
    pub fn types(&self) -> Vec<ResourceType> {
        let mut types: Vec<ResourceType> = self.params.keys().copied().collect();
        if !types.contains(&ResourceType::PATIENT) {
            types.push(ResourceType::PATIENT);
        }
        types.sort();
        types
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patient_compartment_knows_its_members() {
        let compartment = patient_compartment();
        let observation = ResourceType::parse("Observation").unwrap();
        assert!(compartment.params(observation).contains(&"subject".to_owned()));
        assert!(compartment.params(ResourceType::parse("ValueSet").unwrap()).is_empty());
        assert!(compartment.types().len() > 50);
    }
}
