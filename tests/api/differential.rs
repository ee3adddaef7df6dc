//! Differential tests of the search engine: proptest generates small sets of Patients (and of
//! Observations) and queries over token, string, date, reference, boolean, quantity and uri
//! parameters (with modifiers, prefixes, units, OR
//! lists and AND combinations); the engine's answer through the real store — planner, scans,
//! probes, de-duplication and paging — must equal a deliberately simple evaluator that reads
//! each resource's JSON directly.

use std::collections::BTreeSet;
use std::sync::Arc;

use braid::fhir::{Id, ResourceType};
use braid::search::SearchIndexer;
use braid::search::engine;
use braid::search::query::parse_clause;
use braid::search::values::parse_date_range;
use braid::store::{Action, Precondition, Store, StoreOptions, Target, WriteOp, WriteRequest};
use proptest::prelude::*;
use serde_json::{Value, json};

const FAMILIES: [&str; 6] = ["Müller", "Muller", "Mulder", "Smith", "Smithson", "Éloi"];
const GENDERS: [&str; 4] = ["male", "female", "other", "unknown"];
const SYSTEMS: [&str; 2] = ["http://a", "http://b"];
const DATES: [&str; 8] = ["1970", "1980-02", "1980-02-29", "1980-07-15", "1981", "1975-12-31", "1980", "2000-01-01"];

#[derive(Debug, Clone)]
struct PatientSpec {
    gender: Option<usize>,
    family: Option<usize>,
    birth: Option<usize>,
    identifiers: Vec<(Option<usize>, u8)>,
    active: Option<bool>,
    practitioner: Option<u8>,
}

fn patient_spec() -> impl Strategy<Value = PatientSpec> {
    (
        proptest::option::of(0..GENDERS.len()),
        proptest::option::of(0..FAMILIES.len()),
        proptest::option::of(0..DATES.len()),
        proptest::collection::vec((proptest::option::of(0..SYSTEMS.len()), 0u8..4), 0..3),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u8..3),
    )
        .prop_map(|(gender, family, birth, identifiers, active, practitioner)| PatientSpec {
            gender,
            family,
            birth,
            identifiers,
            active,
            practitioner,
        })
}

fn to_json(index: usize, spec: &PatientSpec) -> Value {
    let mut patient = json!({"resourceType": "Patient", "id": format!("p{index}")});
    if let Some(g) = spec.gender {
        patient["gender"] = json!(GENDERS[g]);
    }
    if let Some(f) = spec.family {
        patient["name"] = json!([{"family": FAMILIES[f]}]);
    }
    if let Some(b) = spec.birth {
        patient["birthDate"] = json!(DATES[b]);
    }
    if !spec.identifiers.is_empty() {
        patient["identifier"] = Value::Array(
            spec.identifiers
                .iter()
                .map(|(system, value)| match system {
                    Some(s) => json!({"system": SYSTEMS[*s], "value": format!("v{value}")}),
                    None => json!({"value": format!("v{value}")}),
                })
                .collect(),
        );
    }
    if let Some(active) = spec.active {
        patient["active"] = json!(active);
    }
    if let Some(p) = spec.practitioner {
        patient["generalPractitioner"] = json!([{"reference": format!("Practitioner/dr{p}")}]);
    }
    patient
}

/// One generated query clause: `(parameter as written, value)`.
fn clause_strategy() -> impl Strategy<Value = (String, String)> {
    let prefixes = prop_oneof![
        Just(""),
        Just("eq"),
        Just("ne"),
        Just("gt"),
        Just("lt"),
        Just("ge"),
        Just("le"),
        Just("sa"),
        Just("eb")
    ];
    prop_oneof![
        proptest::collection::vec(0..GENDERS.len(), 1..3)
            .prop_map(|gs| ("gender".to_owned(), gs.iter().map(|g| GENDERS[*g]).collect::<Vec<_>>().join(","))),
        (0..GENDERS.len()).prop_map(|g| ("gender:not".to_owned(), GENDERS[g].to_owned())),
        any::<bool>().prop_map(|b| ("gender:missing".to_owned(), b.to_string())),
        (0..FAMILIES.len(), 1usize..5).prop_map(|(f, n)| ("family".to_owned(), FAMILIES[f].chars().take(n).collect())),
        (0..FAMILIES.len()).prop_map(|f| ("family:exact".to_owned(), FAMILIES[f].to_owned())),
        (prefixes, 0..DATES.len()).prop_map(|(p, d)| ("birthdate".to_owned(), format!("{p}{}", DATES[d]))),
        (proptest::option::of(0..SYSTEMS.len()), 0u8..4, any::<bool>()).prop_map(|(s, v, system_only)| {
            let value = match (s, system_only) {
                (Some(s), true) => format!("{}|", SYSTEMS[s]),
                (Some(s), false) => format!("{}|v{v}", SYSTEMS[s]),
                (None, true) => format!("|v{v}"),
                (None, false) => format!("v{v}"),
            };
            ("identifier".to_owned(), value)
        }),
        any::<bool>().prop_map(|b| ("active".to_owned(), b.to_string())),
        (0u8..3).prop_map(|p| ("general-practitioner".to_owned(), format!("Practitioner/dr{p}"))),
        (0u8..3).prop_map(|p| ("general-practitioner".to_owned(), format!("dr{p}"))),
    ]
}

fn fold(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'ü' | 'Ü' => 'u',
            'é' | 'É' => 'e',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The reference evaluator: FHIR search semantics applied to one resource's JSON.
fn reference_match(patient: &Value, name: &str, value: &str) -> bool {
    let alternatives: Vec<&str> = value.split(',').collect();
    match name {
        "gender" => alternatives.iter().any(|g| patient["gender"].as_str() == Some(g)),
        "gender:not" => patient["gender"].as_str() != Some(value),
        "gender:missing" => patient.get("gender").is_none() == (value == "true"),
        "family" => patient["name"][0]["family"].as_str().is_some_and(|f| fold(f).starts_with(&fold(value))),
        "family:exact" => patient["name"][0]["family"].as_str() == Some(value),
        "active" => patient["active"].as_bool().map(|b| b.to_string()).as_deref() == Some(value),
        "general-practitioner" => {
            let reference = patient["generalPractitioner"][0]["reference"].as_str();
            reference.is_some_and(|r| r == value || r.strip_prefix("Practitioner/") == Some(value))
        }
        "identifier" => patient["identifier"].as_array().into_iter().flatten().any(|identifier| {
            let system = identifier["system"].as_str();
            let code = identifier["value"].as_str().unwrap_or("");
            match value.split_once('|') {
                None => code == value,
                Some(("", c)) => system.is_none() && code == c,
                Some((s, "")) => system == Some(s),
                Some((s, c)) => system == Some(s) && code == c,
            }
        }),
        "birthdate" => {
            let Some(birth) = patient["birthDate"].as_str() else { return false };
            let (t_lo, t_hi) = parse_date_range(birth).unwrap();
            let prefix = &value[..2];
            let (prefix, date) =
                if prefix.chars().all(|c| c.is_ascii_alphabetic()) { (prefix, &value[2..]) } else { ("eq", value) };
            let (lo, hi) = parse_date_range(date).unwrap();
            let contained = lo <= t_lo && t_hi <= hi;
            match prefix {
                "eq" => contained,
                "ne" => !contained,
                "gt" => t_hi > hi,
                "lt" => t_lo < lo,
                "ge" => t_hi > hi || contained,
                "le" => t_lo < lo || contained,
                "sa" => t_lo > hi,
                "eb" => t_hi < lo,
                other => panic!("prefix {other}"),
            }
        }
        other => panic!("no reference semantics for {other}"),
    }
}

/// A fresh store holding `resources` (each stored under its own id).
fn store_with(resources: &[Value]) -> (tempfile::TempDir, Store) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("d.redb"), StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let ops = resources
        .iter()
        .map(|resource| {
            let Value::Object(map) = resource.clone() else { unreachable!() };
            WriteOp {
                full_url: None,
                action: Action::Update {
                    resource_type: ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap(),
                    target: Target::Id(Id::parse(resource["id"].as_str().unwrap()).unwrap()),
                    resource: map,
                    precondition: Precondition::default(),
                },
            }
        })
        .collect();
    runtime.block_on(store.write(WriteRequest { ops, ..Default::default() })).unwrap();
    (dir, store)
}

/// The engine's answer, following positions page by page; no id may come twice.
fn engine_ids(
    store: &Store,
    resource_type: ResourceType,
    clauses: &[(String, String)],
    page_size: Option<usize>,
) -> BTreeSet<String> {
    let parsed: Vec<_> =
        clauses.iter().map(|(n, v)| parse_clause(resource_type, n, v, "http://test/fhir").unwrap().unwrap()).collect();
    let snapshot = store.snapshot().unwrap();
    let t = snapshot.t();
    let (driver, _) = engine::plan(&snapshot.index(), resource_type, &parsed, t).unwrap();
    let mut found = BTreeSet::new();
    let mut position = None;
    loop {
        let page =
            engine::run(&snapshot.index(), resource_type, &parsed, driver, t, position.as_ref(), page_size).unwrap();
        for (id, _) in page.matches {
            assert!(found.insert(id.clone()), "{id} returned twice for {clauses:?}");
        }
        match page.next {
            Some(next) => position = Some(next),
            None => return found,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_reference_evaluator(
        patients in proptest::collection::vec(patient_spec(), 1..25),
        queries in proptest::collection::vec(proptest::collection::vec(clause_strategy(), 1..4), 40),
        page_size in 1usize..5,
    ) {
        let resources: Vec<Value> = patients.iter().enumerate().map(|(i, spec)| to_json(i, spec)).collect();
        let (_dir, store) = store_with(&resources);
        let patient = ResourceType::parse("Patient").unwrap();
        for clauses in &queries {
            let expected: BTreeSet<String> = resources
                .iter()
                .filter(|r| clauses.iter().all(|(n, v)| reference_match(r, n, v)))
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            prop_assert_eq!(&engine_ids(&store, patient, clauses, None), &expected, "query {:?}", clauses);
            prop_assert_eq!(&engine_ids(&store, patient, clauses, Some(page_size)), &expected, "paged query {:?}", clauses);
        }
    }
}

const VALUES: [&str; 6] = ["5", "5.4", "5.45", "60", "100.5", "-2"];
const UNITS: [&str; 3] = ["mg", "/min", "kg"];
const PROFILES: [&str; 3] = ["http://x.org/fhir/sd/a", "http://x.org/fhir/sd/a/b", "http://y.org/p"];
const UCUM: &str = "http://unitsofmeasure.org";

#[derive(Debug, Clone)]
struct ObservationSpec {
    value: Option<(usize, bool, Option<usize>)>,
    profile: Option<usize>,
}

fn observation_spec() -> impl Strategy<Value = ObservationSpec> {
    (
        proptest::option::of((0..VALUES.len(), any::<bool>(), proptest::option::of(0..UNITS.len()))),
        proptest::option::of(0..PROFILES.len()),
    )
        .prop_map(|(value, profile)| ObservationSpec { value, profile })
}

fn observation_json(index: usize, spec: &ObservationSpec) -> Value {
    let mut observation =
        json!({"resourceType": "Observation", "id": format!("o{index}"), "status": "final", "code": {"text": "x"}});
    if let Some((value, with_system, unit)) = spec.value {
        let mut quantity = json!({"value": serde_json::from_str::<Value>(VALUES[value]).unwrap()});
        if let Some(unit) = unit {
            quantity["code"] = json!(UNITS[unit]);
            if with_system {
                quantity["system"] = json!(UCUM);
            }
        }
        observation["valueQuantity"] = quantity;
    }
    if let Some(profile) = spec.profile {
        observation["meta"] = json!({"profile": [PROFILES[profile]]});
    }
    observation
}

fn observation_clause() -> impl Strategy<Value = (String, String)> {
    let prefixes = prop_oneof![Just(""), Just("eq"), Just("ne"), Just("gt"), Just("lt"), Just("ge"), Just("le")];
    prop_oneof![
        (prefixes, 0..VALUES.len(), 0usize..3, 0..UNITS.len()).prop_map(|(p, v, form, u)| {
            let unit = match form {
                0 => String::new(),
                1 => format!("||{}", UNITS[u]),
                _ => format!("|{UCUM}|{}", UNITS[u]),
            };
            ("value-quantity".to_owned(), format!("{p}{}{unit}", VALUES[v]))
        }),
        (0..PROFILES.len()).prop_map(|p| ("_profile".to_owned(), PROFILES[p].to_owned())),
        (0..PROFILES.len())
            .prop_map(|p| ("_profile:below".to_owned(), PROFILES[p][..PROFILES[p].len() - 1].to_owned())),
        (0..PROFILES.len()).prop_map(|p| ("_profile:above".to_owned(), format!("{}/c", PROFILES[p]))),
    ]
}

/// Reference semantics for quantities (implicit precision of the query value) and URIs.
fn reference_observation_match(observation: &Value, name: &str, value: &str) -> bool {
    let profile = observation["meta"]["profile"][0].as_str();
    match name {
        "_profile" => profile == Some(value),
        "_profile:below" => profile.is_some_and(|p| p.starts_with(value)),
        "_profile:above" => profile.is_some_and(|p| value == p || value.starts_with(&format!("{p}/"))),
        "value-quantity" => {
            let quantity = &observation["valueQuantity"];
            let Some(target) = quantity["value"].as_f64() else { return false };
            let mut parts = value.split('|');
            let number = parts.next().unwrap();
            let (system, code) = (parts.next(), parts.next());
            let unit_ok = match (system, code) {
                (None, None) => true,
                (Some(""), Some(code)) => quantity["code"].as_str() == Some(code),
                (Some(system), Some(code)) => {
                    quantity["system"].as_str() == Some(system) && quantity["code"].as_str() == Some(code)
                }
                _ => panic!("unit form"),
            };
            let (prefix, digits) =
                if number.starts_with(|c: char| c.is_ascii_alphabetic()) { number.split_at(2) } else { ("eq", number) };
            let q: f64 = digits.parse().unwrap();
            let decimals = digits.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
            let half = 0.5 * 10f64.powi(-decimals);
            let in_range = target >= q - half && target < q + half;
            unit_ok
                && match prefix {
                    "eq" => in_range,
                    "ne" => !in_range,
                    "gt" => target > q,
                    "lt" => target < q,
                    "ge" => target >= q,
                    "le" => target <= q,
                    other => panic!("prefix {other}"),
                }
        }
        other => panic!("no reference semantics for {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn quantities_and_uris_agree_with_the_reference_evaluator(
        observations in proptest::collection::vec(observation_spec(), 1..20),
        queries in proptest::collection::vec(proptest::collection::vec(observation_clause(), 1..3), 40),
        page_size in 1usize..4,
    ) {
        let observation_type = ResourceType::parse("Observation").unwrap();
        let resources: Vec<Value> = observations.iter().enumerate().map(|(i, spec)| observation_json(i, spec)).collect();
        let (_dir, store) = store_with(&resources);
        for clauses in &queries {
            let expected: BTreeSet<String> = resources
                .iter()
                .filter(|r| clauses.iter().all(|(n, v)| reference_observation_match(r, n, v)))
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            for page in [None, Some(page_size)] {
                let found = engine_ids(&store, observation_type, clauses, page);
                prop_assert_eq!(&found, &expected, "query {:?} (page {:?})", clauses, page);
            }
        }
    }
}
