//! `braid synth`: realistic multi-source data with its ground truth, for the tests, the
//! benchmarks and the demo.
//!
//! People are made first, in households (a surname and an address shared, sometimes twins:
//! the same birth date and surname, another given name). Each person is registered at one to
//! five of the sources (most at two or more), and each registration is the person as that
//! provider recorded them: with typos, nicknames, initials, day and month swapped, a one-digit
//! slip in the birth date, a changed surname (marriage) or address (a move), and fields left
//! out. Each source has its own ids and medical record numbers; some registrations carry the
//! national identifier. The people's Observations (vital signs) and Appointments are reported
//! by one of their providers, some by two (the same reading or visit), and some appointments
//! at different providers overlap.
//!
//! Everything follows from the seed: the same options give the same data on every machine.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::random::Random;

/// The system of the national identifier some registrations carry (an enterprise identifier).
pub const NATIONAL_ID_SYSTEM: &str = "http://ns.example/national-id";

/// The names of the sources, in order (`--sources N` takes the first N).
pub const SOURCE_NAMES: [&str; 8] = ["north", "south", "east", "west", "central", "coast", "valley", "metro"];

/// Most people one run makes.
pub const MAX_PEOPLE: usize = 2_000_000;

/// What to make.
#[derive(Debug, Clone, Copy)]
pub struct SynthOptions {
    pub people: usize,
    /// How many sources (2 to 8).
    pub sources: usize,
    pub seed: u64,
    /// Whether to make Observations and Appointments (the Patients alone otherwise).
    pub clinical: bool,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { people: 1_000, sources: 4, seed: 7, clinical: true }
    }
}

/// One source's records.
#[derive(Debug, Clone)]
pub struct SourceData {
    pub name: &'static str,
    /// Patients first, then Observations and Appointments, each with the source's own id and
    /// references to the source's own Patients.
    pub resources: Vec<Value>,
}

/// A Patient's place in the truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub source: &'static str,
    /// The Patient's id at the source.
    pub patient: String,
    pub person: u32,
}

/// What a run made: the sources' records and the truth.
#[derive(Debug, Clone, Default)]
pub struct Synthetic {
    pub sources: Vec<SourceData>,
    pub truth: Vec<Registration>,
    pub figures: Figures,
}

/// Counts of what was made, and of the hazards in it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub people: usize,
    pub patients: usize,
    pub households: usize,
    pub twins: usize,
    pub nicknames: usize,
    pub typos: usize,
    pub swapped_dates: usize,
    pub changed_surnames: usize,
    pub moves: usize,
    pub observations: usize,
    pub duplicated_observations: usize,
    pub appointments: usize,
    pub duplicated_appointments: usize,
    pub overlapping_appointments: usize,
}

#[derive(Deserialize)]
struct Lists {
    given_female: Vec<String>,
    given_male: Vec<String>,
    family: Vec<String>,
    streets: Vec<String>,
    places: Vec<Place>,
    practitioners: Vec<String>,
}

#[derive(Deserialize, Clone)]
struct Place {
    city: String,
    postcode: String,
}

fn lists() -> Lists {
    serde_json::from_str(include_str!("../../profiles/synth.json")).expect("profiles/synth.json is valid")
}

/// A person as they are.
#[derive(Debug, Clone)]
struct Person {
    female: bool,
    given: String,
    family: String,
    /// (year, month, day)
    birth: (i32, u32, u32),
    line: String,
    place: usize,
    postcode: String,
    phone: String,
    email: String,
    national_id: String,
}

/// Nickname groups from `profiles/nicknames.csv` (formal name first).
fn nickname_groups() -> Vec<Vec<String>> {
    include_str!("../../profiles/nicknames.csv")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(',').map(|name| name.trim().to_owned()).collect())
        .collect()
}

/// Capitalises each word (`o'brien` → `O'brien`, `wagga wagga` → `Wagga Wagga`).
fn title(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn days_in(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn random_date(random: &mut Random, from_year: i32, to_year: i32) -> (i32, u32, u32) {
    let year = from_year + random.below((to_year - from_year + 1) as usize) as i32;
    let month = 1 + random.below(12) as u32;
    let day = 1 + random.below(days_in(year, month) as usize) as u32;
    (year, month, day)
}

/// One slip of the keyboard: a letter replaced, left out, doubled or two swapped.
fn typo(random: &mut Random, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    if chars.len() < 3 {
        return text.to_owned();
    }
    let at = 1 + random.below(chars.len() - 2);
    match random.below(4) {
        0 => chars[at] = (b'a' + random.below(26) as u8) as char,
        1 => {
            chars.remove(at);
        }
        2 => chars.insert(at, chars[at]),
        _ => chars.swap(at, at + 1),
    }
    chars.into_iter().collect()
}

fn digits(random: &mut Random, count: usize) -> String {
    (0..count).map(|_| char::from(b'0' + random.below(10) as u8)).collect()
}

/// Where someone lives.
struct Address {
    line: String,
    place: usize,
    postcode: String,
}

/// Postcodes one place spans (its listed one and the next ones), as a town's suburbs do.
const POSTCODES_PER_PLACE: usize = 12;

fn address(random: &mut Random, lists: &Lists) -> Address {
    let street = random.below(lists.streets.len());
    let line = format!("{} {}", 1 + random.below(250), title(&lists.streets[street]));
    let place = random.popular(lists.places.len());
    let base: usize = lists.places[place].postcode.parse().unwrap_or(0);
    let postcode = format!("{:04}", base + random.below(POSTCODES_PER_PLACE));
    Address { line, place, postcode }
}

struct Maker {
    random: Random,
    lists: Lists,
    nicknames: Vec<Vec<String>>,
    figures: Figures,
}

impl Maker {
    fn address(&mut self) -> Address {
        address(&mut self.random, &self.lists)
    }

    fn given(&mut self, female: bool) -> String {
        let names = if female { &self.lists.given_female } else { &self.lists.given_male };
        names[self.random.popular(names.len())].clone()
    }

    fn person(&mut self, female: bool, family: &str, birth: (i32, u32, u32), address: &Address) -> Person {
        let given = self.given(female);
        let suffix = self.random.below(100);
        Person {
            female,
            email: format!("{}.{}{suffix}@mail.example", given, family.replace([' ', '\''], "")),
            given,
            family: family.to_owned(),
            birth,
            line: address.line.clone(),
            place: address.place,
            postcode: address.postcode.clone(),
            phone: format!("04{}", digits(&mut self.random, 8)),
            national_id: digits(&mut self.random, 9),
        }
    }

    /// Households of one to four: adults sharing a surname and an address, their children
    /// (sometimes twins).
    fn people(&mut self, count: usize) -> Vec<Person> {
        let mut people: Vec<Person> = Vec::with_capacity(count);
        while people.len() < count {
            let size = match self.random.below(100) {
                0..40 => 1,
                40..70 => 2,
                70..85 => 3,
                _ => 4,
            }
            .min(count - people.len());
            let family = self.lists.family[self.random.popular(self.lists.family.len())].clone();
            let address = self.address();
            let adult = random_date(&mut self.random, 1935, 2000);
            let first_female = self.random.chance(0.5);
            people.push(self.person(first_female, &family, adult, &address));
            if size == 1 {
                continue;
            }
            self.figures.households += 1;
            let partner = random_date(&mut self.random, (adult.0 - 5).max(1930), (adult.0 + 5).min(2002));
            // Some partners keep their own surname.
            let partner_family = if self.random.chance(0.2) {
                self.lists.family[self.random.popular(self.lists.family.len())].clone()
            } else {
                family.clone()
            };
            people.push(self.person(!first_female, &partner_family, partner, &address));
            let mut children = size - 2;
            while children > 0 {
                let birth = random_date(&mut self.random, adult.0 + 20, (adult.0 + 45).min(2024));
                let female = self.random.chance(0.5);
                people.push(self.person(female, &family, birth, &address));
                children -= 1;
                if children > 0 && self.random.chance(0.15) {
                    // Twins: the same birth date, surname and address; another given name.
                    self.figures.twins += 1;
                    let twin_female = if self.random.chance(0.5) { female } else { !female };
                    let mut twin = self.person(twin_female, &family, birth, &address);
                    while twin.given == people.last().map(|p| p.given.clone()).unwrap_or_default() {
                        twin.given = self.given(twin_female);
                    }
                    people.push(twin);
                    children -= 1;
                }
            }
        }
        people
    }

    /// The person as one provider recorded them.
    fn registration(&mut self, person: &Person, source: &str, id: &str) -> Value {
        let random = &mut self.random;
        let mut given = person.given.clone();
        if random.chance(0.12) {
            let groups: Vec<&Vec<String>> =
                self.nicknames.iter().filter(|group| group[0] == given && group.len() > 1).collect();
            if let Some(group) = groups.first() {
                given = group[1 + random.below(group.len() - 1)].clone();
                self.figures.nicknames += 1;
            }
        } else if random.chance(0.07) {
            given = typo(random, &given);
            self.figures.typos += 1;
        } else if random.chance(0.02) {
            given = given.chars().take(1).collect();
        }
        let mut family = person.family.clone();
        let adult = person.birth.0 <= 2004;
        if person.female && adult && random.chance(0.06) {
            family = self.lists.family[random.popular(self.lists.family.len())].clone();
            self.figures.changed_surnames += 1;
        } else if random.chance(0.06) {
            family = typo(random, &family);
            self.figures.typos += 1;
        }
        let (mut year, mut month, mut day) = person.birth;
        let mut birth_known = true;
        if day <= 12 && day != month && random.chance(0.03) {
            std::mem::swap(&mut day, &mut month);
            self.figures.swapped_dates += 1;
        } else if random.chance(0.03) {
            // One digit wrong: the day's last, or the year's.
            if random.chance(0.5) {
                day = (day / 10) * 10 + random.below(10) as u32;
                day = day.clamp(1, 28);
            } else {
                year = (year / 10) * 10 + random.below(10) as i32;
            }
            self.figures.typos += 1;
        } else if random.chance(0.02) {
            birth_known = false;
        }
        // A slip in the year can leave a 29 February in a common year: still a date.
        day = day.min(days_in(year, month));
        let (mut line, mut place, mut postcode) = (person.line.clone(), person.place, person.postcode.clone());
        if random.chance(0.10) {
            let moved = address(random, &self.lists);
            (line, place, postcode) = (moved.line, moved.place, moved.postcode);
            self.figures.moves += 1;
        } else if random.chance(0.05) {
            line = typo(random, &line);
            self.figures.typos += 1;
        }
        let mut patient = json!({"resourceType": "Patient", "id": id,
            "identifier": [{"system": format!("http://{source}.example/mrn"), "value": format!("MRN{}", id.trim_start_matches('p'))}],
            "name": [{"family": title(&family), "given": [title(&given)]}]});
        if random.chance(0.45) {
            let mut national = person.national_id.clone();
            if random.chance(0.01) {
                national = typo(random, &national);
            }
            patient["identifier"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"system": NATIONAL_ID_SYSTEM, "value": national}));
        }
        if random.chance(0.95) {
            patient["gender"] = json!(if person.female { "female" } else { "male" });
        }
        if birth_known {
            patient["birthDate"] = json!(format!("{year:04}-{month:02}-{day:02}"));
        }
        if random.chance(0.9) {
            let place = &self.lists.places[place];
            let mut address = json!({"line": [line], "city": title(&place.city), "postalCode": postcode});
            if random.chance(0.05) {
                address.as_object_mut().expect("an object").remove("postalCode");
            }
            patient["address"] = json!([address]);
        }
        let mut telecom = Vec::new();
        if random.chance(0.6) {
            let phone = if random.chance(0.03) { typo(random, &person.phone) } else { person.phone.clone() };
            telecom.push(json!({"system": "phone", "value": phone, "use": "mobile"}));
        }
        if random.chance(0.4) {
            telecom.push(json!({"system": "email", "value": person.email}));
        }
        if !telecom.is_empty() {
            patient["telecom"] = Value::Array(telecom);
        }
        patient
    }
}

impl Synthetic {
    /// Every Patient as the index reads it, with its person: what the quality measures take.
    pub fn records(&self) -> (Vec<super::record::PersonRecord>, Vec<Option<u32>>) {
        let people: std::collections::HashMap<(&str, &str), u32> =
            self.truth.iter().map(|r| ((r.source, r.patient.as_str()), r.person)).collect();
        let mut records = Vec::new();
        let mut persons = Vec::new();
        for source in &self.sources {
            for patient in source.resources.iter().filter(|r| r["resourceType"] == "Patient") {
                records.push(super::record::PersonRecord::from_patient(patient));
                persons.push(people.get(&(source.name, patient["id"].as_str().unwrap_or(""))).copied());
            }
        }
        (records, persons)
    }
}

/// Vital signs the Observations report: LOINC code, display, unit, typical value and spread.
const VITALS: [(&str, &str, &str, f64, f64); 4] = [
    ("8867-4", "Heart rate", "/min", 72.0, 12.0),
    ("29463-7", "Body weight", "kg", 75.0, 15.0),
    ("8310-5", "Body temperature", "Cel", 36.8, 0.4),
    ("9279-1", "Respiratory rate", "/min", 16.0, 3.0),
];

fn observation(id: &str, patient: &str, vital: usize, time: &str, value: f64) -> Value {
    let (code, display, unit, _, _) = VITALS[vital];
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": time,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

fn appointment(id: &str, patient: &str, start: &str, end: &str, practitioner: &str) -> Value {
    json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": start, "end": end,
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"display": format!("Dr {practitioner}")}, "status": "accepted"}]})
}

/// An instant as FHIR writes it, from minutes since 2024-01-01T00:00Z.
fn instant(minutes: i64) -> String {
    crate::fhir::json::format_instant((1_704_067_200 + minutes * 60) * 1_000_000)
}

/// Makes the data (see the module's description).
pub fn generate(options: SynthOptions) -> Synthetic {
    let sources = options.sources.clamp(2, SOURCE_NAMES.len());
    let people_count = options.people.min(MAX_PEOPLE);
    let mut maker = Maker {
        random: Random::new(options.seed),
        lists: lists(),
        nicknames: nickname_groups(),
        figures: Figures::default(),
    };
    let people = maker.people(people_count);
    let mut data: Vec<SourceData> =
        SOURCE_NAMES[..sources].iter().map(|name| SourceData { name, resources: Vec::new() }).collect();
    let mut clinical: Vec<Vec<Value>> = vec![Vec::new(); sources];
    let mut counters = vec![0usize; sources];
    let mut truth = Vec::new();
    for (index, person) in people.iter().enumerate() {
        // 2 to 5 providers for most; some people are known to one only.
        let wanted = if maker.random.chance(0.15) { 1 } else { 2 + maker.random.below(4) }.min(sources);
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < wanted {
            let source = maker.random.below(sources);
            if !chosen.contains(&source) {
                chosen.push(source);
            }
        }
        let mut ids = Vec::with_capacity(chosen.len());
        for &source in &chosen {
            counters[source] += 1;
            let id = format!("p{}", counters[source]);
            let patient = maker.registration(person, data[source].name, &id);
            data[source].resources.push(patient);
            truth.push(Registration { source: data[source].name, patient: id.clone(), person: index as u32 });
            ids.push((source, id));
        }
        if !options.clinical {
            continue;
        }
        let random = &mut maker.random;
        for _ in 0..2 + random.below(5) {
            let vital = random.below(VITALS.len());
            let (_, _, _, typical, spread) = VITALS[vital];
            let value = ((typical + (random.unit() - 0.5) * 2.0 * spread) * 10.0).round() / 10.0;
            let time = instant(random.below(2 * 365 * 24 * 60) as i64);
            let (source, patient) = &ids[random.below(ids.len())];
            counters[*source] += 1;
            clinical[*source].push(observation(&format!("o{}", counters[*source]), patient, vital, &time, value));
            maker.figures.observations += 1;
            if ids.len() > 1 && random.chance(0.25) {
                let (other, other_patient) = ids.iter().find(|(s, _)| s != source).expect("two sources");
                counters[*other] += 1;
                clinical[*other].push(observation(
                    &format!("o{}", counters[*other]),
                    other_patient,
                    vital,
                    &time,
                    value,
                ));
                maker.figures.duplicated_observations += 1;
            }
        }
        for _ in 0..1 + random.below(3) {
            // On a half hour in working hours, 15 to 60 minutes.
            let day = random.below(365) as i64 + 2 * 365;
            let start = day * 24 * 60 + (8 * 60) + 30 * random.below(18) as i64;
            let length = 15 * (1 + random.below(4)) as i64;
            let practitioner = maker.lists.practitioners[random.below(maker.lists.practitioners.len())].clone();
            let (source, patient) = &ids[random.below(ids.len())];
            counters[*source] += 1;
            let visit = appointment(
                &format!("a{}", counters[*source]),
                patient,
                &instant(start),
                &instant(start + length),
                &practitioner,
            );
            clinical[*source].push(visit);
            maker.figures.appointments += 1;
            if ids.len() > 1 && random.chance(0.2) {
                let (other, other_patient) = ids.iter().find(|(s, _)| s != source).expect("two sources");
                counters[*other] += 1;
                let copy = appointment(
                    &format!("a{}", counters[*other]),
                    other_patient,
                    &instant(start),
                    &instant(start + length),
                    &practitioner,
                );
                clinical[*other].push(copy);
                maker.figures.duplicated_appointments += 1;
            } else if ids.len() > 1 && random.chance(0.15) {
                // Booked at another provider for a time that overlaps.
                let (other, other_patient) = ids.iter().find(|(s, _)| s != source).expect("two sources");
                counters[*other] += 1;
                let shifted = start + 15;
                let other_practitioner =
                    maker.lists.practitioners[random.below(maker.lists.practitioners.len())].clone();
                let overlapping = appointment(
                    &format!("a{}", counters[*other]),
                    other_patient,
                    &instant(shifted),
                    &instant(shifted + 30),
                    &other_practitioner,
                );
                clinical[*other].push(overlapping);
                maker.figures.overlapping_appointments += 1;
            }
        }
    }
    for (source, resources) in data.iter_mut().zip(clinical) {
        source.resources.extend(resources);
    }
    maker.figures.people = people_count;
    maker.figures.patients = truth.len();
    Synthetic { sources: data, truth, figures: maker.figures }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_data_with_its_hazards() {
        let options = SynthOptions { people: 2_000, sources: 4, seed: 11, clinical: true };
        let first = generate(options);
        let again = generate(options);
        assert_eq!(first.truth, again.truth);
        assert_eq!(first.sources[0].resources, again.sources[0].resources);
        let figures = &first.figures;
        assert_eq!(figures.people, 2_000);
        for (what, count) in [
            ("households", figures.households),
            ("twins", figures.twins),
            ("nicknames", figures.nicknames),
            ("typos", figures.typos),
            ("swapped dates", figures.swapped_dates),
            ("changed surnames", figures.changed_surnames),
            ("moves", figures.moves),
            ("duplicated observations", figures.duplicated_observations),
            ("duplicated appointments", figures.duplicated_appointments),
            ("overlapping appointments", figures.overlapping_appointments),
        ] {
            assert!(count > 10, "{what}: {count}");
        }
        // Most people are at two to five providers; each registration is one Patient.
        let mut per_person: HashMap<u32, usize> = HashMap::new();
        for registration in &first.truth {
            *per_person.entry(registration.person).or_default() += 1;
        }
        let several = per_person.values().filter(|count| (2..=4).contains(*count)).count();
        assert!(several > 1_500, "{several}");
        let patients: usize = first
            .sources
            .iter()
            .map(|source| source.resources.iter().filter(|r| r["resourceType"] == "Patient").count())
            .sum();
        assert_eq!(patients, first.truth.len());
        // Every resource is one a FHIR server takes.
        for source in &first.sources {
            for resource in source.resources.iter().step_by(7).take(300) {
                let resource_type =
                    crate::fhir::ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
                crate::fhir::validation::validator()
                    .validate_value(resource_type, resource)
                    .unwrap_or_else(|error| panic!("{resource}: {error:?}"));
            }
        }
        // Every birth date is a calendar date, whatever slipped.
        for source in &first.sources {
            for patient in source.resources.iter().filter(|r| r["resourceType"] == "Patient") {
                if let Some(birth) = patient["birthDate"].as_str() {
                    assert!(crate::fhir::json::parse_instant(birth).is_some(), "{birth}");
                }
            }
        }
        // Another seed, other people.
        let other = generate(SynthOptions { seed: 12, ..options });
        assert_ne!(other.sources[0].resources[0], first.sources[0].resources[0]);
    }
}
