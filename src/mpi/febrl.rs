//! FEBRL record-linkage datasets (Christen's "Freely Extensible Biomedical Record Linkage"
//! generator) read as FHIR Patients, to measure the matcher on data with a known truth.
//!
//! A FEBRL file is comma-separated with a header: `rec_id, given_name, surname, street_number,
//! address_1, address_2, suburb, postcode, state, date_of_birth, soc_sec_id`. Records
//! `rec-12-org` and `rec-12-dup-0` are the same person; the person is the number in the id.

use serde_json::{Value, json};

/// The identifier system a FEBRL social security number is given.
pub const SOCIAL_SECURITY_SYSTEM: &str = "http://febrl.example/social-security-number";

/// One FEBRL record as a Patient, with the person it belongs to (`None` when its id names
/// none). Returns `None` for a line that is not a record (the header, a blank line).
pub fn patient(line: &str) -> Option<(Value, Option<u32>)> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.len() != 11 || fields[0] == "rec_id" {
        return None;
    }
    let [rec_id, given, surname, number, address_1, address_2, suburb, postcode, state, birth, ssn] =
        fields[..].try_into().ok()?;
    let person = rec_id.strip_prefix("rec-").and_then(|rest| rest.split('-').next()).and_then(|n| n.parse().ok());
    let mut patient = json!({"resourceType": "Patient", "id": rec_id.replace('_', "-")});
    let mut name = serde_json::Map::new();
    if !surname.is_empty() {
        name.insert("family".into(), json!(surname));
    }
    if !given.is_empty() {
        name.insert("given".into(), json!([given]));
    }
    if !name.is_empty() {
        patient["name"] = json!([name]);
    }
    // A FEBRL date with a typo can be no date at all (month 13): it is then left out, as a
    // FHIR server would refuse it.
    if let Some(date) = valid_date(birth) {
        patient["birthDate"] = json!(date);
    }
    let street = [number, address_1].iter().filter(|part| !part.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let lines: Vec<&str> = [street.as_str(), address_2].into_iter().filter(|line| !line.is_empty()).collect();
    let mut address = serde_json::Map::new();
    if !lines.is_empty() {
        address.insert("line".into(), json!(lines));
    }
    for (key, value) in [("city", suburb), ("state", state), ("postalCode", postcode)] {
        if !value.is_empty() {
            address.insert(key.into(), json!(value));
        }
    }
    if !address.is_empty() {
        patient["address"] = json!([address]);
    }
    if !ssn.is_empty() {
        patient["identifier"] = json!([{"system": SOCIAL_SECURITY_SYSTEM, "value": ssn}]);
    }
    Some((patient, person))
}

/// `YYYYMMDD` as `YYYY-MM-DD` when it is a calendar date.
fn valid_date(digits: &str) -> Option<String> {
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month, day): (i32, u8, u8) =
        (digits[..4].parse().ok()?, digits[4..6].parse().ok()?, digits[6..].parse().ok()?);
    let month = time::Month::try_from(month).ok()?;
    time::Date::from_calendar_date(year, month, day).ok()?;
    Some(format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..]))
}

/// Every record of a FEBRL file.
pub fn patients(text: &str) -> Vec<(Value, Option<u32>)> {
    text.lines().filter_map(patient).collect()
}

/// FEBRL 4a and 4b as shipped in `tests/data/febrl/` (5,000 records each, every 4b record a
/// corrupted copy of one in 4a): the records and the person of each.
#[cfg(test)]
pub(crate) fn dataset_4() -> (Vec<super::record::PersonRecord>, Vec<Option<u32>>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/febrl/");
    let (mut records, mut people) = (Vec::new(), Vec::new());
    for file in ["dataset4a.csv", "dataset4b.csv"] {
        let text = std::fs::read_to_string(format!("{dir}{file}")).expect("FEBRL data in tests/data/febrl");
        for (patient, person) in patients(&text) {
            records.push(super::record::PersonRecord::from_patient(&patient));
            people.push(person);
        }
    }
    (records, people)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_febrl_line_is_a_patient_with_its_person() {
        let (read, person) =
            patient("rec-561-dup-0, elton, , 3, light setreet, pinehill, windermere, 3212, vic, 19651013, 1551941")
                .unwrap();
        assert_eq!(person, Some(561));
        assert_eq!(read["id"], "rec-561-dup-0");
        assert_eq!(read["name"], json!([{"given": ["elton"]}]), "no surname: none written");
        assert_eq!(read["birthDate"], "1965-10-13");
        assert_eq!(
            read["address"],
            json!([{"line": ["3 light setreet", "pinehill"], "city": "windermere", "state": "vic", "postalCode": "3212"}])
        );
        assert_eq!(read["identifier"][0]["value"], "1551941");
        assert!(patient(
            "rec_id, given_name, surname, street_number, address_1, address_2, suburb, postcode, state, date_of_birth, soc_sec_id"
        )
        .is_none());
    }

    #[test]
    fn an_impossible_birth_date_is_left_out() {
        let (read, _) = patient("rec-1-org, a, b, 1, x street, , y, 2000, nsw, 19651313, 1").unwrap();
        assert!(read.get("birthDate").is_none());
        assert_eq!(valid_date("20000229").as_deref(), Some("2000-02-29"));
        assert_eq!(valid_date("19000229"), None);
    }
}
