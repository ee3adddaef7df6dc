//! Feeds arbitrary bytes to the path every request body takes: depth check, JSON parsing,
//! resource-type detection, schema and profile validation, reference classification and
//! conditional-criteria parsing. None of it may panic, whatever the input.

#![no_main]

use libfuzzer_sys::fuzz_target;

use braid::fhir::json::{parse_json, resource_type_of};
use braid::fhir::reference;
use braid::fhir::validation::validator;
use braid::search::parse_criteria;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse_json(data, 100) else { return };
    let Ok(resource_type) = resource_type_of(&value) else { return };
    let _ = validator().validate_value(resource_type, &value);
    // Bundles are also checked entry by entry, as the bundle handler does.
    if let Some(entries) = value.get("entry").and_then(|e| e.as_array()) {
        for entry in entries {
            if let Some(resource) = entry.get("resource") {
                if let Ok(entry_type) = resource_type_of(resource) {
                    let _ = validator().validate_value(entry_type, resource);
                }
            }
            if let Some(url) = entry.pointer("/request/url").and_then(|u| u.as_str()) {
                if let Some((_, query)) = url.split_once('?') {
                    let _ = parse_criteria(resource_type, query);
                }
            }
        }
    }
    let mut copy = value.clone();
    let _ = reference::rewrite_resource_references::<()>(&mut copy, &mut |text| {
        let _ = reference::parse(text);
        Ok(None)
    });
});
