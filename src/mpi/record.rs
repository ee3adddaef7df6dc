//! What the master patient index reads of a Patient: the demographics it compares, normalised
//! once per version ([`PersonRecord::from_patient`]).

use serde_json::Value;

use super::compare::{
    date_digits, normalize_email, normalize_name, normalize_phone, normalize_postcode, phonetic_codes,
};

/// Most telecoms and identifiers read from one Patient (a record that lists more is cut: the
/// bound keeps comparison and blocking work per record fixed).
pub const MAX_LISTED: usize = 10;

/// The identifier systems Braid adds itself (a source's original id), which say nothing about
/// the person.
const BRAID_SYSTEM_PREFIX: &str = "urn:braid:";

/// A Patient's demographics, normalised for comparison. Empty strings and `None` are missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersonRecord {
    /// The first given name of the official name (else the usual one, else the first).
    pub given: String,
    pub family: String,
    /// The Double Metaphone codes (primary, alternate) of `given` and of `family`, computed once.
    pub given_sound: (String, String),
    pub family_sound: (String, String),
    /// `YYYYMMDD`.
    pub birth_date: Option<[u8; 8]>,
    /// `male`, `female`, `other` (`unknown` counts as missing).
    pub sex: Option<String>,
    /// The first address's lines, lowercase letters, digits and single spaces.
    pub address: String,
    pub postcode: String,
    /// The first address's city, normalised as the lines are.
    pub city: String,
    pub phones: Vec<String>,
    pub emails: Vec<String>,
    /// `(system, value)`, without Braid's own systems.
    pub identifiers: Vec<(String, String)>,
}

impl PersonRecord {
    pub fn from_patient(patient: &Value) -> PersonRecord {
        let names = patient["name"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let by_use = |wanted: &str| names.iter().find(|name| name["use"] == wanted);
        let name = by_use("official").or_else(|| by_use("usual")).or_else(|| names.first());
        let given = name
            .and_then(|name| name["given"].as_array())
            .and_then(|given| given.iter().find_map(Value::as_str))
            .map(normalize_name)
            .unwrap_or_default();
        let family = name.and_then(|name| name["family"].as_str()).map(normalize_name).unwrap_or_default();
        let birth_date = patient["birthDate"].as_str().and_then(date_digits);
        let sex = patient["gender"].as_str().filter(|gender| *gender != "unknown").map(str::to_owned);
        let address_value = patient["address"].as_array().and_then(|addresses| addresses.first());
        let address = address_value
            .and_then(|address| address["line"].as_array())
            .map(|lines| {
                let text: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
                normalize_address(&text.join(" "))
            })
            .unwrap_or_default();
        let postcode = address_value
            .and_then(|address| address["postalCode"].as_str())
            .map(normalize_postcode)
            .unwrap_or_default();
        let city =
            address_value.and_then(|address| address["city"].as_str()).map(normalize_address).unwrap_or_default();
        let telecoms = patient["telecom"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let of_system = |system: &'static str| {
            telecoms.iter().filter(move |telecom| telecom["system"] == system).filter_map(|t| t["value"].as_str())
        };
        let phones = of_system("phone").filter_map(normalize_phone).take(MAX_LISTED).collect();
        let emails = of_system("email").filter_map(normalize_email).take(MAX_LISTED).collect();
        let identifiers = patient["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|identifier| Some((identifier["system"].as_str()?, identifier["value"].as_str()?)))
            .filter(|(system, value)| !system.starts_with(BRAID_SYSTEM_PREFIX) && !value.trim().is_empty())
            .map(|(system, value)| (system.to_owned(), value.trim().to_owned()))
            .take(MAX_LISTED)
            .collect();
        let (given_sound, family_sound) = (phonetic_codes(&given), phonetic_codes(&family));
        PersonRecord {
            given,
            family,
            given_sound,
            family_sound,
            birth_date,
            sex,
            address,
            postcode,
            city,
            phones,
            emails,
            identifiers,
        }
    }
}

/// Address lines as compared: lowercase ASCII letters and digits, words separated by single
/// spaces, at most 200 characters.
pub fn normalize_address(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = text
        .nfd()
        .filter(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || *c == ',')
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { ' ' })
        .take(200)
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patient_is_read_into_normalised_demographics() {
        let patient = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:braid:source:clinic", "value": "42"},
                           {"system": "http://ns.example/ssn", "value": " 123-45 "}],
            "name": [{"use": "nickname", "given": ["Bobby"]},
                     {"use": "official", "family": "O'Brien", "given": ["Róbert", "James"]}],
            "birthDate": "1984-03-07", "gender": "male",
            "address": [{"line": ["12  Main St.", "Flat 3"], "city": "Little  Snoring", "postalCode": "sw1a 1aa"}],
            "telecom": [{"system": "phone", "value": "+44 20 7946 0958"}, {"system": "email", "value": "Bob@Example.org"},
                        {"system": "fax", "value": "123456789"}]});
        let record = PersonRecord::from_patient(&patient);
        assert_eq!(record.given, "robert");
        assert_eq!(record.family, "obrien");
        assert_eq!(record.birth_date, Some(*b"19840307"));
        assert_eq!(record.sex.as_deref(), Some("male"));
        assert_eq!(record.address, "12 main st flat 3");
        assert_eq!(record.postcode, "SW1A1AA");
        assert_eq!(record.city, "little snoring");
        assert_eq!(record.family_sound.0, "APRN", "the family name's Double Metaphone code");
        assert_eq!(record.phones, ["079460958"]);
        assert_eq!(record.emails, ["bob@example.org"]);
        assert_eq!(record.identifiers, [("http://ns.example/ssn".to_owned(), "123-45".to_owned())]);
    }

    #[test]
    fn missing_and_malformed_parts_are_missing() {
        let record = PersonRecord::from_patient(&json!({"resourceType": "Patient", "gender": "unknown",
            "birthDate": "1984", "name": "not a list", "telecom": [{"system": "phone", "value": "12"}]}));
        assert_eq!(record, PersonRecord::default());
        let many = json!({"resourceType": "Patient",
            "identifier": (0..50).map(|n| json!({"system": "http://x", "value": n.to_string()})).collect::<Vec<_>>()});
        assert_eq!(PersonRecord::from_patient(&many).identifiers.len(), MAX_LISTED, "bounded");
    }
}
