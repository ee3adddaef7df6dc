//! Differential test of search: proptest generates a history of writes (creates, updates and
//! deletes of Patients and Observations) interleaved with searches, runs it against a real
//! server over HTTP, and compares every answer with a reference evaluator written here from
//! the FHIR R4 search specification (https://hl7.org/fhir/R4/search.html) alone.
//!
//! The evaluator shares no code with `braid::search`: it parses dates, decimals, tokens and
//! references itself, with exact integer arithmetic, and keeps a model of every resource's
//! current version. A search is checked at the newest state, or, for a *deferred* search, its
//! first page is taken, later writes happen, and the remaining pages (followed through the
//! server's `next` links) must still show the state as of the first page: the same matches,
//! each in the version (id, `meta.versionId` and content) current at that logical time; the
//! `previous` links, walked back from the last page, must show the same pages again.
//! `_total=accurate` must count that state too. Chains (`subject:Patient.family`) and reverse
//! chains (`_has:Observation:subject:code`) are resolved in the same model state, and
//! `_lastUpdated` is searched with the instants the server returned for earlier writes.
//!
//! Parameters covered: strings (`family`, `given`, `name`; plain, `:exact`, `:contains`,
//! `:missing`), tokens (`gender`, `identifier`, `code`, `active`; with and without systems,
//! escaped `|` and `,`, `:not`, `:missing`), dates (`birthdate`, `death-date`, `date` over
//! dateTimes and Periods, `_lastUpdated`; every prefix but `ap`), references
//! (`general-practitioner`, `subject`, `:Type`), quantities (`value-quantity` with units) and
//! the composite `code-value-quantity`. The generators keep to small value sets, so that
//! values collide, nest and meet at range bounds.
//!
//! Choices where the specification leaves room (Braid makes the same ones; see the README):
//! - a date or dateTime without a zone (and a date without time) is taken as UTC;
//! - number and quantity targets are points; only the search value has an implicit range, and
//!   `gt`/`lt`/`ge`/`le` compare with the value exactly (the spec's number table), while `sa`
//!   and `eb` use the implicit range (the spec's prefix table: "does not overlap ... and the
//!   range above the search value contains the target");
//! - string search folds case and accents (Unicode NFKD, combining marks removed), `:exact`
//!   compares the text as written, code point by code point;
//! - references written as absolute URLs on the server's own base stand for the relative
//!   reference; URLs on other servers are external and match only themselves;
//! - `1e2` and other exponent forms are left out: the spec's number table gives `1e2` the range
//!   `[95, 105)` while calling it one significant figure (`[50, 150)`, Braid's reading);
//! - fractions of a second have at most six digits, the resolution Braid compares at.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestRunner};
use serde_json::{Value, json};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::helpers::{TestApp, link, spawn_app, without_golden_link};

// ---------------------------------------------------------------------------------------------
// The reference evaluator: dates
// ---------------------------------------------------------------------------------------------

/// Nanoseconds since 1970-01-01T00:00:00Z.
type Instant = i128;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March is 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn midnight(year: i64, month: i64, day: i64) -> Instant {
    i128::from(days_from_civil(year, month, day)) * 86_400 * NANOS_PER_SECOND
}

/// The half-open range `[start, end)` of instants a FHIR date, dateTime or instant denotes: the
/// whole of its precision (`2021` is the year, `2021-03-01T10:00` the minute), shifted by its
/// zone; no zone means UTC.
fn date_range(text: &str) -> (Instant, Instant) {
    let number = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| panic!("a number in {text}")) };
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let fields: Vec<i64> = date.split('-').map(number).collect();
    let year = fields[0];
    let Some(time) = time else {
        return match fields.len() {
            1 => (midnight(year, 1, 1), midnight(year + 1, 1, 1)),
            2 => {
                let month = fields[1];
                let next = if month == 12 { midnight(year + 1, 1, 1) } else { midnight(year, month + 1, 1) };
                (midnight(year, month, 1), next)
            }
            _ => {
                let start = midnight(year, fields[1], fields[2]);
                (start, start + 86_400 * NANOS_PER_SECOND)
            }
        };
    };
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(at) = time.find(['+', '-']) {
        let sign = if time[at..].starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = time[at + 1..].split_once(':').expect("a zone hh:mm");
        (&time[..at], sign * (number(hours) * 3600 + number(minutes) * 60))
    } else {
        (time, 0)
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let (hour, minute) = (number(parts[0]), number(parts[1]));
    let (second, fraction) = match parts.get(2) {
        None => (0, None),
        Some(seconds) => match seconds.split_once('.') {
            None => (number(seconds), None),
            Some((whole, fraction)) => (number(whole), Some(fraction)),
        },
    };
    let local_seconds = i128::from(hour * 3600 + minute * 60 + second - offset_seconds);
    let mut start = midnight(year, fields[1], fields[2]) + local_seconds * NANOS_PER_SECOND;
    let length = match (parts.len(), fraction) {
        (2, _) => 60 * NANOS_PER_SECOND,
        (_, None) => NANOS_PER_SECOND,
        (_, Some(fraction)) => {
            let unit = 10i128.pow(9 - fraction.len() as u32);
            start += i128::from(number(fraction)) * unit;
            unit
        }
    };
    (start, start + length)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

const PREFIXES: [(&str, Prefix); 9] = [
    ("", Prefix::Eq),
    ("eq", Prefix::Eq),
    ("ne", Prefix::Ne),
    ("gt", Prefix::Gt),
    ("lt", Prefix::Lt),
    ("ge", Prefix::Ge),
    ("le", Prefix::Le),
    ("sa", Prefix::Sa),
    ("eb", Prefix::Eb),
];

/// Splits a leading prefix off a date or number search value.
fn split_prefix(value: &str) -> (Prefix, &str) {
    for (name, prefix) in &PREFIXES[1..] {
        if let Some(rest) = value.strip_prefix(name) {
            return (*prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// The spec's prefix table, for a search range `[lo, hi)` and a target range `[t_lo, t_hi)`:
/// "the range above the search value" is `[hi, ∞)`, "the range below" `(-∞, lo)`.
fn ranges_match(prefix: Prefix, (lo, hi): (Instant, Instant), (t_lo, t_hi): (Instant, Instant)) -> bool {
    let contains = lo <= t_lo && t_hi <= hi;
    let above_overlaps = t_hi > hi;
    let below_overlaps = t_lo < lo;
    match prefix {
        Prefix::Eq => contains,
        Prefix::Ne => !contains,
        Prefix::Gt => above_overlaps,
        Prefix::Lt => below_overlaps,
        Prefix::Ge => above_overlaps || contains,
        Prefix::Le => below_overlaps || contains,
        Prefix::Sa => t_lo >= hi,
        Prefix::Eb => t_hi <= lo,
    }
}

/// The range a date-typed element covers: a date/dateTime string, or a Period (an open end
/// is unbounded).
fn element_range(element: &Value) -> Option<(Instant, Instant)> {
    match element {
        Value::String(text) => Some(date_range(text)),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str).map_or(Instant::MIN, |s| date_range(s).0);
            let end = period.get("end").and_then(Value::as_str).map_or(Instant::MAX, |e| date_range(e).1);
            Some((start, end))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The reference evaluator: decimals
// ---------------------------------------------------------------------------------------------

/// An exact decimal `mantissa · 10^-scale`.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// Parses `[-]digits[.digits]` (the only forms this test writes).
    fn parse(text: &str) -> Decimal {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let magnitude: i128 = format!("{whole}{fraction}").parse().expect("decimal digits");
        Decimal { mantissa: if negative { -magnitude } else { magnitude }, scale: fraction.len() as u32 }
    }

    /// The mantissa at a finer scale.
    fn at(self, scale: u32) -> i128 {
        self.mantissa * 10i128.pow(scale - self.scale)
    }

    /// The implicit range of a search value: plus or minus half a unit of its last digit
    /// (`100` is `[99.5, 100.5)`, `1.50` is `[1.495, 1.505)`), at scale `scale + 1`.
    fn implicit_range(self) -> (Decimal, Decimal) {
        let scale = self.scale + 1;
        let centre = self.at(scale);
        (Decimal { mantissa: centre - 5, scale }, Decimal { mantissa: centre + 5, scale })
    }
}

fn compare(a: Decimal, b: Decimal) -> std::cmp::Ordering {
    let scale = a.scale.max(b.scale);
    a.at(scale).cmp(&b.at(scale))
}

/// A number search value against a target number (a point).
fn number_matches(prefix: Prefix, query: Decimal, target: Decimal) -> bool {
    use std::cmp::Ordering::*;
    let (lo, hi) = query.implicit_range();
    let in_range = compare(lo, target) != Greater && compare(target, hi) == Less;
    match prefix {
        Prefix::Eq => in_range,
        Prefix::Ne => !in_range,
        Prefix::Gt => compare(target, query) == Greater,
        Prefix::Lt => compare(target, query) == Less,
        Prefix::Ge => compare(target, query) != Less,
        Prefix::Le => compare(target, query) != Greater,
        Prefix::Sa => compare(target, hi) != Less,
        Prefix::Eb => compare(target, lo) == Less,
    }
}

// ---------------------------------------------------------------------------------------------
// The reference evaluator: strings, tokens, references, quantities
// ---------------------------------------------------------------------------------------------

/// Case- and accent-insensitive form: compatibility decomposition, combining marks dropped,
/// lower case. `ł` has no decomposition (its stroke is part of the letter in Unicode) but is an
/// accented `l` to anyone typing a name without diacritics, so it folds to `l`.
fn fold(text: &str) -> String {
    let lower: String = text.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
    lower.replace('ł', "l")
}

/// Splits a search value at each `separator` that no backslash escapes; the pieces keep
/// their escapes (the spec's escapes: `\,`, `\|`, `\$`, `\\`).
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let piece = pieces.last_mut().unwrap();
            piece.push(c);
            piece.extend(chars.next());
        } else if c == separator {
            pieces.push(String::new());
        } else {
            pieces.last_mut().unwrap().push(c);
        }
    }
    pieces
}

/// Removes the escaping backslashes.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or(c) } else { c });
    }
    out
}

/// A token search value (`code`, `system|code`, `|code`, `system|`, with escapes) against
/// one coding or identifier.
fn token_matches(query: &str, system: Option<&str>, code: Option<&str>) -> bool {
    let pieces = split_unescaped(query, '|');
    let (query_system, query_code) = match pieces.as_slice() {
        [code_only] => return code == Some(unescape(code_only).as_str()),
        [query_system, query_code] => (unescape(query_system), unescape(query_code)),
        _ => panic!("this test writes at most one unescaped bar in a token: {query}"),
    };
    match (query_system.as_str(), query_code.as_str()) {
        ("", query_code) => system.is_none() && code == Some(query_code),
        (query_system, "") => system == Some(query_system),
        (query_system, query_code) => system == Some(query_system) && code == Some(query_code),
    }
}

/// A reference search value against one stored reference. `targets` are the resource types
/// a bare id may stand for (the parameter's targets, or the one its `:Type` modifier names).
fn reference_matches(query: &str, stored: &str, targets: &[&str], base: &str) -> bool {
    let local = |reference: &str| -> String {
        match reference.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')) {
            Some(rest) => rest.to_owned(),
            None => reference.to_owned(),
        }
    };
    let (stored, query) = (local(stored), local(query));
    if query.contains('/') {
        return stored == query;
    }
    match stored.split_once('/') {
        Some((kind, id)) => id == query && targets.contains(&kind) && !kind.contains(':'),
        None => false,
    }
}

/// A quantity search value `[prefix]number[|system|code]` against one Quantity.
fn quantity_matches(query: &str, quantity: &Value) -> bool {
    let Some(value) = quantity.get("value") else { return false };
    let target = Decimal::parse(&value.to_string());
    let parts: Vec<&str> = query.split('|').collect();
    let unit_ok = match parts.as_slice() {
        [_] => true,
        // `number||code`: the code or the human-readable unit, whatever the system.
        [_, "", code] => quantity["code"].as_str() == Some(code) || quantity["unit"].as_str() == Some(code),
        [_, system, code] => quantity["system"].as_str() == Some(system) && quantity["code"].as_str() == Some(code),
        _ => panic!("quantity form {query}"),
    };
    let (prefix, number) = split_prefix(parts[0]);
    unit_ok && number_matches(prefix, Decimal::parse(number), target)
}

const GENERAL_PRACTITIONER_TARGETS: [&str; 3] = ["Organization", "Practitioner", "PractitionerRole"];
const SUBJECT_TARGETS: [&str; 4] = ["Group", "Device", "Patient", "Location"];

/// Whether `resource` satisfies one clause `name=value` (comma-separated alternatives OR'ed).
fn clause_matches(resource: &Value, name: &str, value: &str, base: &str) -> bool {
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let names: Vec<&Value> = resource["name"].as_array().into_iter().flatten().collect();
    // The elements each parameter selects (its FHIRPath expression in the spec).
    let elements: Vec<&Value> = match (resource["resourceType"].as_str().unwrap(), code) {
        ("Patient", "family") => names.iter().filter_map(|n| n.get("family")).collect(),
        ("Patient", "given") => names.iter().flat_map(|n| n["given"].as_array().into_iter().flatten()).collect(),
        // `name`: every string part of a HumanName (of those this test writes: family, given).
        ("Patient", "name") => names
            .iter()
            .flat_map(|n| n.get("family").into_iter().chain(n["given"].as_array().into_iter().flatten()))
            .collect(),
        ("Patient", "gender") => resource.get("gender").into_iter().collect(),
        ("Patient", "active") => resource.get("active").into_iter().collect(),
        ("Patient", "birthdate") => resource.get("birthDate").into_iter().collect(),
        ("Patient", "death-date") => resource.get("deceasedDateTime").into_iter().collect(),
        ("Patient", "identifier") => resource["identifier"].as_array().into_iter().flatten().collect(),
        ("Patient", "general-practitioner") => {
            resource["generalPractitioner"].as_array().into_iter().flatten().collect()
        }
        // The composite's components are evaluated on the Observation itself.
        ("Observation", "code-value-quantity") => vec![resource],
        (_, "_lastUpdated") => resource["meta"].get("lastUpdated").into_iter().collect(),
        ("Observation", "code") => resource["code"]["coding"].as_array().into_iter().flatten().collect(),
        ("Observation", "subject") => resource.get("subject").into_iter().collect(),
        ("Observation", "value-quantity") => resource.get("valueQuantity").into_iter().collect(),
        ("Observation", "date") => {
            resource.get("effectiveDateTime").or_else(|| resource.get("effectivePeriod")).into_iter().collect()
        }
        (kind, code) => panic!("no reference semantics for {kind}.{code}"),
    };
    match modifier {
        Some("missing") => return elements.is_empty() == (value == "true"),
        // `:not`: the resources with no value matching (also those without the element).
        Some("not") => return !elements.iter().any(|element| one_matches(element, code, None, value, base)),
        _ => {}
    }
    split_unescaped(value, ',')
        .iter()
        .any(|alternative| elements.iter().any(|element| one_matches(element, code, modifier, alternative, base)))
}

fn one_matches(element: &Value, code: &str, modifier: Option<&str>, value: &str, base: &str) -> bool {
    match code {
        "family" | "given" | "name" => {
            let text = element.as_str().unwrap();
            match modifier {
                None => fold(text).starts_with(&fold(value)),
                Some("exact") => text == value,
                Some("contains") => fold(text).contains(&fold(value)),
                other => panic!("family:{other:?}"),
            }
        }
        "gender" => element.as_str() == Some(value),
        "active" => element.as_bool().map(|b| b.to_string()).as_deref() == Some(value),
        "birthdate" | "death-date" | "date" | "_lastUpdated" => {
            let (prefix, date) = split_prefix(value);
            element_range(element).is_some_and(|target| ranges_match(prefix, date_range(date), target))
        }
        "identifier" | "code" => {
            let key = if code == "identifier" { "value" } else { "code" };
            token_matches(value, element["system"].as_str(), element[key].as_str())
        }
        "general-practitioner" | "subject" => {
            let Some(stored) = element["reference"].as_str() else { return false };
            let defaults: &[&str] = if code == "subject" { &SUBJECT_TARGETS } else { &GENERAL_PRACTITIONER_TARGETS };
            let targets: Vec<&str> = modifier.map_or_else(|| defaults.to_vec(), |only| vec![only]);
            reference_matches(value, stored, &targets, base)
        }
        "value-quantity" => quantity_matches(value, element),
        "code-value-quantity" => {
            let (code, quantity) = value.split_once('$').expect("code$quantity");
            let mut codings = element["code"]["coding"].as_array().into_iter().flatten();
            codings.any(|coding| token_matches(code, coding["system"].as_str(), coding["code"].as_str()))
                && element.get("valueQuantity").is_some_and(|q| quantity_matches(quantity, q))
        }
        other => panic!("no reference semantics for {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Precision of a generated date: resources hold year, month, day, second or fractional
/// second precision (R4 dateTimes with a time need seconds and a zone); queries also minutes
/// and no zone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    Fraction,
}

#[derive(Clone)]
struct DateSpec {
    year: i64,
    month: i64,
    day_choice: usize,
    hour: i64,
    minute: i64,
    second: i64,
    fraction: &'static str,
    zone: &'static str,
    precision: Precision,
}

/// Shown as the text it renders, so that a shrunk failure reads like the request it made.
impl std::fmt::Debug for DateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.render())
    }
}

impl DateSpec {
    fn render(&self) -> String {
        let days = days_in_month(self.year, self.month);
        let day = [1, 15, days - 1, days][self.day_choice];
        let (y, m) = (self.year, self.month);
        let (h, mi, s) = (self.hour, self.minute, self.second);
        match self.precision {
            Precision::Year => format!("{y}"),
            Precision::Month => format!("{y}-{m:02}"),
            Precision::Day => format!("{y}-{m:02}-{day:02}"),
            Precision::Minute => format!("{y}-{m:02}-{day:02}T{h:02}:{mi:02}{}", self.zone),
            Precision::Second => format!("{y}-{m:02}-{day:02}T{h:02}:{mi:02}:{s:02}{}", self.zone),
            Precision::Fraction => {
                format!("{y}-{m:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{}{}", self.fraction, self.zone)
            }
        }
    }
}

/// Dates around two year boundaries, so that zones move instants across days, months and
/// years, and precisions nest and overlap.
fn date_spec(precisions: Vec<Precision>, zones: Vec<&'static str>) -> impl Strategy<Value = DateSpec> {
    (
        prop_oneof![Just(2020i64), Just(2021)],
        prop_oneof![Just(1i64), Just(2), Just(12)],
        0usize..4,
        prop_oneof![Just(0i64), Just(1), Just(12), Just(23)],
        prop_oneof![Just(0i64), Just(30), Just(59)],
        prop_oneof![Just(0i64), Just(59)],
        // Up to six digits: Braid compares instants to the microsecond (see the README).
        proptest::sample::select(vec!["5", "25", "250", "999", "000001"]),
        proptest::sample::select(zones),
        proptest::sample::select(precisions),
    )
        .prop_map(|(year, month, day_choice, hour, minute, second, fraction, zone, precision)| DateSpec {
            year,
            month,
            day_choice,
            hour,
            minute,
            second,
            fraction,
            zone,
            precision,
        })
}

fn stored_date_time() -> impl Strategy<Value = DateSpec> {
    use Precision::*;
    date_spec(vec![Year, Month, Day, Second, Fraction], vec!["Z", "+00:00", "+02:00", "-05:00", "+14:00"])
}

fn stored_date() -> impl Strategy<Value = DateSpec> {
    use Precision::*;
    date_spec(vec![Year, Month, Day], vec![""])
}

fn query_date() -> impl Strategy<Value = String> {
    use Precision::*;
    let date = date_spec(vec![Year, Month, Day, Minute, Second, Fraction], vec!["", "Z", "+02:00", "-05:00", "+14:00"]);
    (proptest::sample::select(PREFIXES.map(|(name, _)| name).to_vec()), date)
        .prop_map(|(prefix, date)| format!("{prefix}{}", date.render()))
}

/// Family names: precomposed and decomposed accents, letters outside Latin-1.
const FAMILIES: [&str; 10] = [
    "Nguyễn",
    "Nguye\u{302}\u{303}n",
    "Nguyen",
    "Ōtani",
    "García",
    "Garci\u{301}a",
    "Müller",
    "Muller",
    "Śmigły",
    "Smith",
];
const GENDERS: [&str; 4] = ["male", "female", "other", "unknown"];
const SYSTEMS: [&str; 3] = ["http://hospital.example/mrn", "urn:oid:1.2.3", "http://loinc.org"];
/// Codes, some holding the characters search values escape.
const CODES: [&str; 6] = ["v1", "V1", "8867-4", "x", "a|b", "c,d\\e"];

/// A code as a search value writes it: `\`, `|`, `,` and `$` escaped.
fn escape(code: &str) -> String {
    code.replace('\\', "\\\\").replace('|', "\\|").replace(',', "\\,").replace('$', "\\$")
}

/// Decimals with various digit counts, trailing zeros and signs.
const DECIMALS: [&str; 16] = [
    "5.35", "5.4", "5.45", "0.15", "0.1", "100", "100.4", "100.5", "99.5", "1.50", "1.5", "-2", "-2.5", "-1.5", "0",
    "12.345",
];
const UCUM: &str = "http://unitsofmeasure.org";
const OTHER_SERVER: &str = "http://other.example/fhir";

/// How a stored reference is written; rendered once the server's base is known.
#[derive(Debug, Clone)]
enum RefForm {
    Relative(&'static str, u8),
    /// An absolute URL on the server's own base.
    OwnBase(&'static str, u8),
    /// An absolute URL on another server.
    Elsewhere(&'static str, u8),
}

impl RefForm {
    fn render(&self, base: &str) -> String {
        match self {
            RefForm::Relative(kind, n) => format!("{kind}/{}", ref_id(kind, *n)),
            RefForm::OwnBase(kind, n) => format!("{base}/{kind}/{}", ref_id(kind, *n)),
            RefForm::Elsewhere(kind, n) => format!("{OTHER_SERVER}/{kind}/{}", ref_id(kind, *n)),
        }
    }
}

/// Ids are shared between types (`Organization/r1`, `Practitioner/r1`) so that bare ids are
/// ambiguous; patients are `p{n}`, the ones this test writes.
fn ref_id(kind: &str, n: u8) -> String {
    if kind == "Patient" { format!("p{n}") } else { format!("r{n}") }
}

fn ref_form(kinds: Vec<&'static str>) -> impl Strategy<Value = RefForm> {
    (proptest::sample::select(kinds), 0u8..3, 0..4).prop_map(|(kind, n, form)| match form {
        0 | 1 => RefForm::Relative(kind, n),
        2 => RefForm::OwnBase(kind, n),
        _ => RefForm::Elsewhere(kind, n),
    })
}

/// A query value for a reference parameter: a bare id, `Type/id`, an absolute URL on this
/// server or on another one. `{base}` is replaced by the server's base at run time.
fn reference_query(kinds: Vec<&'static str>) -> impl Strategy<Value = String> {
    (proptest::sample::select(kinds), 0u8..3, 0..4).prop_map(|(kind, n, form)| match form {
        0 => ref_id(kind, n),
        1 => format!("{kind}/{}", ref_id(kind, n)),
        2 => format!("{{base}}/{kind}/{}", ref_id(kind, n)),
        _ => format!("{OTHER_SERVER}/{kind}/{}", ref_id(kind, n)),
    })
}

#[derive(Debug, Clone)]
struct PatientSpec {
    family: Option<usize>,
    given: Vec<usize>,
    gender: Option<usize>,
    birth: Option<DateSpec>,
    death: Option<DateSpec>,
    identifiers: Vec<(Option<usize>, usize)>,
    active: Option<bool>,
    practitioner: Option<RefForm>,
}

fn patient_spec() -> impl Strategy<Value = PatientSpec> {
    (
        (proptest::option::weighted(0.8, 0..FAMILIES.len()), proptest::collection::vec(0..FAMILIES.len(), 0..3)),
        proptest::option::weighted(0.8, 0..GENDERS.len()),
        proptest::option::weighted(0.8, stored_date()),
        proptest::option::weighted(0.7, stored_date_time()),
        proptest::collection::vec((proptest::option::of(0..2usize), 0..2usize), 0..3),
        proptest::option::weighted(0.8, any::<bool>()),
        proptest::option::weighted(0.8, ref_form(vec!["Practitioner", "Organization"])),
    )
        .prop_map(|((family, given), gender, birth, death, identifiers, active, practitioner)| PatientSpec {
            family,
            given,
            gender,
            birth,
            death,
            identifiers,
            active,
            practitioner,
        })
}

fn patient_json(id: &str, spec: &PatientSpec, base: &str) -> Value {
    let mut patient = json!({"resourceType": "Patient", "id": id});
    let mut name = serde_json::Map::new();
    if let Some(family) = spec.family {
        name.insert("family".into(), json!(FAMILIES[family]));
    }
    if !spec.given.is_empty() {
        name.insert("given".into(), spec.given.iter().map(|g| json!(FAMILIES[*g])).collect());
    }
    if !name.is_empty() {
        patient["name"] = json!([name]);
    }
    if let Some(gender) = spec.gender {
        patient["gender"] = json!(GENDERS[gender]);
    }
    if let Some(birth) = &spec.birth {
        patient["birthDate"] = json!(birth.render());
    }
    if let Some(death) = &spec.death {
        patient["deceasedDateTime"] = json!(death.render());
    }
    if !spec.identifiers.is_empty() {
        let identifiers = spec.identifiers.iter().map(|(system, value)| match system {
            Some(system) => json!({"system": SYSTEMS[*system], "value": CODES[*value]}),
            None => json!({"value": CODES[*value]}),
        });
        patient["identifier"] = Value::Array(identifiers.collect());
    }
    if let Some(active) = spec.active {
        patient["active"] = json!(active);
    }
    if let Some(practitioner) = &spec.practitioner {
        patient["generalPractitioner"] = json!([{"reference": practitioner.render(base)}]);
    }
    patient
}

#[derive(Debug, Clone)]
enum Effective {
    At(DateSpec),
    Period(Option<DateSpec>, Option<DateSpec>),
}

#[derive(Debug, Clone)]
struct ObservationSpec {
    code: (Option<usize>, usize),
    subject: Option<RefForm>,
    /// The value, and its unit: 0 none, 1 UCUM code, 2 code without system, 3 human unit only.
    quantity: Option<(usize, u8, usize)>,
    effective: Option<Effective>,
}

const UNITS: [&str; 2] = ["mg", "kg"];

fn observation_spec() -> impl Strategy<Value = ObservationSpec> {
    let effective = prop_oneof![
        stored_date_time().prop_map(Effective::At),
        (proptest::option::of(stored_date_time()), proptest::option::of(stored_date_time()))
            .prop_filter("a Period has a start or an end (ele-1)", |(start, end)| start.is_some() || end.is_some())
            .prop_map(|(start, end)| Effective::Period(start, end)),
    ];
    (
        (proptest::option::of(0..SYSTEMS.len()), 0..CODES.len()),
        proptest::option::weighted(0.8, ref_form(vec!["Patient", "Group"])),
        proptest::option::weighted(0.8, (0..DECIMALS.len(), 0u8..4, 0..UNITS.len())),
        proptest::option::weighted(0.8, effective),
    )
        .prop_map(|(code, subject, quantity, effective)| ObservationSpec { code, subject, quantity, effective })
}

fn observation_json(id: &str, spec: &ObservationSpec, base: &str) -> Value {
    let coding = match spec.code {
        (Some(system), code) => json!({"system": SYSTEMS[system], "code": CODES[code]}),
        (None, code) => json!({"code": CODES[code]}),
    };
    let mut observation =
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"coding": [coding]}});
    if let Some(subject) = &spec.subject {
        observation["subject"] = json!({"reference": subject.render(base)});
    }
    if let Some((value, unit_form, unit)) = spec.quantity {
        let mut quantity = json!({"value": serde_json::from_str::<Value>(DECIMALS[value]).unwrap()});
        match unit_form {
            1 => quantity
                .as_object_mut()
                .unwrap()
                .extend([("system".into(), json!(UCUM)), ("code".into(), json!(UNITS[unit]))]),
            2 => quantity["code"] = json!(UNITS[unit]),
            3 => quantity["unit"] = json!(UNITS[unit]),
            _ => {}
        }
        observation["valueQuantity"] = quantity;
    }
    match &spec.effective {
        Some(Effective::At(at)) => observation["effectiveDateTime"] = json!(at.render()),
        Some(Effective::Period(start, end)) => {
            let (mut start, mut end) = (start.as_ref().map(DateSpec::render), end.as_ref().map(DateSpec::render));
            // per-1: a Period's start is not after its end.
            if let (Some(s), Some(e)) = (&start, &end) {
                if date_range(s).0 > date_range(e).1 - 1 {
                    std::mem::swap(&mut start, &mut end);
                }
            }
            let mut period = json!({});
            if let Some(start) = start {
                period["start"] = json!(start);
            }
            if let Some(end) = end {
                period["end"] = json!(end);
            }
            observation["effectivePeriod"] = period;
        }
        None => {}
    }
    observation
}

/// One query value per parameter, name form, case and cut: a prefix (or, for `:contains`, a
/// middle part) of a name in its precomposed or decomposed form, upper or lower case.
fn family_query() -> impl Strategy<Value = (String, String)> {
    let parameter = proptest::sample::select(vec!["family", "family", "given", "name"]);
    (parameter, 0..FAMILIES.len(), 0..4, 0usize..3, 1usize..8, 0..3)
        .prop_map(|(parameter, family, form, skip, take, modifier)| {
            let text: String = match form {
                0 => FAMILIES[family].to_owned(),
                1 => FAMILIES[family].nfc().collect(),
                2 => FAMILIES[family].nfd().collect(),
                _ => FAMILIES[family].to_uppercase(),
            };
            match modifier {
                0 => (parameter.to_owned(), text.chars().take(take).collect()),
                1 => (format!("{parameter}:exact"), text),
                _ => (format!("{parameter}:contains"), text.chars().skip(skip).take(take).collect()),
            }
        })
        .prop_filter("a non-empty value", |(_, value)| !value.is_empty())
}

fn token_query() -> impl Strategy<Value = String> {
    (proptest::option::of(0..SYSTEMS.len()), 0..CODES.len(), 0..4).prop_map(|(system, code, form)| {
        match (system, form) {
            (Some(system), 0) => format!("{}|", SYSTEMS[system]),
            (Some(system), _) => format!("{}|{}", SYSTEMS[system], escape(CODES[code])),
            (None, 0) => format!("|{}", escape(CODES[code])),
            (None, _) => escape(CODES[code]),
        }
    })
}

fn patient_clause() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        proptest::sample::subsequence(GENDERS.to_vec(), 1..3).prop_map(|g| ("gender".to_owned(), g.join(","))),
        proptest::sample::select(GENDERS.to_vec()).prop_map(|g| ("gender:not".to_owned(), g.to_owned())),
        any::<bool>().prop_map(|b| ("gender:missing".to_owned(), b.to_string())),
        family_query(),
        family_query(),
        query_date().prop_map(|d| ("birthdate".to_owned(), d)),
        query_date().prop_map(|d| ("death-date".to_owned(), d)),
        query_date().prop_map(|d| ("death-date".to_owned(), d)),
        any::<bool>().prop_map(|b| ("death-date:missing".to_owned(), b.to_string())),
        proptest::collection::vec(token_query(), 1..3).prop_map(|t| ("identifier".to_owned(), t.join(","))),
        token_query().prop_map(|t| ("identifier:not".to_owned(), t)),
        any::<bool>().prop_map(|b| ("active".to_owned(), b.to_string())),
        any::<bool>().prop_map(|b| ("active:not".to_owned(), b.to_string())),
        any::<bool>().prop_map(|b| ("family:missing".to_owned(), b.to_string())),
        last_updated_query(),
        token_query().prop_map(|t| ("_has:Observation:subject:code".to_owned(), t)),
        quantity_query().prop_map(|q| ("_has:Observation:subject:value-quantity".to_owned(), q)),
        reference_query(vec!["Practitioner", "Organization"]).prop_map(|r| ("general-practitioner".to_owned(), r)),
        (0u8..3).prop_map(|n| ("general-practitioner:Organization".to_owned(), ref_id("Organization", n))),
    ]
}

fn quantity_query() -> impl Strategy<Value = String> {
    (proptest::sample::select(PREFIXES.map(|(name, _)| name).to_vec()), 0..DECIMALS.len(), 0..4, 0..UNITS.len())
        .prop_map(|(prefix, value, unit_form, unit)| {
            let unit = match unit_form {
                0 | 1 => String::new(),
                2 => format!("||{}", UNITS[unit]),
                _ => format!("|{UCUM}|{}", UNITS[unit]),
            };
            format!("{prefix}{}{unit}", DECIMALS[value])
        })
}

fn observation_clause() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        proptest::collection::vec(token_query(), 1..3).prop_map(|t| ("code".to_owned(), t.join(","))),
        token_query().prop_map(|t| ("code:not".to_owned(), t)),
        reference_query(vec!["Patient", "Group"]).prop_map(|r| ("subject".to_owned(), r)),
        (0u8..3).prop_map(|n| ("subject:Patient".to_owned(), ref_id("Patient", n))),
        any::<bool>().prop_map(|b| ("subject:missing".to_owned(), b.to_string())),
        quantity_query().prop_map(|q| ("value-quantity".to_owned(), q)),
        quantity_query().prop_map(|q| ("value-quantity".to_owned(), q)),
        proptest::collection::vec(quantity_query(), 2..3).prop_map(|q| ("value-quantity".to_owned(), q.join(","))),
        query_date().prop_map(|d| ("date".to_owned(), d)),
        query_date().prop_map(|d| ("date".to_owned(), d)),
        (token_query(), quantity_query()).prop_map(|(t, q)| ("code-value-quantity".to_owned(), format!("{t}${q}"))),
        (token_query(), quantity_query()).prop_map(|(t, q)| ("code-value-quantity".to_owned(), format!("{t}${q}"))),
        any::<bool>().prop_map(|b| ("date:missing".to_owned(), b.to_string())),
        last_updated_query(),
        family_query().prop_map(|(name, value)| (format!("subject:Patient.{name}"), value)),
        proptest::sample::select(GENDERS.to_vec()).prop_map(|g| ("subject:Patient.gender".to_owned(), g.to_owned())),
        query_date().prop_map(|d| ("subject:Patient.death-date".to_owned(), d)),
    ]
}

/// A `_lastUpdated` query value: a prefix, and an instant the server returned earlier in the
/// case (`{instant:k}`, the k-th modulo their number) cut to some precision.
fn last_updated_query() -> impl Strategy<Value = (String, String)> {
    use Precision::*;
    let precision = proptest::sample::select(vec![Fraction, Fraction, Second, Minute, Day]);
    (proptest::sample::select(PREFIXES.map(|(name, _)| name).to_vec()), 0usize..64, precision).prop_map(
        |(prefix, k, precision)| ("_lastUpdated".to_owned(), format!("{prefix}{{instant:{k}:{precision:?}}}")),
    )
}

/// A query value with its run-time parts filled in: `{base}` is the server's base, and
/// `{instant:k:Precision}` an instant from `instants` cut to that precision.
fn resolve(value: &str, base: &str, instants: &[String]) -> String {
    let value = value.replace("{base}", base);
    let Some(start) = value.find("{instant:") else { return value };
    let end = start + value[start..].find('}').expect("a closing brace");
    let (k, precision) = value[start + 9..end].split_once(':').expect("k:precision");
    let instant = match instants.len() {
        0 => "2020-01-01T00:00:00.000Z".to_owned(),
        n => instants[k.parse::<usize>().unwrap() % n].clone(),
    };
    let (date, time) = instant.split_once('T').expect("an instant has a time");
    let zone_at = time.find(['Z', '+', '-']).expect("an instant has a zone");
    let (clock, zone) = time.split_at(zone_at);
    let cut = match precision {
        "Fraction" => instant.clone(),
        "Second" => format!("{date}T{}{zone}", &clock[..8]),
        "Minute" => format!("{date}T{}{zone}", &clock[..5]),
        _ => date.to_owned(),
    };
    format!("{}{cut}{}", &value[..start], &value[end + 1..])
}

#[derive(Debug, Clone)]
enum Op {
    /// `PUT Patient/p{slot}`: creates it, updates it, or brings it back after a delete.
    PutPatient(u8, PatientSpec),
    PutObservation(u8, ObservationSpec),
    Delete(&'static str, u8),
    /// A search, paged `count` at a time. Deferred: only its first page is read now; the rest
    /// later, page by page, by `Continue` (and at the end).
    Search {
        resource_type: &'static str,
        clauses: Vec<(String, String)>,
        count: u8,
        deferred: bool,
        /// Asks for `_total=accurate`.
        total: bool,
    },
    /// The next page of the oldest deferred search still open.
    Continue,
}

const PATIENT_SLOTS: u8 = 6;
const OBSERVATION_SLOTS: u8 = 8;

fn op() -> impl Strategy<Value = Op> {
    let search = |resource_type: &'static str, clause: BoxedStrategy<(String, String)>| {
        let clauses = prop_oneof![
            3 => proptest::collection::vec(clause.clone(), 1..2),
            1 => proptest::collection::vec(clause, 2..4),
        ];
        (clauses, 1u8..4, any::<bool>(), proptest::bool::weighted(0.3)).prop_map(
            move |(clauses, count, deferred, total)| Op::Search { resource_type, clauses, count, deferred, total },
        )
    };
    prop_oneof![
        3 => (0..PATIENT_SLOTS, patient_spec()).prop_map(|(slot, spec)| Op::PutPatient(slot, spec)),
        3 => (0..OBSERVATION_SLOTS, observation_spec()).prop_map(|(slot, spec)| Op::PutObservation(slot, spec)),
        1 => (0..PATIENT_SLOTS).prop_map(|slot| Op::Delete("Patient", slot)),
        1 => (0..OBSERVATION_SLOTS).prop_map(|slot| Op::Delete("Observation", slot)),
        4 => search("Patient", patient_clause().boxed()),
        4 => search("Observation", observation_clause().boxed()),
        2 => Just(Op::Continue),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running a history against the server and the model
// ---------------------------------------------------------------------------------------------

/// The model: every live resource's newest version, by `Type/id`: (versionId, content).
type State = BTreeMap<String, (String, Value)>;

/// A search being read page by page: what it must find (the state when its first page was
/// read), what its pages have shown so far, and the link to the next page.
struct OpenSearch {
    resource_type: &'static str,
    clauses: Vec<(String, String)>,
    /// Writes done since the first page was read.
    writes_since: usize,
    /// Pages read so far.
    pages: usize,
    /// The keys each page showed, in order.
    page_keys: Vec<Vec<String>>,
    /// The `previous` link of the page read last.
    previous: Option<String>,
    description: String,
    expected: BTreeMap<String, (String, Value)>,
    seen: BTreeSet<String>,
    next: Option<String>,
}

/// One server for all cases of a test (starting one per case would leave its worker threads
/// behind); each case deletes what it wrote before the next begins.
fn server() -> &'static (tokio::runtime::Runtime, TestApp) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, TestApp)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let app = runtime.block_on(spawn_app());
        (runtime, app)
    })
}

fn expected_matches(
    state: &State,
    resource_type: &str,
    clauses: &[(String, String)],
    base: &str,
) -> BTreeMap<String, (String, Value)> {
    state
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{resource_type}/")))
        .filter(|(_, (_, resource))| {
            clauses.iter().all(|(name, value)| linked_clause_matches(state, resource, name, value, base))
        })
        .map(|(key, version)| (key.clone(), version.clone()))
        .collect()
}

/// The `Type/id` a stored reference points to on this server: relative, or absolute on the
/// server's own base. References to other servers point nowhere here.
fn local_target(reference: &str, base: &str) -> Option<String> {
    let local = match reference.strip_prefix(base) {
        Some(rest) => rest.strip_prefix('/')?,
        None => reference,
    };
    (!local.contains(':') && local.split('/').count() == 2).then(|| local.to_owned())
}

/// A clause that may follow references through the model's state: a chain
/// (`subject:Patient.family=x`: the subject, a live Patient, has that family) or a reverse
/// chain (`_has:Observation:subject:code=x`: some live Observation whose subject is this
/// resource has that code); any other clause is matched on the resource itself.
fn linked_clause_matches(state: &State, resource: &Value, name: &str, value: &str, base: &str) -> bool {
    if let Some(parameter) = name.strip_prefix("subject:Patient.") {
        let Some(reference) = resource["subject"]["reference"].as_str() else { return false };
        return local_target(reference, base)
            .filter(|target| target.starts_with("Patient/"))
            .and_then(|target| state.get(&target))
            .is_some_and(|(_, patient)| clause_matches(patient, parameter, value, base));
    }
    if let Some(parameter) = name.strip_prefix("_has:Observation:subject:") {
        let me = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        return state.iter().filter(|(key, _)| key.starts_with("Observation/")).any(|(_, (_, observation))| {
            let points_here = observation["subject"]["reference"]
                .as_str()
                .and_then(|reference| local_target(reference, base))
                .is_some_and(|target| target == me);
            points_here && clause_matches(observation, parameter, value, base)
        });
    }
    clause_matches(resource, name, value, base)
}

/// Checks one page of a searchset against the expected matches: every entry a match in the
/// version expected; the total, where given, the number of matches. Returns the entries' keys
/// in order.
fn check_entries(page: &Value, open: &OpenSearch) -> Result<Vec<String>, TestCaseError> {
    prop_assert_eq!(page["resourceType"].as_str(), Some("Bundle"), "{}: {}", open.description, page);
    // A total, where given, counts the matches as of the first page's snapshot.
    if let Some(total) = page["total"].as_u64() {
        prop_assert_eq!(total as usize, open.expected.len(), "{}: total", open.description);
    }
    let mut keys = Vec::new();
    for entry in page["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        let key =
            format!("{}/{}", resource["resourceType"].as_str().unwrap_or("?"), resource["id"].as_str().unwrap_or("?"));
        prop_assert_eq!(entry["search"]["mode"].as_str(), Some("match"), "{}: {}", open.description, entry);
        let Some((version, content)) = open.expected.get(&key) else {
            return Err(TestCaseError::fail(format!(
                "{}: {key} was returned but does not match (expected {:?})",
                open.description,
                open.expected.keys().collect::<Vec<_>>()
            )));
        };
        let found_version = resource["meta"]["versionId"].as_str();
        prop_assert_eq!(found_version, Some(version.as_str()), "{}: {}", open.description, key);
        // The model keeps `meta.lastUpdated` (for `_lastUpdated`); the content is the rest.
        // Nor does it show the master patient index's link to a Patient's golden Patient.
        let without_meta = |resource: &Value| {
            let mut copy = without_golden_link(resource);
            copy.as_object_mut().unwrap().remove("meta");
            copy
        };
        prop_assert_eq!(without_meta(resource), without_meta(content), "{}: content of {}", open.description, key);
        let (found, expected) = (&resource["meta"]["lastUpdated"], &content["meta"]["lastUpdated"]);
        prop_assert_eq!(found, expected, "{}: {}", open.description, key);
        keys.push(key);
    }
    Ok(keys)
}

/// Checks the next page of a search, records what it showed, and returns its `next` link.
fn check_page(page: &Value, open: &mut OpenSearch) -> Result<Option<String>, TestCaseError> {
    let keys = check_entries(page, open)?;
    for key in &keys {
        prop_assert!(open.seen.insert(key.clone()), "{}: {} returned twice", open.description, key);
    }
    open.page_keys.push(keys);
    open.previous = link(page, "previous");
    Ok(link(page, "next"))
}

/// Walks a finished search back from its last page through the `previous` links: each must
/// show the page read before it going forward, and the first page has none.
async fn walk_back(app: &TestApp, open: &OpenSearch) -> Result<(), TestCaseError> {
    let mut previous = open.previous.clone();
    for expected_keys in open.page_keys.iter().rev().skip(1) {
        let Some(url) = previous else {
            return Err(TestCaseError::fail(format!("{}: a later page has no previous link", open.description)));
        };
        let page = get_json(app, &url).await?;
        let keys = check_entries(&page, open)?;
        prop_assert_eq!(&keys, expected_keys, "{}: a previous page", open.description);
        previous = link(&page, "previous");
    }
    prop_assert!(previous.is_none(), "{}: the first page links to a previous one", open.description);
    Ok(())
}

fn check_complete(open: &OpenSearch) -> Result<(), TestCaseError> {
    let expected: BTreeSet<&String> = open.expected.keys().collect();
    let seen: BTreeSet<&String> = open.seen.iter().collect();
    prop_assert_eq!(seen, expected, "{}: the pages together", open.description);
    Ok(())
}

async fn get_json(app: &TestApp, url: &str) -> Result<Value, TestCaseError> {
    let reply = app.send(app.client.get(url)).await;
    prop_assert_eq!(reply.status, 200, "GET {}: {}", url, reply.text);
    Ok(reply.body)
}

async fn next_page(app: &TestApp, open: &mut OpenSearch) -> Result<(), TestCaseError> {
    let Some(url) = open.next.take() else { return Ok(()) };
    let page = get_json(app, &url).await?;
    open.pages += 1;
    open.next = check_page(&page, open)?;
    Ok(())
}

/// What a run exercised, so that the test can show it is not vacuous.
#[derive(Debug, Default)]
struct Coverage {
    searches: usize,
    /// Searches with at least one match.
    non_empty: usize,
    /// Searches read over more than one page.
    paged: usize,
    /// Deferred searches with writes between their first and last page.
    spanning_writes: usize,
    /// Of those, the ones whose answer differed from what the same search finds in the state
    /// when their last page was read: the first page's snapshot really was what was tested.
    stale: usize,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.searches += other.searches;
        self.non_empty += other.non_empty;
        self.paged += other.paged;
        self.spanning_writes += other.spanning_writes;
        self.stale += other.stale;
    }
}

/// Reads the remaining pages of a search, checks that together they showed everything it
/// should, and counts it.
async fn finish(
    app: &TestApp,
    mut search: OpenSearch,
    state: &State,
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    while search.next.is_some() {
        next_page(app, &mut search).await?;
    }
    check_complete(&search)?;
    walk_back(app, &search).await?;
    coverage.searches += 1;
    coverage.non_empty += usize::from(!search.expected.is_empty());
    coverage.paged += usize::from(search.pages > 1);
    if search.writes_since > 0 {
        coverage.spanning_writes += 1;
        let now = expected_matches(state, search.resource_type, &search.clauses, &app.base);
        coverage.stale += usize::from(now != search.expected);
    }
    Ok(())
}

async fn run_history(
    app: &TestApp,
    ops: &[Op],
    state: &mut State,
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    let base = app.base.as_str();
    let mut open: Vec<OpenSearch> = Vec::new();
    // Every `meta.lastUpdated` the server has returned in this case, for `_lastUpdated` queries.
    let mut instants: Vec<String> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::PutPatient(..) | Op::PutObservation(..) => {
                let resource = match op {
                    Op::PutPatient(slot, spec) => patient_json(&format!("p{slot}"), spec, base),
                    Op::PutObservation(slot, spec) => observation_json(&format!("o{slot}"), spec, base),
                    _ => unreachable!(),
                };
                let key =
                    format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
                let reply = app.put(&format!("/{key}"), &resource).await;
                prop_assert!(reply.status == 200 || reply.status == 201, "PUT {}: {}", key, reply.text);
                let version = reply.body["meta"]["versionId"].as_str().expect("a versionId").to_owned();
                let last_updated = reply.body["meta"]["lastUpdated"].as_str().expect("a lastUpdated").to_owned();
                instants.push(last_updated.clone());
                let mut resource = resource;
                resource["meta"] = json!({"lastUpdated": last_updated});
                state.insert(key, (version, resource));
                open.iter_mut().for_each(|search| search.writes_since += 1);
            }
            Op::Delete(resource_type, slot) => {
                let letter = if *resource_type == "Patient" { "p" } else { "o" };
                let key = format!("{resource_type}/{letter}{slot}");
                let reply = app.delete(&format!("/{key}")).await;
                prop_assert!([200, 204].contains(&reply.status), "DELETE {}: {}", key, reply.text);
                state.remove(&key);
                open.iter_mut().for_each(|search| search.writes_since += 1);
            }
            Op::Search { resource_type, clauses, count, deferred, total } => {
                let clauses: Vec<(String, String)> =
                    clauses.iter().map(|(name, value)| (name.clone(), resolve(value, base, &instants))).collect();
                let mut search = OpenSearch {
                    resource_type,
                    description: format!("step {step}: {resource_type}?{clauses:?}&_count={count}"),
                    expected: expected_matches(state, resource_type, &clauses, base),
                    clauses,
                    writes_since: 0,
                    pages: 1,
                    page_keys: Vec::new(),
                    previous: None,
                    seen: BTreeSet::new(),
                    next: None,
                };
                let mut query = search.clauses.clone();
                query.push(("_count".to_owned(), count.to_string()));
                if *total {
                    query.push(("_total".to_owned(), "accurate".to_owned()));
                }
                let request = app.client.get(app.url(&format!("/{resource_type}"))).query(&query);
                let reply = app.send(request).await;
                prop_assert_eq!(reply.status, 200, "{}: {}", search.description, reply.text);
                if *total {
                    prop_assert!(reply.body["total"].is_u64(), "{}: no total in {}", search.description, reply.text);
                }
                search.next = check_page(&reply.body, &mut search)?;
                if *deferred && search.next.is_some() {
                    open.push(search);
                } else {
                    finish(app, search, state, coverage).await?;
                }
            }
            Op::Continue => {
                if let Some(search) = open.first_mut() {
                    next_page(app, search).await?;
                    if search.next.is_none() {
                        finish(app, open.remove(0), state, coverage).await?;
                    }
                }
            }
        }
    }
    for search in open {
        finish(app, search, state, coverage).await?;
    }
    Ok(())
}

/// Deletes every resource the case left, so the next case starts from an empty server.
async fn clean_up(app: &TestApp, state: &mut State) {
    for key in std::mem::take(state).into_keys() {
        let reply = app.delete(&format!("/{key}")).await;
        assert!([200, 204].contains(&reply.status), "DELETE {key}: {}", reply.text);
    }
}

/// The property, run by hand rather than by `proptest!` so that the coverage of the whole
/// run can be checked afterwards. The seed is fixed: every run explores the same histories,
/// and a failure reproduces (and is saved in `tests/proptest-regressions/differential.txt`).
#[test]
fn search_agrees_with_the_reference_evaluator_across_writes() {
    let config = ProptestConfig {
        cases: 160,
        rng_seed: RngSeed::Fixed(0x00b2_a1d0),
        max_shrink_iters: 2000,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let (runtime, app) = server();
    let coverage = RefCell::new(Coverage::default());
    let result = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        runtime.block_on(async {
            let mut state = State::new();
            let mut case_coverage = Coverage::default();
            let result = run_history(app, &ops, &mut state, &mut case_coverage).await;
            clean_up(app, &mut state).await;
            coverage.borrow_mut().add(&case_coverage);
            result
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The histories must have exercised what the test claims: many searches with matches,
    // answers over several pages, and snapshots that later writes made different from the
    // newest state.
    let coverage = coverage.into_inner();
    assert!(coverage.searches > 1000, "{coverage:?}");
    assert!(coverage.non_empty * 4 > coverage.searches, "{coverage:?}");
    assert!(coverage.paged > 100, "{coverage:?}");
    assert!(coverage.stale > 25, "{coverage:?}");
    eprintln!("{coverage:?}");
}

// ---------------------------------------------------------------------------------------------
// The evaluator's own checks, against the spec's examples
// ---------------------------------------------------------------------------------------------

#[test]
fn the_evaluator_follows_the_specs_examples() {
    // Dates: precision makes a range, zones shift it.
    let (lo, hi) = date_range("2013-01-14");
    assert_eq!(hi - lo, 86_400 * NANOS_PER_SECOND);
    assert_eq!(date_range("2013-01-14T10:00:00+02:00").0, date_range("2013-01-14T08:00:00Z").0);
    assert_eq!(date_range("2021").0, date_range("2020-12-31T19:00:00-05:00").0);
    assert_eq!(date_range("2020-02").1, date_range("2020-03").0);
    assert_eq!(date_range("2020-12").1, date_range("2021").0);
    assert_eq!(date_range("2020-02-29T10:00").1 - date_range("2020-02-29T10:00").0, 60 * NANOS_PER_SECOND);
    let (lo, hi) = date_range("2020-02-29T10:00:00.25Z");
    assert_eq!((hi - lo, lo % NANOS_PER_SECOND), (10_000_000, 250_000_000));
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    // The prefix table: 2013-01-14 against the day 2013-01-14 and the year 2013.
    let day = date_range("2013-01-14");
    assert!(ranges_match(Prefix::Eq, date_range("2013"), day));
    assert!(ranges_match(Prefix::Ge, date_range("2013-01-14"), date_range("2013-01-14T10:00:00Z")));
    assert!(!ranges_match(Prefix::Gt, date_range("2013-01-14"), date_range("2013-01-14T10:00:00Z")));
    assert!(ranges_match(Prefix::Gt, date_range("2013-01-14T10:00"), day));
    assert!(ranges_match(Prefix::Lt, date_range("2013-01-14T10:00"), day));
    assert!(!ranges_match(Prefix::Sa, date_range("2013-01-14T10:00"), day));
    assert!(ranges_match(Prefix::Sa, date_range("2013-01-13"), day));
    assert!(ranges_match(Prefix::Eb, date_range("2013-01-15"), day));
    // Numbers: 100 is [99.5, 100.5); gt/lt compare exactly.
    let n = Decimal::parse;
    assert!(number_matches(Prefix::Eq, n("100"), n("99.5")) && !number_matches(Prefix::Eq, n("100"), n("100.5")));
    assert!(
        number_matches(Prefix::Eq, n("100.00"), n("100.004")) && !number_matches(Prefix::Eq, n("100.00"), n("100.005"))
    );
    assert!(number_matches(Prefix::Ne, n("100"), n("100.5")) && number_matches(Prefix::Gt, n("100"), n("100.4")));
    assert!(number_matches(Prefix::Eq, n("-2"), n("-2.5")) && !number_matches(Prefix::Eq, n("-2"), n("-1.5")));
    assert!(number_matches(Prefix::Sa, n("100"), n("100.5")) && !number_matches(Prefix::Sa, n("100"), n("100.4")));
    assert!(number_matches(Prefix::Eb, n("1.50"), n("1.4949")) && !number_matches(Prefix::Eb, n("1.50"), n("1.495")));
    // Strings: case, accents, composition.
    assert_eq!(fold("Nguye\u{302}\u{303}n"), "nguyen");
    assert_eq!(fold("Nguyễn"), "nguyen");
    assert_eq!(fold("ŚMIGŁY"), "smigly");
    assert!(fold("García").starts_with(&fold("GARCI\u{301}")));
    // Tokens and references.
    assert!(token_matches("s|", Some("s"), Some("c")) && !token_matches("|c", Some("s"), Some("c")));
    assert!(token_matches("c", None, Some("c")) && token_matches("|c", None, Some("c")));
    assert!(token_matches(r"s|a\|b", Some("s"), Some("a|b")) && token_matches(r"c\,d\\e", None, Some(r"c,d\e")));
    assert_eq!(split_unescaped(r"a\,b,c", ','), [r"a\,b", "c"]);
    let base = "http://h/fhir";
    assert!(reference_matches("p1", "http://h/fhir/Patient/p1", &["Patient"], base));
    assert!(reference_matches("http://h/fhir/Patient/p1", "Patient/p1", &["Patient"], base));
    assert!(!reference_matches("p1", "http://x/fhir/Patient/p1", &["Patient"], base));
    assert!(!reference_matches("p1", "Group/p1", &["Patient"], base));
}

/// Found by the differential test: `sa` and `eb` on numbers and quantities compared with the
/// value itself, as `gt` and `lt` do, so `eb-2` found -2.5, which lies in -2's implicit range
/// `[-2.5, -1.5)`. The prefix table puts them beyond the whole range.
#[tokio::test]
async fn sa_and_eb_on_quantities_lie_beyond_the_implicit_range() {
    let app = spawn_app().await;
    for (id, value) in [("low", "-2.5"), ("lower", "-2.51"), ("high", "100.4"), ("higher", "100.5")] {
        let observation = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": serde_json::from_str::<Value>(value).unwrap()}});
        assert_eq!(app.put(&format!("/Observation/{id}"), &observation).await.status, 201);
    }
    let ids = |query: &'static str| {
        let app = &app;
        async move {
            let reply = app.get(&format!("/Observation?{query}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let mut ids: Vec<String> = reply.body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| entry["resource"]["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids("value-quantity=eb-2").await, ["lower"]);
    assert_eq!(ids("value-quantity=lt-2").await, ["low", "lower"]);
    assert_eq!(ids("value-quantity=sa100").await, ["higher"]);
    assert_eq!(ids("value-quantity=gt100").await, ["high", "higher"]);
}

/// Found by the differential test: in a composite, a token component `system|` (any code of
/// the system) matched nothing, because it was looked up as the exact value `system|`.
#[tokio::test]
async fn a_composite_token_component_may_name_only_the_system() {
    let app = spawn_app().await;
    for (id, system, value) in [("heart", "http://loinc.org", "5.4"), ("other", "http://snomed.info/sct", "5.4")] {
        let observation = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": system, "code": "x"}]},
            "valueQuantity": {"value": serde_json::from_str::<Value>(value).unwrap(), "system": UCUM, "code": "mg"}});
        assert_eq!(app.put(&format!("/Observation/{id}"), &observation).await.status, 201);
    }
    let ids = |query: &'static str| {
        let app = &app;
        async move {
            let request = app.client.get(app.url("/Observation")).query(&[("code-value-quantity", query)]);
            let reply = app.send(request).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let mut ids: Vec<String> = reply.body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| entry["resource"]["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids("http://loinc.org|$5.4").await, ["heart"]);
    assert_eq!(ids("http://loinc.org|$gt6").await, Vec::<String>::new());
    assert_eq!(ids("x$5.4||mg").await, ["heart", "other"]);
    assert_eq!(ids("http://snomed.info/sct|x$5.4").await, ["other"]);
}
