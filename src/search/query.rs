//! Parsing a search query into clauses the engine can run.
//!
//! A clause is one parameter occurrence (`code=a,b`): the index key it reads (`code`,
//! `family:exact`, ...), whether it is negated (`:not`, `:missing=true`), and its alternatives
//! (the comma-separated values, OR'ed). Each alternative is a [`Pred`] on the raw index value
//! bytes and, where the index order allows, the byte range `[lo, hi)` holding every value the
//! predicate can accept, which is what lets the engine scan instead of filter.

use std::sync::Arc;

use super::registry::{ParamDef, ParamKind, registry};
use super::values::{self, decode_f64, decode_range, encode_f64, encode_i64, normalize, parse_date_range};
use crate::fhir::{FhirError, IssueCode, ResourceType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A predicate on one raw index value.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    Equals(Vec<u8>),
    StartsWith(Vec<u8>),
    Contains(Vec<u8>),
    /// Date ranges: the query's own range and prefix.
    Date {
        prefix: Prefix,
        lo: i64,
        hi: i64,
    },
    /// Numbers: the query value and the half-width of its implicit precision.
    Number {
        prefix: Prefix,
        value: f64,
        half: f64,
    },
    /// Quantities: the unit key, then a number predicate on the rest.
    Quantity {
        unit: Vec<u8>,
        number: Box<Pred>,
    },
    /// Composites: exact leading components, then a predicate on the last one.
    Composite {
        head: Vec<u8>,
        tail: Box<Pred>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    /// The index key this alternative reads, when it differs from the clause's (alias
    /// parameters such as `combo-code` read the keys of the parameters they unite).
    pub key: Option<String>,
    pub pred: Pred,
    /// Every value the predicate accepts lies in `[lo, hi)` (`hi` `None`: unbounded).
    pub lo: Vec<u8>,
    pub hi: Option<Vec<u8>>,
}

/// `(index key, lo, hi)`: the raw values `lo <= v < hi` of one index key (`hi` `None`: no
/// upper bound).
pub type ScanRange = (String, Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Clone)]
pub struct Clause {
    pub def: Arc<ParamDef>,
    /// The parameter as written, with its modifier (`family:exact`), for messages and links.
    pub written: String,
    /// The index key the clause reads (`family:exact`, `code:text`, `subject`).
    pub key: String,
    /// `:not` or `:missing=true`: the resource matches when no value matches.
    pub negated: bool,
    /// `:missing`: presence is tested, `alternatives` is empty.
    pub missing: Option<bool>,
    /// Further keys read by `:missing` on an alias parameter (which unites several keys).
    pub also_keys: Vec<String>,
    pub alternatives: Vec<Alternative>,
}

impl Clause {
    /// Whether one of a resource's values for `key` satisfies an alternative.
    pub fn accepts(&self, value: &[u8]) -> bool {
        self.alternatives.iter().any(|alternative| alternative.pred.accepts(value))
    }

    /// The index key alternative `index` reads.
    pub fn key_of(&self, index: usize) -> &str {
        self.alternatives.get(index).and_then(|a| a.key.as_deref()).unwrap_or(&self.key)
    }

    /// Every index key the clause reads, without duplicates.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys = vec![self.key.as_str()];
        for key in &self.also_keys {
            if !keys.contains(&key.as_str()) {
                keys.push(key);
            }
        }
        for alternative in &self.alternatives {
            if let Some(key) = &alternative.key {
                if !keys.contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// Whether a resource whose values for each of [`Clause::keys`] are `values(key)` matches.
    pub fn matches_keys<'v>(&self, values: &dyn Fn(&str) -> &'v [Vec<u8>]) -> bool {
        match self.missing {
            Some(missing) => self.keys().iter().all(|key| values(key).is_empty()) == missing,
            None => {
                let hit =
                    self.alternatives.iter().enumerate().any(|(index, alternative)| {
                        values(self.key_of(index)).iter().any(|v| alternative.pred.accepts(v))
                    });
                hit != self.negated
            }
        }
    }

    /// Whether a resource with these values for `key` matches the clause (single-key clauses).
    pub fn matches(&self, values: &[Vec<u8>]) -> bool {
        self.matches_keys(&|_| values)
    }

    /// Whether the engine can drive a search by scanning this clause's ranges.
    pub fn scannable(&self) -> bool {
        !self.negated && (self.missing == Some(false) || (self.missing.is_none() && !self.alternatives.is_empty()))
    }

    /// The ranges to scan, each with the key it reads: one per alternative, or each key whole
    /// for `:missing=false`.
    pub fn ranges(&self) -> Vec<ScanRange> {
        if self.missing == Some(false) {
            return self.keys().into_iter().map(|key| (key.to_owned(), Vec::new(), None)).collect();
        }
        self.alternatives
            .iter()
            .enumerate()
            .map(|(i, a)| (self.key_of(i).to_owned(), a.lo.clone(), a.hi.clone()))
            .collect()
    }
}

impl Pred {
    pub fn accepts(&self, value: &[u8]) -> bool {
        match self {
            Pred::Equals(expected) => value == expected.as_slice(),
            Pred::StartsWith(prefix) => value.starts_with(prefix),
            Pred::Contains(part) => part.is_empty() || value.windows(part.len()).any(|w| w == part.as_slice()),
            Pred::Date { prefix, lo, hi } => {
                decode_range(value).is_some_and(|(t_lo, t_hi)| date_matches(*prefix, *lo, *hi, t_lo, t_hi))
            }
            Pred::Number { prefix, value: q, half } => {
                decode_f64(value).is_some_and(|v| number_matches(*prefix, *q, *half, v))
            }
            Pred::Quantity { unit, number } => {
                value.len() == unit.len() + 9
                    && value.starts_with(unit)
                    && value[unit.len()] == 0
                    && number.accepts(&value[unit.len() + 1..])
            }
            Pred::Composite { head, tail } => value.starts_with(head) && tail.accepts(&value[head.len()..]),
        }
    }
}

/// FHIR date comparison: the query range `[lo, hi]` against the target range `[t_lo, t_hi]`.
pub fn date_matches(prefix: Prefix, lo: i64, hi: i64, t_lo: i64, t_hi: i64) -> bool {
    let contained = lo <= t_lo && t_hi <= hi;
    match prefix {
        Prefix::Eq => contained,
        Prefix::Ne => !contained,
        Prefix::Gt => t_hi > hi,
        Prefix::Lt => t_lo < lo,
        Prefix::Ge => t_hi > hi || contained,
        Prefix::Le => t_lo < lo || contained,
        Prefix::Sa => t_lo > hi,
        Prefix::Eb => t_hi < lo,
        Prefix::Ap => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
            let gap = (now.saturating_sub(lo)).unsigned_abs().max(hi.saturating_sub(now).unsigned_abs());
            let slack = i64::try_from(gap / 10).unwrap_or(i64::MAX);
            t_lo <= hi.saturating_add(slack) && t_hi >= lo.saturating_sub(slack)
        }
    }
}

/// FHIR number comparison with the implicit precision of the query value.
pub fn number_matches(prefix: Prefix, q: f64, half: f64, v: f64) -> bool {
    match prefix {
        Prefix::Eq => v >= q - half && v < q + half,
        Prefix::Ne => !(v >= q - half && v < q + half),
        Prefix::Gt | Prefix::Sa => v > q,
        Prefix::Lt | Prefix::Eb => v < q,
        Prefix::Ge => v >= q,
        Prefix::Le => v <= q,
        Prefix::Ap => (v - q).abs() <= (q.abs() * 0.1).max(half),
    }
}

fn incorrect(message: String) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

/// Splits `a,b\,c` into `["a", "b,c"]`, honouring FHIR's backslash escapes.
pub fn split_values(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("never empty").push(next);
                }
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

/// Splits a token or quantity value at unescaped `|` (escapes already removed by
/// [`split_values`] are not seen here; FHIR servers treat a literal `|` as the separator).
fn split_bar(text: &str) -> Vec<&str> {
    text.split('|').collect()
}

fn prefix_of(text: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (name, prefix) in prefixes {
        if let Some(rest) = text.strip_prefix(name) {
            if rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
                return (prefix, rest);
            }
        }
    }
    (Prefix::Eq, text)
}

/// `[v, v·0x00)`: exactly the value `v`.
pub(super) fn exact(value: Vec<u8>) -> Alternative {
    // Index values are cut to a bounded length; so is the value they are compared with.
    let value = values::bounded(value);
    let mut hi = value.clone();
    hi.push(0);
    Alternative { key: None, pred: Pred::Equals(value.clone()), lo: value, hi: Some(hi) }
}

/// Every value starting with `prefix`.
fn starting_with(prefix: Vec<u8>) -> Alternative {
    let prefix = values::bounded(prefix);
    let hi = successor(&prefix);
    Alternative { key: None, pred: Pred::StartsWith(prefix.clone()), lo: prefix, hi }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Parses one parameter occurrence of a query on `resource_type`. `name` may carry a modifier
/// (`family:exact`). Returns `Ok(None)` if the parameter is unknown.
pub fn parse_clause(
    resource_type: ResourceType,
    name: &str,
    raw_value: &str,
    base_url: &str,
) -> Result<Option<Clause>, FhirError> {
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let Some(def) = registry().get(resource_type, code) else { return Ok(None) };
    let def = def.clone();
    if !def.alias_of.is_empty() {
        // An alias reads the entries of the parameters it unites, under the same modifier.
        let mut merged: Option<Clause> = None;
        for target in &def.alias_of {
            let target_name = match modifier {
                Some(modifier) => format!("{target}:{modifier}"),
                None => target.clone(),
            };
            let Some(mut part) = parse_clause(resource_type, &target_name, raw_value, base_url)? else { continue };
            let part_key = part.key.clone();
            for alternative in &mut part.alternatives {
                alternative.key.get_or_insert_with(|| part_key.clone());
            }
            match &mut merged {
                None => {
                    part.def = def.clone();
                    part.written = name.to_owned();
                    merged = Some(part);
                }
                Some(clause) => {
                    clause.also_keys.push(part_key);
                    clause.alternatives.extend(part.alternatives);
                }
            }
        }
        return Ok(merged);
    }
    let mut clause = Clause {
        def: def.clone(),
        written: name.to_owned(),
        key: code.to_owned(),
        negated: false,
        missing: None,
        also_keys: Vec::new(),
        alternatives: Vec::new(),
    };
    if modifier == Some("missing") {
        clause.missing = Some(match raw_value {
            "true" => true,
            "false" => false,
            other => return Err(incorrect(format!("{name} must be true or false, not '{other}'"))),
        });
        clause.key = index_key_for_missing(&def);
        return Ok(Some(clause));
    }
    let bad_modifier = || {
        incorrect(format!(
            "the modifier ':{}' is not supported for the {} parameter '{code}'",
            modifier.unwrap_or(""),
            def.kind.as_str()
        ))
    };
    for value in split_values(raw_value) {
        if value.is_empty() {
            return Err(incorrect(format!("the parameter '{name}' has an empty value")));
        }
        let alternatives = match def.kind {
            ParamKind::String => match modifier {
                None => vec![starting_with(normalize(&value).into_bytes())],
                Some("exact") => {
                    clause.key = format!("{code}:exact");
                    vec![exact(value.into_bytes())]
                }
                Some("contains") => {
                    vec![Alternative {
                        key: None,
                        pred: Pred::Contains(values::bounded(normalize(&value).into_bytes())),
                        lo: Vec::new(),
                        hi: None,
                    }]
                }
                _ => return Err(bad_modifier()),
            },
            ParamKind::Token => match modifier {
                None => token(&value),
                Some("not") => {
                    clause.negated = true;
                    token(&value)
                }
                Some("text") => {
                    clause.key = format!("{code}:text");
                    vec![starting_with(normalize(&value).into_bytes())]
                }
                Some("of-type") => {
                    clause.key = format!("{code}:of-type");
                    if split_bar(&value).len() != 3 {
                        return Err(incorrect(format!("{name} needs system|code|value, not '{value}'")));
                    }
                    vec![exact(value.into_bytes())]
                }
                _ => return Err(bad_modifier()),
            },
            ParamKind::Date => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![date(name, &value)?]
            }
            ParamKind::Number => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![number(name, &value)?]
            }
            ParamKind::Quantity => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![quantity(name, &value)?]
            }
            ParamKind::Reference => match modifier {
                None => reference(&def, &value, base_url, None),
                Some("identifier") => {
                    clause.key = format!("{code}:identifier");
                    token(&value)
                }
                Some(type_name) => match ResourceType::parse(type_name) {
                    Some(target) => reference(&def, &value, base_url, Some(target)),
                    None => return Err(bad_modifier()),
                },
            },
            ParamKind::Uri => match modifier {
                None => vec![exact(value.into_bytes())],
                Some("below") => vec![starting_with(value.into_bytes())],
                Some("above") => {
                    let mut candidates = vec![value.clone()];
                    let mut rest = value.as_str();
                    while let Some((head, _)) = rest.rsplit_once('/') {
                        if head.ends_with('/') || head.ends_with(':') || head.is_empty() {
                            break;
                        }
                        candidates.push(head.to_owned());
                        rest = head;
                    }
                    candidates.into_iter().map(|c| exact(c.into_bytes())).collect()
                }
                _ => return Err(bad_modifier()),
            },
            ParamKind::Composite => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                composite(&def, name, &value)?
            }
            ParamKind::Special => return Ok(None),
        };
        clause.alternatives.extend(alternatives);
    }
    Ok(Some(clause))
}

/// `:missing` asks whether any value is indexed; strings and references index under their own
/// code, so the plain key answers it.
fn index_key_for_missing(def: &ParamDef) -> String {
    def.code.clone()
}

/// `system|code` and `|code` are stored forms: an exact lookup each. A plain `code` matches
/// codes with any system (stored as `code`) and without one (stored as `|code`). `system|`
/// (any code of a system) is a prefix scan over the `system|code` values.
pub(super) fn token(value: &str) -> Vec<Alternative> {
    if value.ends_with('|') && value.len() > 1 {
        return vec![starting_with(value.as_bytes().to_vec())];
    }
    if value.contains('|') {
        return vec![exact(value.as_bytes().to_vec())];
    }
    vec![exact(value.as_bytes().to_vec()), exact(format!("|{value}").into_bytes())]
}

fn date(name: &str, text: &str) -> Result<Alternative, FhirError> {
    let (prefix, rest) = prefix_of(text);
    let (lo, hi) = parse_date_range(rest)
        .ok_or_else(|| incorrect(format!("{name}: '{text}' is not a FHIR date, dateTime or instant")))?;
    let enc = |v: i64| encode_i64(v).to_vec();
    // Index values are `start · end`; the scan can bound the start where the prefix allows.
    let (scan_lo, scan_hi) = match prefix {
        Prefix::Eq => (enc(lo), hi.checked_add(1).map(enc)),
        Prefix::Lt => (Vec::new(), Some(enc(lo))),
        Prefix::Le => (Vec::new(), hi.checked_add(1).map(enc)),
        Prefix::Sa => (hi.checked_add(1).map(enc).unwrap_or_else(|| vec![0xFF; 9]), None),
        _ => (Vec::new(), None),
    };
    Ok(Alternative { key: None, pred: Pred::Date { prefix, lo, hi }, lo: scan_lo, hi: scan_hi })
}

fn parse_number(name: &str, text: &str) -> Result<(f64, f64), FhirError> {
    let value: f64 = text.parse().map_err(|_| incorrect(format!("{name}: '{text}' is not a number")))?;
    // Implicit precision: "5.40" means [5.395, 5.405).
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let exponent: i32 = text.split_once(['e', 'E']).and_then(|(_, e)| e.parse().ok()).unwrap_or(0);
    Ok((value, 0.5 * 10f64.powi(exponent - decimals)))
}

fn number_range(prefix: Prefix, value: f64, half: f64) -> (Vec<u8>, Option<Vec<u8>>) {
    let enc = |v: f64| encode_f64(v).to_vec();
    match prefix {
        Prefix::Eq => (enc(value - half), Some(enc(value + half))),
        Prefix::Gt | Prefix::Sa | Prefix::Ge => (enc(value), None),
        Prefix::Lt | Prefix::Eb => (Vec::new(), Some(enc(value))),
        Prefix::Le => (Vec::new(), successor(&enc(value))),
        Prefix::Ap => {
            let slack = (value.abs() * 0.1).max(half);
            (enc(value - slack), successor(&enc(value + slack)))
        }
        Prefix::Ne => (Vec::new(), None),
    }
}

fn number(name: &str, text: &str) -> Result<Alternative, FhirError> {
    let (prefix, rest) = prefix_of(text);
    let (value, half) = parse_number(name, rest)?;
    let (lo, hi) = number_range(prefix, value, half);
    Ok(Alternative { key: None, pred: Pred::Number { prefix, value, half }, lo, hi })
}

fn quantity(name: &str, text: &str) -> Result<Alternative, FhirError> {
    let parts = split_bar(text);
    let (number_text, unit) = match parts.as_slice() {
        [number] => (*number, String::new()),
        [number, "", code] => (*number, format!("||{code}")),
        [number, system, code] => (*number, format!("{system}|{code}")),
        _ => return Err(incorrect(format!("{name}: '{text}' is not [prefix]number|system|code"))),
    };
    let (prefix, rest) = prefix_of(number_text);
    let (value, half) = parse_number(name, rest)?;
    let (num_lo, num_hi) = number_range(prefix, value, half);
    let mut head = unit.clone().into_bytes();
    head.push(0);
    let lo = [head.clone(), num_lo].concat();
    let hi = match num_hi {
        Some(h) => Some([head.clone(), h].concat()),
        None => successor(&head),
    };
    Ok(Alternative {
        key: None,
        pred: Pred::Quantity { unit: unit.into_bytes(), number: Box::new(Pred::Number { prefix, value, half }) },
        lo,
        hi,
    })
}

fn reference(def: &ParamDef, value: &str, base_url: &str, only: Option<ResourceType>) -> Vec<Alternative> {
    let local = value.strip_prefix(base_url).map(|rest| rest.trim_start_matches('/')).unwrap_or(value);
    if local.contains('/') || local.contains(':') {
        let plain = local.split("/_history/").next().unwrap_or(local);
        if let Some(only) = only {
            if !plain.starts_with(&format!("{only}/")) {
                return vec![exact(format!("{only}/{plain}").into_bytes())];
            }
        }
        return vec![exact(plain.as_bytes().to_vec())];
    }
    // A bare id: any of the parameter's target types (or the one named by the modifier).
    let targets: Vec<ResourceType> = match only {
        Some(only) => vec![only],
        None if def.targets.is_empty() => ResourceType::all().collect(),
        None => def.targets.clone(),
    };
    targets.into_iter().map(|t| exact(format!("{t}/{local}").into_bytes())).collect()
}

fn composite(def: &ParamDef, name: &str, text: &str) -> Result<Vec<Alternative>, FhirError> {
    let parts: Vec<&str> = text.split('$').collect();
    if parts.len() != def.components.len() {
        return Err(incorrect(format!("{name} needs {} values separated by '$', not '{text}'", def.components.len())));
    }
    // Every stored form of the leading components: a plain token code may be stored as `code`
    // (with a system) or `|code` (without one).
    let mut heads: Vec<Vec<u8>> = vec![Vec::new()];
    for (component, part) in def.components.iter().zip(&parts).take(parts.len() - 1) {
        let forms: Vec<Vec<u8>> = match component.kind {
            ParamKind::Token if !part.contains('|') => vec![part.as_bytes().to_vec(), format!("|{part}").into_bytes()],
            ParamKind::Token | ParamKind::Uri | ParamKind::Reference => vec![part.as_bytes().to_vec()],
            ParamKind::String => vec![normalize(part).into_bytes()],
            _ => {
                return Err(incorrect(format!("{name}: only the last component may be a {}", component.kind.as_str())));
            }
        };
        // Stored component values are cut to a bounded length (see `values::bounded`).
        let forms: Vec<Vec<u8>> = forms.into_iter().map(values::bounded).collect();
        heads = heads
            .iter()
            .flat_map(|head| {
                forms.iter().map(move |form| {
                    let mut joined = head.clone();
                    joined.extend_from_slice(form);
                    joined.extend_from_slice(&[0, 0]);
                    joined
                })
            })
            .collect();
    }
    let last_kind = def.components.last().map(|c| c.kind).unwrap_or(ParamKind::Token);
    let last = parts[parts.len() - 1];
    let tails = match last_kind {
        ParamKind::Token => token(last),
        ParamKind::Uri | ParamKind::Reference => vec![exact(last.as_bytes().to_vec())],
        ParamKind::String => vec![starting_with(normalize(last).into_bytes())],
        ParamKind::Quantity => vec![quantity(name, last)?],
        ParamKind::Number => vec![number(name, last)?],
        ParamKind::Date => vec![date(name, last)?],
        _ => return Err(incorrect(format!("{name}: unsupported composite component"))),
    };
    let mut alternatives = Vec::new();
    for head in &heads {
        for tail in &tails {
            let lo = [head.clone(), tail.lo.clone()].concat();
            let hi = match &tail.hi {
                Some(h) => Some([head.clone(), h.clone()].concat()),
                None => successor(head),
            };
            alternatives.push(Alternative {
                key: None,
                pred: Pred::Composite { head: head.clone(), tail: Box::new(tail.pred.clone()) },
                lo,
                hi,
            });
        }
    }
    Ok(alternatives)
}

/// The clause "is in the compartment of Patient `patient_id`".
pub fn compartment_clause(patient_id: &str) -> Clause {
    static DEFINITION: std::sync::LazyLock<Arc<ParamDef>> = std::sync::LazyLock::new(|| {
        Arc::new(ParamDef {
            code: super::compartment::COMPARTMENT_KEY.to_owned(),
            url: "http://hl7.org/fhir/CompartmentDefinition/patient".to_owned(),
            kind: ParamKind::Reference,
            expression: super::fhirpath::Expr::This,
            targets: Vec::new(),
            components: Vec::new(),
            parts: Vec::new(),
            alias_of: Vec::new(),
        })
    });
    Clause {
        def: DEFINITION.clone(),
        written: format!("compartment Patient/{patient_id}"),
        key: super::compartment::COMPARTMENT_KEY.to_owned(),
        negated: false,
        missing: None,
        also_keys: Vec::new(),
        alternatives: vec![exact(format!("Patient/{patient_id}").into_bytes())],
    }
}

/// Used by the composite index encoder and tests.
pub fn quantity_value(unit: &str, number: f64) -> Vec<u8> {
    values::quantity_key(unit, number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(ty: &str, name: &str, value: &str) -> Clause {
        parse_clause(ResourceType::parse(ty).unwrap(), name, value, "http://base/fhir").unwrap().unwrap()
    }

    fn in_range(alternative: &Alternative, value: &[u8]) -> bool {
        value >= alternative.lo.as_slice() && alternative.hi.as_ref().is_none_or(|hi| value < hi.as_slice())
    }

    #[test]
    fn every_accepted_value_lies_in_the_scan_range() {
        let cases = [
            ("Patient", "family", "Mül", "müller"),
            ("Patient", "birthdate", "1980", "1980-06-01"),
            ("Patient", "birthdate", "le1980-06", "1970-01-01"),
            ("Patient", "birthdate", "sa1979", "1985-03-03"),
            ("Observation", "value-quantity", "gt60|http://unitsofmeasure.org|/min", "72"),
            ("Observation", "value-quantity", "5.4", "5.42"),
            ("RiskAssessment", "probability", "le0.5", "0.2"),
        ];
        for (ty, name, query, target) in cases {
            let clause = clause(ty, name, query);
            let value = match clause.def.kind {
                ParamKind::String => normalize(target).into_bytes(),
                ParamKind::Date => {
                    let (lo, hi) = parse_date_range(target).unwrap();
                    values::encode_range(lo, hi)
                }
                ParamKind::Quantity if query.contains('|') => {
                    quantity_value("http://unitsofmeasure.org|/min", target.parse().unwrap())
                }
                ParamKind::Quantity => quantity_value("", target.parse().unwrap()),
                _ => encode_f64(target.parse().unwrap()).to_vec(),
            };
            let alternative = &clause.alternatives[0];
            assert!(alternative.pred.accepts(&value), "{name}={query} should accept {target}");
            assert!(in_range(alternative, &value), "{name}={query}: {target} outside the scan range");
        }
    }

    #[test]
    fn date_prefixes_follow_the_spec() {
        let (lo, hi) = parse_date_range("2020").unwrap();
        let (t_lo, t_hi) = parse_date_range("2020-06-15").unwrap();
        assert!(date_matches(Prefix::Eq, lo, hi, t_lo, t_hi));
        assert!(!date_matches(Prefix::Gt, lo, hi, t_lo, t_hi));
        assert!(date_matches(Prefix::Ge, lo, hi, t_lo, t_hi));
        assert!(date_matches(Prefix::Le, lo, hi, t_lo, t_hi));
        let (n_lo, n_hi) = parse_date_range("2021-01-01").unwrap();
        assert!(date_matches(Prefix::Gt, lo, hi, n_lo, n_hi) && date_matches(Prefix::Sa, lo, hi, n_lo, n_hi));
        assert!(!date_matches(Prefix::Eq, lo, hi, n_lo, n_hi) && date_matches(Prefix::Ne, lo, hi, n_lo, n_hi));
    }

    #[test]
    fn numbers_use_implicit_precision() {
        let (value, half) = parse_number("n", "5.40").unwrap();
        assert!(number_matches(Prefix::Eq, value, half, 5.404));
        assert!(!number_matches(Prefix::Eq, value, half, 5.406));
        let (value, half) = parse_number("n", "100").unwrap();
        assert!(number_matches(Prefix::Eq, value, half, 100.4) && !number_matches(Prefix::Eq, value, half, 100.5));
    }

    #[test]
    fn references_accept_ids_types_and_absolute_urls() {
        let by_id = clause("Observation", "subject", "123");
        assert!(by_id.accepts(b"Patient/123") && by_id.accepts(b"Group/123"));
        let typed = clause("Observation", "subject:Patient", "123");
        assert!(typed.accepts(b"Patient/123") && !typed.accepts(b"Group/123"));
        let absolute = clause("Observation", "subject", "http://base/fhir/Patient/123");
        assert!(absolute.accepts(b"Patient/123"));
    }

    #[test]
    fn bad_values_and_modifiers_are_errors() {
        let patient = ResourceType::parse("Patient").unwrap();
        for (name, value) in
            [("birthdate", "yesterday"), ("family:below", "x"), ("gender:missing", "maybe"), ("birthdate", "")]
        {
            assert!(parse_clause(patient, name, value, "").is_err(), "{name}={value}");
        }
        assert!(parse_clause(patient, "colour", "red", "").unwrap().is_none());
    }
}
