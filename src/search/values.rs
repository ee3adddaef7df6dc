//! Index values: how each search parameter type turns the elements its expression selects
//! into the byte strings stored in `search_param_value`, and how query values are encoded for
//! comparison with them. Encodings keep byte order equal to the order searches need:
//!
//! | type | entry (param key → value bytes) |
//! |---|---|
//! | string | `p` → normalised text (NFKD, lower case, combining marks removed); `p:exact` → the text as is |
//! | token | `p` → `code · 0x00 · system` (the system empty when there is none, one byte for a common one, see [`push_system`]; an identifier with a system and no value is `0x00 · system`); `p:text` → normalised display/text; `p:of-type` → `typeSystem\|typeCode\|value` |
//! | date | `p` → range start · range end, each 8 bytes (microseconds, sign-flipped big-endian); ranges wider than [`NARROW_DATE_WIDTH`] also `p:end` → range end · range start |
//! | number | `p` → order-preserving 8-byte float |
//! | quantity | `p` → order-preserving float · system (written as for tokens) · 0x00 · code · 0x00 · unit (one entry per quantity: the number leads, so every search scans a number range and checks the units on the rest; the unit is left empty when it equals the code) |
//! | reference | `p` → `Type/id` (relative) or the absolute/canonical URL as written; `p:identifier` → the token value of `Reference.identifier` |
//! | uri | `p` → the URI as is |
//! | composite | `p` → component values joined by 0x00 0x00 |
//!
//! Textual values (strings, tokens, URIs, references, quantity units) are indexed on their first
//! [`MAX_INDEXED_BYTES`] bytes only; query values are cut the same way, so a value longer than
//! that is matched on its prefix (the resource itself is stored whole).

use serde_json::Value;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::fhirpath::Item;
use super::registry::{ParamDef, ParamKind};
use crate::store::IndexEntry;

/// The longest textual index value, in bytes. Longer values are cut (at a character boundary),
/// on write and in queries alike: an over-long value costs no more index space or write time
/// than one of this length, and still matches prefix searches and, on its first bytes, exact ones.
pub const MAX_INDEXED_BYTES: usize = 512;

/// `value` cut to at most [`MAX_INDEXED_BYTES`], never inside a UTF-8 character.
pub fn bounded(mut value: Vec<u8>) -> Vec<u8> {
    if value.len() > MAX_INDEXED_BYTES {
        let mut end = MAX_INDEXED_BYTES;
        while end > 0 && value[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// The index entries of one parameter for one resource.
pub fn entries(def: &ParamDef, resource: &Value) -> Vec<IndexEntry> {
    let items = def.expression.evaluate(resource);
    let mut out = Vec::new();
    if def.kind == ParamKind::Composite {
        for item in &items {
            let Item::Json(value, _) = item else { continue };
            let mut combinations: Vec<Vec<u8>> = vec![Vec::new()];
            for (position, component) in def.components.iter().enumerate() {
                let sub = component.expression.evaluate_on(value);
                let values: Vec<Vec<u8>> = sub
                    .iter()
                    .flat_map(|i| values_of(component.kind, i))
                    .filter(|(suffix, _)| suffix.is_empty())
                    .map(|(_, v)| v)
                    .collect();
                combinations = combinations
                    .iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |v| {
                            let mut joined = prefix.clone();
                            if position > 0 {
                                joined.extend_from_slice(&[0, 0]);
                            }
                            joined.extend_from_slice(v);
                            joined
                        })
                    })
                    .collect();
            }
            if def.components.len() > 1 {
                out.extend(combinations.into_iter().map(|value| IndexEntry { param: def.code.clone(), value }));
            }
        }
        return out;
    }
    for item in &items {
        for (suffix, value) in values_of(def.kind, item) {
            out.push(IndexEntry { param: format!("{}{suffix}", def.code), value });
        }
    }
    out
}

/// `(param key suffix, value bytes)` pairs for one selected element.
fn values_of(kind: ParamKind, item: &Item<'_>) -> Vec<(&'static str, Vec<u8>)> {
    let value = match item {
        Item::Json(value, _) => *value,
        Item::Bool(b) => {
            return if kind == ParamKind::Token { vec![("", b.to_string().into_bytes())] } else { Vec::new() };
        }
        _ => return Vec::new(),
    };
    let textual = match kind {
        ParamKind::String => string_values(value),
        ParamKind::Token => token_values(value),
        ParamKind::Reference => reference_values(value),
        ParamKind::Uri => value.as_str().map(|s| vec![("", s.as_bytes().to_vec())]).unwrap_or_default(),
        _ => Vec::new(),
    };
    if !textual.is_empty() {
        return textual.into_iter().map(|(suffix, bytes)| (suffix, bounded(bytes))).collect();
    }
    match kind {
        ParamKind::String | ParamKind::Token | ParamKind::Reference | ParamKind::Uri => Vec::new(),
        ParamKind::Date => date_range(value).map(|(lo, hi)| date_values(lo, hi)).unwrap_or_default(),
        ParamKind::Number => number_of(value).map(|n| vec![("", encode_f64(n).to_vec())]).unwrap_or_default(),
        ParamKind::Quantity => quantity_values(value),
        ParamKind::Composite | ParamKind::Special => Vec::new(),
    }
}

/// Lower case with accents and other combining marks removed, whitespace collapsed: the form
/// string search compares ("Müller" and "muller" match, as do "Nguyễn" and "nguyen").
///
/// Compatibility decomposition (NFKD) splits every precomposed letter into its base letter and
/// combining marks, so a decomposed query (`Garci\u{301}a`) and a precomposed value
/// (`García`) meet in the same form; the marks are then dropped. Lower-casing comes before
/// the marks are dropped because it can itself produce marks (`İ` lower-cases to `i` and a
/// combining dot). The few Latin letters that have no decomposition (`ø`, `ł`, `đ`, `ß`, ...)
/// are folded by [`fold_undecomposable`].
pub fn normalize(text: &str) -> String {
    normalize_prefix(text, usize::MAX)
}

/// The normalised form of `text`, or a prefix of it longer than `min_bytes`: the work stops
/// once enough is known, so a megabyte-long name costs no more to index than a short one.
/// Invariant: the result is a prefix of `normalize(text)` (it stops only after a non-space
/// character, so a trailing space that `normalize` would trim is never kept).
fn normalize_prefix(text: &str, min_bytes: usize) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let mut out = String::with_capacity(text.len().min(min_bytes.saturating_add(8)));
    let mut last_space = true;
    for c in text.nfkd().flat_map(char::to_lowercase).nfkd().filter(|c| !is_combining_mark(*c)) {
        if c.is_whitespace() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            match fold_undecomposable(c) {
                Some(folded) => out.push_str(folded),
                None => out.push(c),
            }
            last_space = false;
            if out.len() > min_bytes {
                return out;
            }
        }
    }
    out.trim_end().to_owned()
}

/// Lower-case Latin letters that Unicode does not decompose into a base letter and a mark,
/// spelled the way their languages write them without diacritics.
fn fold_undecomposable(c: char) -> Option<&'static str> {
    Some(match c {
        'ø' => "o",
        'ł' => "l",
        'đ' | 'ð' => "d",
        'ħ' => "h",
        'ı' => "i",
        'ŧ' => "t",
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'þ' => "th",
        _ => return None,
    })
}

fn string_values(value: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let mut texts: Vec<&str> = Vec::new();
    match value {
        Value::String(s) => texts.push(s),
        Value::Object(map) => {
            // HumanName and Address: every textual part is searchable.
            for key in ["text", "family", "city", "district", "state", "postalCode", "country"] {
                if let Some(s) = map.get(key).and_then(Value::as_str) {
                    texts.push(s);
                }
            }
            for key in ["given", "prefix", "suffix", "line"] {
                if let Some(items) = map.get(key).and_then(Value::as_array) {
                    texts.extend(items.iter().filter_map(Value::as_str));
                }
            }
        }
        _ => {}
    }
    texts
        .into_iter()
        .flat_map(|text| {
            let exact = &text.as_bytes()[..text.len().min(MAX_INDEXED_BYTES + 4)];
            [("", normalize_prefix(text, MAX_INDEXED_BYTES).into_bytes()), (":exact", exact.to_vec())]
        })
        .collect()
}

/// One entry per code: `code 0x00 system`, with an empty system when there is none. Code first,
/// so that every query form is one range: a plain `code` is the prefix `code 0x00` (any system
/// or none), `system|code` and `|code` are exact values, and only `system|` (any code of a
/// system) has to scan the parameter (see `query::token`). Codes and systems are text and never
/// contain 0x00 (control characters are refused on input), so the separator is unambiguous.
fn token_forms(system: Option<&str>, code: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("", token_value(code, system.unwrap_or("")))]
}

/// The index value of a token: `code 0x00 system`, the system as [`push_system`] writes it.
pub fn token_value(code: &str, system: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(code.len() + 1 + system.len());
    value.extend_from_slice(code.as_bytes());
    value.push(0);
    push_system(&mut value, system);
    value
}

/// Code systems that index values name by one byte (0x01 for the first) instead of their URL:
/// the systems of most codes, quantities and identifiers in clinical data, which would
/// otherwise be repeated in full in every token entry (in its key and in its version's record).
/// Part of the file format: any change to the list, even an addition, changes how some system
/// is written, so it needs a format step that rebuilds the index.
const SYSTEM_NAMES: [&str; 16] = [
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://unitsofmeasure.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/cvx",
    "http://hl7.org/fhir/sid/us-ssn",
    "http://hl7.org/fhir/sid/us-npi",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-10",
    "urn:ietf:bcp:47",
    "urn:iso:std:iso:3166",
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://terminology.hl7.org/CodeSystem/v2-0203",
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
];

/// URL beginnings named by one byte (after those of [`SYSTEM_NAMES`]), followed by the rest of
/// the URL. Also part of the file format; the longest that fits is used.
const SYSTEM_PREFIXES: [&str; 6] = [
    "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/",
    "https://bluebutton.cms.gov/resources/",
    "urn:oid:",
    "http://",
    "https://",
];

/// Marks a system written as it is although it begins with a byte below 0x20 (which no valid
/// FHIR string does, but a search value might): it cannot then be read as a short name.
const VERBATIM_SYSTEM: u8 = 0x1F;

/// Writes `system` as index values store it: one byte for a name of [`SYSTEM_NAMES`], else one
/// byte for the longest prefix of [`SYSTEM_PREFIXES`] and the rest, else the URL itself. The
/// encoding is a function of the URL alone, so equal systems have equal bytes (exact and
/// suffix matches hold); it is not ordered like the URLs, which no search needs.
pub fn push_system(out: &mut Vec<u8>, system: &str) {
    if system.is_empty() {
        return;
    }
    if let Some(index) = SYSTEM_NAMES.iter().position(|name| *name == system) {
        out.push(1 + index as u8);
        return;
    }
    let prefix = SYSTEM_PREFIXES
        .iter()
        .enumerate()
        .filter(|(_, prefix)| system.starts_with(**prefix))
        .max_by_key(|(_, prefix)| prefix.len());
    match prefix {
        Some((index, prefix)) => {
            out.push(1 + (SYSTEM_NAMES.len() + index) as u8);
            out.extend_from_slice(&system.as_bytes()[prefix.len()..]);
        }
        None => {
            if system.as_bytes()[0] < 0x20 {
                out.push(VERBATIM_SYSTEM);
            }
            out.extend_from_slice(system.as_bytes());
        }
    }
}

/// The system of a quantity value or query: [`push_system`]'s bytes, cut like every textual
/// index value.
pub fn quantity_system(system: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_system(&mut out, system);
    bounded(out)
}

/// The system URL of bytes written by [`push_system`] (tests read index values back with it).
#[cfg(test)]
pub fn decode_system(bytes: &[u8]) -> Option<String> {
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
    let Some((&first, rest)) = bytes.split_first() else { return Some(String::new()) };
    match first {
        VERBATIM_SYSTEM => text(rest),
        0x01..0x20 => {
            let index = usize::from(first - 1);
            match SYSTEM_NAMES.get(index) {
                Some(name) if rest.is_empty() => Some((*name).to_owned()),
                Some(_) => None,
                None => Some(format!("{}{}", SYSTEM_PREFIXES.get(index - SYSTEM_NAMES.len())?, text(rest)?)),
            }
        }
        _ => text(bytes),
    }
}

fn token_values(value: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let text = |s: &str| (":text", normalize(s).into_bytes());
    match value {
        Value::String(code) => token_forms(None, code),
        Value::Bool(b) => token_forms(None, &b.to_string()),
        Value::Object(map) => {
            let mut out = Vec::new();
            let system = map.get("system").and_then(Value::as_str);
            let concept = map.contains_key("coding") || !(map.contains_key("code") || map.contains_key("value"));
            if concept && (map.contains_key("coding") || map.contains_key("text")) {
                // CodeableConcept, also one with only text (searchable by `:text`)
                for coding in map.get("coding").and_then(Value::as_array).into_iter().flatten() {
                    out.extend(token_values(coding));
                }
                if let Some(t) = map.get("text").and_then(Value::as_str) {
                    out.push(text(t));
                }
            } else if let Some(code) = map.get("code").and_then(Value::as_str) {
                // Coding
                out.extend(token_forms(system, code));
                if let Some(display) = map.get("display").and_then(Value::as_str) {
                    out.push(text(display));
                }
            } else if let Some(id_value) = map.get("value").and_then(Value::as_str) {
                // Identifier or ContactPoint
                out.extend(token_forms(system, id_value));
                if let Some(kind) = map.get("type") {
                    for coding in kind.get("coding").and_then(Value::as_array).into_iter().flatten() {
                        let type_system = coding.get("system").and_then(Value::as_str).unwrap_or("");
                        if let Some(type_code) = coding.get("code").and_then(Value::as_str) {
                            out.push((":of-type", format!("{type_system}|{type_code}|{id_value}").into_bytes()));
                        }
                    }
                    if let Some(t) = kind.get("text").and_then(Value::as_str) {
                        out.push(text(t));
                    }
                }
            } else if let Some(system) = system {
                // An identifier with a system and no value still matches `system|`.
                out.push(("", token_value("", system)));
            }
            out
        }
        _ => Vec::new(),
    }
}

fn quantity_values(value: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let Some(number) = value.get("value").and_then(number_of) else { return Vec::new() };
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    let code = text("code").or_else(|| text("currency")).unwrap_or_default();
    // `number||unit` matches the code or the human-readable unit (`lb` for `[lb_av]`); a unit
    // equal to the code would only repeat it.
    let unit = text("unit").filter(|unit| *unit != code).unwrap_or_default();
    vec![("", quantity_key(number, &QuantityUnits { system: text("system").unwrap_or_default(), code, unit }))]
}

/// Bytes of the number that starts every quantity value.
pub const QUANTITY_NUMBER_BYTES: usize = 8;

/// The units a stored quantity carries; empty strings where it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantityUnits<'a> {
    pub system: &'a str,
    pub code: &'a str,
    pub unit: &'a str,
}

/// A quantity's index value: the number, then its system (as [`push_system`] writes it), code
/// and human-readable unit, each cut to [`MAX_INDEXED_BYTES`] and separated by 0x00 (a FHIR
/// string holds no 0x00).
pub fn quantity_key(number: f64, units: &QuantityUnits) -> Vec<u8> {
    let mut key = encode_f64(number).to_vec();
    key.extend_from_slice(&quantity_system(units.system));
    for part in [units.code, units.unit] {
        key.push(0);
        key.extend_from_slice(&bounded(part.as_bytes().to_vec()));
    }
    key
}

/// The number bytes and the units of a quantity value ([`quantity_key`]'s inverse).
pub fn decode_quantity(value: &[u8]) -> Option<(&[u8], [&[u8]; 3])> {
    if value.len() < QUANTITY_NUMBER_BYTES {
        return None;
    }
    let (number, rest) = value.split_at(QUANTITY_NUMBER_BYTES);
    let mut parts = rest.splitn(3, |byte| *byte == 0);
    let units = [parts.next()?, parts.next()?, parts.next()?];
    Some((number, units))
}

fn reference_values(value: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    match value {
        // canonical and uri elements used as references
        Value::String(url) => out.push(("", url.as_bytes().to_vec())),
        Value::Object(map) => {
            if let Some(reference) = map.get("reference").and_then(Value::as_str) {
                let plain = crate::fhir::reference::without_version(reference);
                out.push(("", plain.as_bytes().to_vec()));
            }
            if let Some(identifier) = map.get("identifier") {
                out.extend(
                    token_values(identifier)
                        .into_iter()
                        .filter(|(suffix, _)| suffix.is_empty())
                        .map(|(_, v)| (":identifier", v)),
                );
            }
        }
        _ => {}
    }
    out
}

pub fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An 8-byte encoding of `value` whose byte order is numeric order.
pub fn encode_f64(value: f64) -> [u8; 8] {
    // -0 equals 0: one encoding, so that scans bounded at 0 find both.
    let value = if value == 0.0 { 0.0 } else { value };
    let bits = value.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    ordered.to_be_bytes()
}

pub fn decode_f64(bytes: &[u8]) -> Option<f64> {
    let ordered = u64::from_be_bytes(bytes.try_into().ok()?);
    let bits = if ordered >> 63 == 1 { ordered & !(1 << 63) } else { !ordered };
    Some(f64::from_bits(bits))
}

pub fn encode_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn decode_i64(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// The widest date range (end minus start, in microseconds) indexed only by its start: one
/// day, so instants, dateTimes and dates are; months, years, and most periods are wider.
///
/// Why: `gt`, `ge` (and `_sort` by end) need the values whose *end* is after some moment, but
/// `p` is ordered by start. A narrow value ends at most this long after it starts, so its
/// start is at most this long before the moment: the scan of `p` can begin there. Wide values
/// can start arbitrarily early, so they are also indexed under `p:end` ordered by their end,
/// which the engine scans for them. Part of the index format: changing it needs a reindex.
pub const NARROW_DATE_WIDTH: i64 = 86_400_000_000;

/// The suffix of the end-ordered key of a date parameter (`date:end`).
pub const DATE_END_SUFFIX: &str = ":end";

/// Whether a date range `[lo, hi]` is wider than [`NARROW_DATE_WIDTH`] (and so also has an
/// end-ordered entry).
pub fn is_wide(lo: i64, hi: i64) -> bool {
    i128::from(hi) - i128::from(lo) > i128::from(NARROW_DATE_WIDTH)
}

/// The index values of one date range: `start·end` under the parameter's key, and for wide
/// ranges `end·start` under its `:end` key (see [`NARROW_DATE_WIDTH`]).
fn date_values(lo: i64, hi: i64) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![("", encode_range(lo, hi))];
    if is_wide(lo, hi) {
        out.push((DATE_END_SUFFIX, encode_range(hi, lo)));
    }
    out
}

/// The end-ordered entry that goes with a stored `start·end` value of a date parameter of
/// `resource_type`, when the range is wide (for files indexed before that entry existed).
pub fn derived_entry(resource_type: crate::fhir::ResourceType, param: &str, value: &[u8]) -> Option<IndexEntry> {
    let def = super::registry::registry().get(resource_type, param)?;
    if def.kind != ParamKind::Date || def.code != param {
        return None;
    }
    let (lo, hi) = decode_range(value)?;
    is_wide(lo, hi).then(|| IndexEntry { param: format!("{param}{DATE_END_SUFFIX}"), value: encode_range(hi, lo) })
}

pub fn encode_range(lo: i64, hi: i64) -> Vec<u8> {
    let mut out = encode_i64(lo).to_vec();
    out.extend_from_slice(&encode_i64(hi));
    out
}

pub fn decode_range(bytes: &[u8]) -> Option<(i64, i64)> {
    if bytes.len() != 16 {
        return None;
    }
    Some((decode_i64(&bytes[..8])?, decode_i64(&bytes[8..])?))
}

/// The time range an element covers, in microseconds since the epoch, both ends inclusive:
/// a date, dateTime or instant covers its whole precision (`2024` is the whole year); a Period
/// runs from its start to its end (open ends are unbounded).
pub fn date_range(value: &Value) -> Option<(i64, i64)> {
    match value {
        Value::String(text) => parse_date_range(text),
        Value::Object(map) if map.contains_key("start") || map.contains_key("end") => {
            let lo = map.get("start").and_then(Value::as_str).and_then(parse_date_range).map_or(i64::MIN, |r| r.0);
            let hi = map.get("end").and_then(Value::as_str).and_then(parse_date_range).map_or(i64::MAX, |r| r.1);
            Some((lo, hi))
        }
        Value::Object(map) => {
            // Timing: the span of its events.
            let events: Vec<(i64, i64)> = map
                .get("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .filter_map(parse_date_range)
                .collect();
            let lo = events.iter().map(|r| r.0).min()?;
            let hi = events.iter().map(|r| r.1).max()?;
            Some((lo, hi))
        }
        _ => None,
    }
}

/// Parses a FHIR date, dateTime or instant (any precision, with or without zone; no zone means
/// UTC) into the inclusive range of microseconds it denotes.
pub fn parse_date_range(text: &str) -> Option<(i64, i64)> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year: i32 = fields.next()?.parse().ok().filter(|_| date_part.len() >= 4)?;
    let month: Option<u8> = fields.next().map(|m| m.parse().ok()).unwrap_or(None);
    let day: Option<u8> = fields.next().map(|d| d.parse().ok()).unwrap_or(None);
    let micros = |dt: OffsetDateTime| i64::try_from(dt.unix_timestamp_nanos() / 1000).ok();
    let start_of = |y: i32, m: u8, d: u8| -> Option<OffsetDateTime> {
        Some(
            PrimitiveDateTime::new(Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?, Time::MIDNIGHT)
                .assume_utc(),
        )
    };
    match (month, day, time_part) {
        (None, _, _) => {
            let lo = micros(start_of(year, 1, 1)?)?;
            Some((lo, micros(start_of(year + 1, 1, 1)?)? - 1))
        }
        (Some(m), None, _) => {
            let lo = micros(start_of(year, m, 1)?)?;
            let (ny, nm) = if m == 12 { (year + 1, 1) } else { (year, m + 1) };
            Some((lo, micros(start_of(ny, nm, 1)?)? - 1))
        }
        (Some(m), Some(d), None) => {
            let lo = micros(start_of(year, m, d)?)?;
            Some((lo, lo + 86_400_000_000 - 1))
        }
        (Some(m), Some(d), Some(time_text)) => {
            // Split off the zone: Z, +hh:mm or -hh:mm.
            let (clock, offset) = if let Some(clock) = time_text.strip_suffix('Z') {
                (clock, UtcOffset::UTC)
            } else if let Some(position) = time_text.rfind(['+', '-']) {
                let (clock, zone) = time_text.split_at(position);
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (h, mi) = zone[1..].split_once(':')?;
                (clock, UtcOffset::from_hms(sign * h.parse::<i8>().ok()?, sign * mi.parse::<i8>().ok()?, 0).ok()?)
            } else {
                (time_text, UtcOffset::UTC)
            };
            let mut parts = clock.split(':');
            let hour: u8 = parts.next()?.parse().ok()?;
            let minute: u8 = parts.next()?.parse().ok()?;
            let (second_text, precision_micros) = match parts.next() {
                None => ("0", 60_000_000),
                Some(s) => match s.split_once('.') {
                    None => (s, 1_000_000),
                    Some((whole, fraction)) => {
                        let digits = fraction.len().min(6) as u32;
                        (whole, 10i64.pow(6 - digits))
                    }
                },
            };
            let second: u8 = second_text.parse().ok()?;
            let fraction_micros: i64 = clock
                .split_once('.')
                .map(|(_, f)| {
                    let digits: String = f.chars().take(6).collect();
                    digits.parse::<i64>().unwrap_or(0) * 10i64.pow(6 - digits.len() as u32)
                })
                .unwrap_or(0);
            let date = Date::from_calendar_date(year, Month::try_from(m).ok()?, d).ok()?;
            let local = PrimitiveDateTime::new(date, Time::from_hms(hour, minute, second.min(59)).ok()?);
            let lo = micros(local.assume_offset(offset))? + fraction_micros;
            Some((lo, lo + precision_micros - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_systems_take_one_byte_and_every_system_reads_back() {
        let written = |system: &str| {
            let mut out = Vec::new();
            push_system(&mut out, system);
            out
        };
        assert_eq!(written("http://loinc.org"), [0x01]);
        assert_eq!(written("http://terminology.hl7.org/CodeSystem/v3-ActCode"), [16]);
        // A prefix: its byte, then the rest of the URL.
        assert_eq!(written("http://terminology.hl7.org/CodeSystem/claim-type"), b"\x11claim-type");
        assert_eq!(written("http://acme.org/codes"), b"\x15acme.org/codes");
        assert_eq!(written("urn:bench"), b"urn:bench");
        assert_eq!(written(""), b"");
        // A search value that begins with a control byte cannot pass for a short name.
        assert_eq!(written("\x01"), b"\x1f\x01");
        for system in [
            "http://loinc.org",
            "http://loinc.org/x",
            "http://snomed.info/sct",
            "http://terminology.hl7.org/CodeSystem/observation-category",
            "http://terminology.hl7.org/CodeSystem/",
            "https://bluebutton.cms.gov/resources/codesystem/adjudication",
            "urn:oid:2.16.840.1.113883.6.238",
            "urn:bench",
            "\x01",
            "",
        ] {
            assert_eq!(decode_system(&written(system)).as_deref(), Some(system), "{system}");
        }
        let distinct: std::collections::HashSet<Vec<u8>> =
            ["http://loinc.org", "http://loinc.org/", "http://", "https://", "http://x", "x"].map(written).into();
        assert_eq!(distinct.len(), 6, "different systems are written differently");
    }

    #[test]
    fn strings_normalise_case_and_accents() {
        assert_eq!(normalize("  Müller-Lüdenscheidt  "), "muller-ludenscheidt");
        assert_eq!(normalize("ÉLODIE\tDu  Pont"), "elodie du pont");
    }

    #[test]
    fn strings_normalise_any_script_and_composition() {
        // Decomposed and precomposed forms meet.
        assert_eq!(normalize("Garci\u{301}a"), "garcia");
        assert_eq!(normalize("García"), "garcia");
        // Letters outside Latin-1, with stacked marks.
        assert_eq!(normalize("Nguyễn"), "nguyen");
        assert_eq!(normalize("Ōtani"), "otani");
        assert_eq!(normalize("Đặng Ørsted Łukasz Straße"), "dang orsted lukasz strasse");
        assert_eq!(normalize("İSTANBUL"), "istanbul");
        // Compatibility forms: ligatures and full-width letters.
        assert_eq!(normalize("ﬁnn ＡＢＣ"), "finn abc");
        // Non-Latin scripts keep their letters (only their marks go).
        assert_eq!(normalize("Ἀθῆναι"), "αθηναι");
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_and_normalised_lazily() {
        let long = "é".repeat(400); // 800 bytes
        let cut = bounded(long.clone().into_bytes());
        assert_eq!(cut.len(), MAX_INDEXED_BYTES);
        assert!(String::from_utf8(cut).is_ok());
        let odd = format!("a{long}");
        let cut = bounded(odd.into_bytes());
        assert_eq!(cut.len(), MAX_INDEXED_BYTES - 1, "a character is never split");
        let text = format!("{}   Tail", "Ab ".repeat(300));
        let prefix = normalize_prefix(&text, MAX_INDEXED_BYTES);
        assert!(prefix.len() > MAX_INDEXED_BYTES && prefix.len() < MAX_INDEXED_BYTES + 4);
        assert!(normalize(&text).starts_with(&prefix));
        assert_eq!(bounded(prefix.into_bytes()), bounded(normalize(&text).into_bytes()));
    }

    #[test]
    fn date_precision_becomes_a_range() {
        let year = parse_date_range("2024").unwrap();
        assert_eq!(year.0, parse_date_range("2024-01-01T00:00:00Z").unwrap().0);
        assert_eq!(year.1 + 1, parse_date_range("2025").unwrap().0);
        let day = parse_date_range("2024-02-29").unwrap();
        assert_eq!(day.1 - day.0 + 1, 86_400_000_000);
        let zoned = parse_date_range("2024-03-01T10:00:00+02:00").unwrap();
        assert_eq!(zoned.0, parse_date_range("2024-03-01T08:00:00Z").unwrap().0);
        let minute = parse_date_range("2024-03-01T10:00Z").unwrap();
        assert_eq!(minute.1 - minute.0 + 1, 60_000_000);
        let millis = parse_date_range("2024-03-01T10:00:00.250Z").unwrap();
        assert_eq!(millis.1 - millis.0 + 1, 1000);
        assert!(parse_date_range("2024-13").is_none());
        assert!(parse_date_range("24").is_none());
    }

    #[test]
    fn number_encodings_sort_numerically() {
        let values = [-1e9, -2.5, -0.0, 0.0, 1e-9, 3.0, 7e12];
        for pair in values.windows(2) {
            assert!(encode_f64(pair[0]) <= encode_f64(pair[1]), "{pair:?}");
            assert_eq!(decode_f64(&encode_f64(pair[0])), Some(pair[0]));
        }
        assert!(encode_i64(-5) < encode_i64(3));
        assert_eq!(decode_range(&encode_range(-7, 9)), Some((-7, 9)));
    }
}
