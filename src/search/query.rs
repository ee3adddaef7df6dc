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
    /// Token `system|`: values ending in `0x00 system`.
    EndsWith(Vec<u8>),
    Contains(Vec<u8>),
    /// Date ranges: the query's own range and prefix.
    Date {
        prefix: Prefix,
        lo: i64,
        hi: i64,
    },
    /// Numbers: the query value and its implicit range.
    Number {
        prefix: Prefix,
        number: QueryNumber,
    },
    /// Quantities: a number predicate on the leading number, then the units it accepts.
    Quantity {
        units: UnitMatch,
        number: Box<Pred>,
    },
    /// Composites: the leading components, each followed by the `0x00 0x00` separator, then a
    /// predicate on the last one.
    Composite {
        head: Vec<Component>,
        tail: Box<Pred>,
    },
}

/// The units a quantity search accepts, as the index stores them (the system as
/// [`values::push_system`] writes it, every value cut like stored ones, see [`values::bounded`]).
#[derive(Debug, Clone, PartialEq)]
pub enum UnitMatch {
    /// `number`: any unit, or none.
    Any,
    /// `number|system|code`: that coded unit.
    Coded { system: Vec<u8>, code: Vec<u8> },
    /// `number||unit`: the code or the human-readable unit.
    CodeOrUnit(Vec<u8>),
}

impl UnitMatch {
    fn accepts(&self, [system, code, unit]: [&[u8]; 3]) -> bool {
        match self {
            UnitMatch::Any => true,
            UnitMatch::Coded { system: s, code: c } => system == s.as_slice() && code == c.as_slice(),
            // An empty stored unit means "the same as the code".
            UnitMatch::CodeOrUnit(wanted) => code == wanted.as_slice() || unit == wanted.as_slice(),
        }
    }
}

/// A leading component of a composite query, as the index stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Component {
    /// Exactly this value.
    Exact(Vec<u8>),
    /// Any value starting with these bytes: a plain token `code` (any system or none).
    Prefix(Vec<u8>),
    /// Any value ending with these bytes: a token `system|` (any code of the system).
    Suffix(Vec<u8>),
}

/// The separator between the components of a composite index value. Component values never
/// contain it: they are text, and strings with control characters are refused on input.
const COMPONENT_SEPARATOR: [u8; 2] = [0, 0];

/// Whether a composite index value has the leading components `head` and a last component
/// that `tail` accepts.
fn composite_accepts(head: &[Component], tail: &Pred, mut value: &[u8]) -> bool {
    for component in head {
        let rest = match component {
            Component::Exact(bytes) => {
                value.strip_prefix(bytes.as_slice()).and_then(|rest| rest.strip_prefix(&COMPONENT_SEPARATOR))
            }
            Component::Prefix(bytes) => value.strip_prefix(bytes.as_slice()).and_then(|rest| {
                let end = rest.windows(2).position(|pair| pair == COMPONENT_SEPARATOR)?;
                Some(&rest[end + 2..])
            }),
            Component::Suffix(bytes) => token_component_end(value)
                .filter(|&end| value[..end].ends_with(bytes))
                .map(|end| &value[end + COMPONENT_SEPARATOR.len()..]),
        };
        match rest {
            Some(rest) => value = rest,
            None => return false,
        }
    }
    tail.accepts(value)
}

/// Where the token component at the start of a composite value ends: at the first separator
/// after the code's own 0x00 (`code 0x00 system`, the system possibly empty).
fn token_component_end(value: &[u8]) -> Option<usize> {
    let system_start = value.iter().position(|&byte| byte == 0)? + 1;
    let system_len = value.get(system_start..)?.windows(2).position(|pair| pair == COMPONENT_SEPARATOR)?;
    Some(system_start + system_len)
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

/// The raw values `lo <= v < hi` of one index key (`hi` `None`: no upper bound) that the
/// engine scans for one alternative of a clause.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRange {
    pub key: String,
    pub lo: Vec<u8>,
    pub hi: Option<Vec<u8>>,
    /// The alternative whose predicate the values must satisfy (`None` for `:missing=false`,
    /// which accepts any value).
    pub alternative: Option<usize>,
    /// The key is a date's end-ordered key (`date:end`), whose values are `end·start`: they
    /// are swapped back before the predicate sees them.
    pub end_ordered: bool,
}

impl ScanRange {
    /// Whether `value`, an entry of this range's key, satisfies its alternative.
    pub fn accepts(&self, clause: &Clause, value: &[u8]) -> bool {
        let Some(index) = self.alternative else { return true };
        let Some(alternative) = clause.alternatives.get(index) else { return false };
        if self.end_ordered {
            if value.len() != 16 {
                return false;
            }
            let start_end = [&value[8..], &value[..8]].concat();
            alternative.pred.accepts(&start_end)
        } else {
            alternative.pred.accepts(value)
        }
    }

    /// Whether `value` lies in `[lo, hi)`.
    pub fn contains(&self, value: &[u8]) -> bool {
        value >= self.lo.as_slice() && self.hi.as_ref().is_none_or(|hi| value < hi.as_slice())
    }
}

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
    /// Not empty: the clause is a disjunction of conjunctions (a resource matches when it
    /// matches every clause of one of them), and its other fields only name it. Built by
    /// [`Clause::any_of`] for granular SMART scopes, never parsed from a query.
    pub any_of: Vec<Vec<Clause>>,
}

impl Clause {
    /// The clause "matches every clause of at least one of `conjunctions`" (which must not be
    /// empty: a disjunction of nothing would match nothing).
    pub fn any_of(written: String, conjunctions: Vec<Vec<Clause>>) -> Clause {
        debug_assert!(!conjunctions.is_empty());
        let first = conjunctions.iter().flatten().next();
        Clause {
            def: first.map_or_else(|| compartment_clause("").def, |clause| clause.def.clone()),
            written,
            key: String::new(),
            negated: false,
            missing: None,
            also_keys: Vec::new(),
            alternatives: Vec::new(),
            any_of: conjunctions,
        }
    }

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
        self.any_of.is_empty()
            && !self.negated
            && (self.missing == Some(false) || (self.missing.is_none() && !self.alternatives.is_empty()))
    }

    /// The ranges to scan, each with the key it reads: one per alternative (two for dates
    /// compared by their end, see [`date_end_ranges`]), or each key whole for `:missing=false`.
    /// The order is fixed by the query alone: paging positions refer to ranges by index.
    pub fn ranges(&self) -> Vec<ScanRange> {
        if self.missing == Some(false) {
            return self
                .keys()
                .into_iter()
                .map(|key| ScanRange {
                    key: key.to_owned(),
                    lo: Vec::new(),
                    hi: None,
                    alternative: None,
                    end_ordered: false,
                })
                .collect();
        }
        let mut ranges = Vec::with_capacity(self.alternatives.len());
        for (index, alternative) in self.alternatives.iter().enumerate() {
            let key = self.key_of(index).to_owned();
            match date_end_ranges(&key, index, alternative) {
                Some(pair) => ranges.extend(pair),
                None => ranges.push(ScanRange {
                    key,
                    lo: alternative.lo.clone(),
                    hi: alternative.hi.clone(),
                    alternative: Some(index),
                    end_ordered: false,
                }),
            }
        }
        ranges
    }
}

impl Pred {
    pub fn accepts(&self, value: &[u8]) -> bool {
        match self {
            Pred::Equals(expected) => value == expected.as_slice(),
            Pred::StartsWith(prefix) => value.starts_with(prefix),
            Pred::EndsWith(suffix) => value.ends_with(suffix),
            Pred::Contains(part) => part.is_empty() || value.windows(part.len()).any(|w| w == part.as_slice()),
            Pred::Date { prefix, lo, hi } => {
                decode_range(value).is_some_and(|(t_lo, t_hi)| date_matches(*prefix, *lo, *hi, t_lo, t_hi))
            }
            Pred::Number { prefix, number } => decode_f64(value).is_some_and(|v| number_matches(*prefix, number, v)),
            Pred::Quantity { units, number } => values::decode_quantity(value)
                .is_some_and(|(bytes, stored)| number.accepts(bytes) && units.accepts(stored)),
            Pred::Composite { head, tail } => composite_accepts(head, tail, value),
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
            let now = crate::fhir::json::now_micros();
            let gap = (now.saturating_sub(lo)).unsigned_abs().max(hi.saturating_sub(now).unsigned_abs());
            let slack = i64::try_from(gap / 10).unwrap_or(i64::MAX);
            t_lo <= hi.saturating_add(slack) && t_hi >= lo.saturating_sub(slack)
        }
    }
}

/// A number of a query, as the stored values are: each the `f64` nearest to a decimal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryNumber {
    /// The value as written.
    pub value: f64,
    /// The implicit range `[lo, hi)` of the value's precision ("5.4" is `[5.35, 5.45)`),
    /// computed exactly in decimal and only then rounded to the nearest `f64`.
    pub lo: f64,
    pub hi: f64,
}

impl QueryNumber {
    /// Whether `v` lies in the implicit range. A range narrower than the `f64` spacing at the
    /// value (`0e-400`, or more digits than `f64` holds) rounds to `lo == hi`: then the one
    /// `f64` that the range's decimals round to is the match.
    fn contains(&self, v: f64) -> bool {
        if self.lo < self.hi { v >= self.lo && v < self.hi } else { v == self.value }
    }
}

/// FHIR number comparison with the implicit precision of the query value.
///
/// `gt`, `lt`, `ge` and `le` compare with the value exactly (the spec's number table: "gt100:
/// values that are greater than exactly 100"). `sa` and `eb` have no row there, so the prefix
/// table applies: "the range of the search value does not overlap with the range of the
/// target value, and the range above [below] the search value contains" it. So `sa100` is
/// `>= 100.5` and `eb100` is `< 99.5`: 100.4 is not "after" 100.
///
/// Stored numbers are the `f64` nearest to their decimal text, and so are the bounds; rounding
/// to nearest is monotonic, so a stored decimal at a bound compares as the decimals do (5.35
/// is in 5.4's range, 5.45 and 0.15 are not in 5.4's and 0.1's).
pub fn number_matches(prefix: Prefix, number: &QueryNumber, v: f64) -> bool {
    let QueryNumber { value: q, lo, hi } = *number;
    match prefix {
        Prefix::Eq => number.contains(v),
        Prefix::Ne => !number.contains(v),
        Prefix::Gt => v > q,
        Prefix::Lt => v < q,
        Prefix::Sa if lo < hi => v >= hi,
        Prefix::Sa => v > q,
        Prefix::Eb if lo < hi => v < lo,
        Prefix::Eb => v < q,
        Prefix::Ge => v >= q,
        Prefix::Le => v <= q,
        Prefix::Ap => (v - q).abs() <= (q.abs() * 0.1).max((hi - lo) / 2.0),
    }
}

fn incorrect(message: String) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

/// Splits a parameter value at unescaped `,` into its alternatives. Escapes are kept (`a\,b`
/// stays `a\,b`): each alternative is split further at unescaped `|` or `$` by its type's
/// parser, and only then are the pieces unescaped with [`unescape`]. FHIR's escapes are `\,`,
/// `\|`, `\$` and `\\`.
pub fn split_values(text: &str) -> Vec<String> {
    split_unescaped(text, ',').into_iter().map(str::to_owned).collect()
}

/// Splits `text` at every `separator` not preceded by an escaping backslash; the pieces keep
/// their escapes.
fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            parts.push(&text[start..index]);
            start = index + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes the escaping backslashes: `\x` becomes `x` for any `x` (so `\\` is one backslash).
/// A trailing lone backslash is kept as written.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

/// Splits a token or quantity value at unescaped `|` and unescapes the pieces.
fn split_bar(text: &str) -> Vec<String> {
    split_unescaped(text, '|').into_iter().map(unescape).collect()
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
pub fn exact(value: Vec<u8>) -> Alternative {
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
        any_of: Vec::new(),
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
    // `value` keeps its escapes; each type's parser splits it further and unescapes the pieces.
    for value in split_values(raw_value) {
        if value.is_empty() {
            return Err(incorrect(format!("the parameter '{name}' has an empty value")));
        }
        let alternatives = match def.kind {
            ParamKind::String => match modifier {
                None => vec![starting_with(normalize(&unescape(&value)).into_bytes())],
                Some("exact") => {
                    clause.key = format!("{code}:exact");
                    vec![exact(unescape(&value).into_bytes())]
                }
                Some("contains") => {
                    vec![Alternative {
                        key: None,
                        pred: Pred::Contains(values::bounded(normalize(&unescape(&value)).into_bytes())),
                        lo: Vec::new(),
                        hi: None,
                    }]
                }
                _ => return Err(bad_modifier()),
            },
            ParamKind::Token => match modifier {
                // Resource ids are tokens without a system: one exact value each.
                None if def.code == "_id" => vec![code_without_system(&unescape(&value))],
                None => token(&value),
                Some("not") => {
                    clause.negated = true;
                    token(&value)
                }
                Some("text") => {
                    clause.key = format!("{code}:text");
                    vec![starting_with(normalize(&unescape(&value)).into_bytes())]
                }
                Some("of-type") => {
                    clause.key = format!("{code}:of-type");
                    let parts = split_bar(&value);
                    if parts.len() != 3 {
                        return Err(incorrect(format!("{name} needs system|code|value, not '{value}'")));
                    }
                    vec![exact(parts.join("|").into_bytes())]
                }
                _ => return Err(bad_modifier()),
            },
            ParamKind::Date => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![date(name, &unescape(&value))?]
            }
            ParamKind::Number => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![number(name, &unescape(&value))?]
            }
            ParamKind::Quantity => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                vec![quantity(name, &value)?]
            }
            ParamKind::Reference => match modifier {
                None => reference(&def, &unescape(&value), base_url, None),
                Some("identifier") => {
                    clause.key = format!("{code}:identifier");
                    token(&value)
                }
                Some(type_name) => match ResourceType::parse(type_name) {
                    Some(target) => reference(&def, &unescape(&value), base_url, Some(target)),
                    None => return Err(bad_modifier()),
                },
            },
            ParamKind::Uri => match modifier {
                None => vec![exact(unescape(&value).into_bytes())],
                Some("below") => vec![starting_with(unescape(&value).into_bytes())],
                Some("above") => {
                    let value = unescape(&value);
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

/// Tokens are stored as `code 0x00 system` (see `values::token_value`): `system|code` and
/// `|code` (no system) are exact values, a plain `code` (any system or none) is the prefix
/// `code 0x00`, and `system|` (any code of the system) is the one form that scans the whole
/// parameter, keeping the values that end in `0x00 system`. `value` keeps its escapes: only an
/// unescaped `|` separates system and code (`a\|b` is the code `a|b`).
pub(super) fn token(value: &str) -> Vec<Alternative> {
    match split_unescaped(value, '|').as_slice() {
        [code] => vec![starting_with(values::token_value(&unescape(code), ""))],
        [system, ""] if !system.is_empty() => {
            let suffix = values::token_value("", &unescape(system));
            vec![Alternative { key: None, pred: Pred::EndsWith(suffix), lo: Vec::new(), hi: None }]
        }
        // `system|code`, `|code`; more bars belong to the code.
        [system, code @ ..] => {
            let code: Vec<String> = code.iter().map(|part| unescape(part)).collect();
            vec![exact(values::token_value(&code.join("|"), &unescape(system)))]
        }
        [] => Vec::new(),
    }
}

/// The token alternative of exactly `code` without a system (`|code`): resource ids.
pub(super) fn code_without_system(code: &str) -> Alternative {
    exact(values::token_value(code, ""))
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
        // Ending before the query's start means starting before it too.
        Prefix::Eb => (Vec::new(), Some(enc(lo))),
        _ => (Vec::new(), None),
    };
    Ok(Alternative { key: None, pred: Pred::Date { prefix, lo, hi }, lo: scan_lo, hi: scan_hi })
}

/// `gt` and `ge` on a date parameter: a match must end after the query's range, so the
/// narrow values (see [`values::NARROW_DATE_WIDTH`]) that can match start at most that width
/// before its end, and the scan of the start-ordered key begins there (or at the query's start,
/// for values `ge` accepts because they lie within it); the wide values that start earlier are
/// found on the end-ordered key, from the query's end on. A wide value in both ranges is
/// reported once (the engine drops repeated resources). `None` for every other predicate
/// (composites have no end-ordered key and keep their unbounded range).
fn date_end_ranges(key: &str, index: usize, alternative: &Alternative) -> Option<[ScanRange; 2]> {
    let Pred::Date { prefix, lo, hi } = alternative.pred else { return None };
    let narrow_start = hi.saturating_sub(values::NARROW_DATE_WIDTH).saturating_add(1);
    let start_from = match prefix {
        Prefix::Gt => narrow_start,
        Prefix::Ge => narrow_start.min(lo),
        _ => return None,
    };
    // Past the largest end nothing is later: an empty range.
    let end_from = hi.checked_add(1).map_or_else(|| vec![0xFF; 17], |after| encode_i64(after).to_vec());
    Some([
        ScanRange {
            key: key.to_owned(),
            lo: encode_i64(start_from).to_vec(),
            hi: None,
            alternative: Some(index),
            end_ordered: false,
        },
        ScanRange {
            key: format!("{key}{}", values::DATE_END_SUFFIX),
            lo: end_from,
            hi: None,
            alternative: Some(index),
            end_ordered: true,
        },
    ])
}

/// Parses a search number (`[+|-]digits[.digits][(e|E)[+|-]digits]`, as FHIR's decimal
/// allows) and computes its implicit range in decimal: the value written with `d` digits
/// after the point (after applying the exponent) covers plus or minus half a unit of its last
/// digit. NaN, infinities and numbers beyond the range of `f64` are errors.
fn parse_number(name: &str, text: &str) -> Result<QueryNumber, FhirError> {
    let not_a_number = || incorrect(format!("{name}: '{text}' is not a number")).at(name.to_owned());
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => {
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_a_number());
            }
            (mantissa, exponent.parse::<i32>().map_err(|_| out_of_range(name, text))?)
        }
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(not_a_number());
    }
    // value = ±digits · 10^scale, and half a unit of the last digit is 5 · 10^(scale - 1).
    let digits = format!("{whole}{fraction}");
    let scale = i64::from(exponent) - fraction.len() as i64;
    let value: f64 = text.parse().map_err(|_| not_a_number())?;
    let is_zero = digits.bytes().all(|b| b == b'0');
    if !value.is_finite() || (value == 0.0 && !is_zero) {
        return Err(out_of_range(name, text));
    }
    // `digits·10 + 5` and `digits·10 - 5`, at scale - 1, as exact decimal text.
    let above = format!("{digits}5");
    let below = match decrement(&digits) {
        Some(smaller) => (false, format!("{smaller}5")),
        None => (true, "5".to_owned()),
    };
    let at_scale = |negative: bool, digits: &str| -> f64 {
        let sign = if negative { "-" } else { "" };
        format!("{sign}{digits}e{}", scale - 1).parse().unwrap_or(f64::NAN)
    };
    let (lo, hi) = if negative {
        (at_scale(true, &above), at_scale(!below.0, &below.1))
    } else {
        (at_scale(below.0, &below.1), at_scale(false, &above))
    };
    if !lo.is_finite() || !hi.is_finite() {
        return Err(out_of_range(name, text));
    }
    Ok(QueryNumber { value, lo, hi })
}

fn out_of_range(name: &str, text: &str) -> FhirError {
    incorrect(format!("{name}: '{text}' is outside the range of numbers this server compares")).at(name.to_owned())
}

/// `digits - 1` as decimal text (leading zeros kept); `None` when `digits` is zero.
fn decrement(digits: &str) -> Option<String> {
    let mut bytes = digits.as_bytes().to_vec();
    for byte in bytes.iter_mut().rev() {
        if *byte == b'0' {
            *byte = b'9';
        } else {
            *byte -= 1;
            return Some(String::from_utf8(bytes).expect("ASCII digits"));
        }
    }
    None
}

fn number_range(prefix: Prefix, number: &QueryNumber) -> (Vec<u8>, Option<Vec<u8>>) {
    let enc = |v: f64| encode_f64(v).to_vec();
    let value = number.value;
    match prefix {
        Prefix::Eq if number.lo < number.hi => (enc(number.lo), Some(enc(number.hi))),
        Prefix::Eq => (enc(value), successor(&enc(value))),
        Prefix::Sa if number.lo < number.hi => (enc(number.hi), None),
        Prefix::Eb if number.lo < number.hi => (Vec::new(), Some(enc(number.lo))),
        Prefix::Gt | Prefix::Sa | Prefix::Ge => (enc(value), None),
        Prefix::Lt | Prefix::Eb => (Vec::new(), Some(enc(value))),
        Prefix::Le => (Vec::new(), successor(&enc(value))),
        Prefix::Ap => {
            let slack = (value.abs() * 0.1).max((number.hi - number.lo) / 2.0);
            (enc(value - slack), successor(&enc(value + slack)))
        }
        Prefix::Ne => (Vec::new(), None),
    }
}

fn number(name: &str, text: &str) -> Result<Alternative, FhirError> {
    let (prefix, rest) = prefix_of(text);
    let number = parse_number(name, rest)?;
    let (lo, hi) = number_range(prefix, &number);
    Ok(Alternative { key: None, pred: Pred::Number { prefix, number }, lo, hi })
}

fn quantity(name: &str, text: &str) -> Result<Alternative, FhirError> {
    // `number|system|code` matches that coded unit; `number||unit` the code or the
    // human-readable unit.
    let parts = split_bar(text);
    let cut = |part: &str| values::bounded(part.as_bytes().to_vec());
    let (number_text, units) = match parts.as_slice() {
        [number] => (number.as_str(), UnitMatch::Any),
        [number, system, code] if system.is_empty() => (number.as_str(), UnitMatch::CodeOrUnit(cut(code))),
        [number, system, code] => {
            (number.as_str(), UnitMatch::Coded { system: values::quantity_system(system), code: cut(code) })
        }
        _ => return Err(incorrect(format!("{name}: '{text}' is not [prefix]number|system|code"))),
    };
    let (prefix, rest) = prefix_of(number_text);
    let number = parse_number(name, rest)?;
    // The number leads every stored value, so its range bounds the scan whatever the units.
    let (lo, hi) = number_range(prefix, &number);
    Ok(Alternative {
        key: None,
        pred: Pred::Quantity { units, number: Box::new(Pred::Number { prefix, number }) },
        lo,
        hi,
    })
}

fn reference(def: &ParamDef, value: &str, base_url: &str, only: Option<ResourceType>) -> Vec<Alternative> {
    let local = crate::fhir::reference::relative_to(value, base_url);
    if local.contains('/') || local.contains(':') {
        let plain = crate::fhir::reference::without_version(local);
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
    let parts: Vec<&str> = split_unescaped(text, '$');
    if parts.len() != def.components.len() {
        return Err(incorrect(format!("{name} needs {} values separated by '$', not '{text}'", def.components.len())));
    }
    // Every stored form of the leading components: a plain token code may be stored as `code`
    // (with a system) or `|code` (without one); `system|` is any code of the system.
    let mut heads: Vec<Vec<Component>> = vec![Vec::new()];
    for (component, part) in def.components.iter().zip(&parts).take(parts.len() - 1) {
        let forms: Vec<Component> = match component.kind {
            ParamKind::Token => token(part)
                .into_iter()
                .map(|alternative| match alternative.pred {
                    Pred::StartsWith(prefix) => Component::Prefix(prefix),
                    Pred::EndsWith(suffix) => Component::Suffix(suffix),
                    _ => Component::Exact(alternative.lo),
                })
                .collect(),
            ParamKind::Uri | ParamKind::Reference => vec![Component::Exact(unescape(part).into_bytes())],
            ParamKind::String => vec![Component::Exact(normalize(&unescape(part)).into_bytes())],
            _ => {
                return Err(incorrect(format!("{name}: only the last component may be a {}", component.kind.as_str())));
            }
        };
        // Stored component values are cut to a bounded length (see `values::bounded`).
        let forms: Vec<Component> = forms
            .into_iter()
            .map(|form| match form {
                Component::Exact(bytes) => Component::Exact(values::bounded(bytes)),
                Component::Prefix(bytes) => Component::Prefix(values::bounded(bytes)),
                Component::Suffix(bytes) => Component::Suffix(bytes),
            })
            .collect();
        heads = heads
            .iter()
            .flat_map(|head| {
                forms.iter().map(move |form| {
                    let mut joined = head.clone();
                    joined.push(form.clone());
                    joined
                })
            })
            .collect();
    }
    let last_kind = def.components.last().map(|c| c.kind).unwrap_or(ParamKind::Token);
    let last = parts[parts.len() - 1];
    let tails = match last_kind {
        ParamKind::Token => token(last),
        ParamKind::Uri | ParamKind::Reference => vec![exact(unescape(last).into_bytes())],
        ParamKind::String => vec![starting_with(normalize(&unescape(last)).into_bytes())],
        ParamKind::Quantity => vec![quantity(name, last)?],
        ParamKind::Number => vec![number(name, &unescape(last))?],
        ParamKind::Date => vec![date(name, &unescape(last))?],
        _ => return Err(incorrect(format!("{name}: unsupported composite component"))),
    };
    let mut alternatives = Vec::new();
    for head in &heads {
        // The scan range: the exact leading components fix the start of every accepted value;
        // a prefix component ends what is fixed (the value goes on with any code).
        let mut fixed = Vec::new();
        let mut open = false;
        for component in head {
            match component {
                Component::Exact(bytes) => {
                    fixed.extend_from_slice(bytes);
                    fixed.extend_from_slice(&COMPONENT_SEPARATOR);
                }
                Component::Prefix(bytes) => {
                    fixed.extend_from_slice(bytes);
                    open = true;
                    break;
                }
                Component::Suffix(_) => {
                    open = true;
                    break;
                }
            }
        }
        for tail in &tails {
            let (lo, hi) = if open {
                (fixed.clone(), successor(&fixed))
            } else {
                let hi = match &tail.hi {
                    Some(h) => Some([fixed.clone(), h.clone()].concat()),
                    None => successor(&fixed),
                };
                ([fixed.clone(), tail.lo.clone()].concat(), hi)
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

/// Whether a resource whose index values are `values` (by index key) satisfies every clause:
/// the body-based counterpart of the engine's index probes (for versions no longer indexed,
/// and bodies not yet written).
pub fn clauses_match_values(clauses: &[Clause], values: &std::collections::HashMap<String, Vec<Vec<u8>>>) -> bool {
    clauses.iter().all(|clause| {
        if clause.any_of.is_empty() {
            clause.matches_keys(&|key| values.get(key).map_or(&[][..], Vec::as_slice))
        } else {
            clause.any_of.iter().any(|conjunction| clauses_match_values(conjunction, values))
        }
    })
}

/// The clause "is in the compartment of Patient `patient_id`".
pub fn compartment_clause(patient_id: &str) -> Clause {
    compartment_clause_of(std::slice::from_ref(&patient_id))
}

/// The clause "is in the compartment of one of `patients`" (the source Patients of one person).
pub fn compartment_clause_of<S: AsRef<str>>(patients: &[S]) -> Clause {
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
            stored_form: std::sync::OnceLock::new(),
        })
    });
    let references: Vec<String> = patients.iter().map(|patient| format!("Patient/{}", patient.as_ref())).collect();
    Clause {
        def: DEFINITION.clone(),
        written: format!("compartment {}", references.join(",")),
        key: super::compartment::COMPARTMENT_KEY.to_owned(),
        negated: false,
        missing: None,
        also_keys: Vec::new(),
        alternatives: references.into_iter().map(|reference| exact(reference.into_bytes())).collect(),
        any_of: Vec::new(),
    }
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

    /// One stored value per quantity: the number bounds the scan, the units are checked on the
    /// rest of the value.
    #[test]
    fn quantity_searches_check_the_units_after_the_number() {
        let stored = |number: f64, system: &str, code: &str, unit: &str| {
            values::quantity_key(number, &values::QuantityUnits { system, code, unit })
        };
        let pound = stored(100.5, "http://unitsofmeasure.org", "[lb_av]", "lb");
        let minute = stored(100.5, "http://unitsofmeasure.org", "/min", "");
        let bare = stored(100.5, "", "", "");
        for (query, value, expected) in [
            ("100.5", &pound, true),
            ("100.5", &bare, true),
            ("100.5||lb", &pound, true),
            ("100.5||[lb_av]", &pound, true),
            ("100.5|http://unitsofmeasure.org|[lb_av]", &pound, true),
            ("100.5|http://unitsofmeasure.org|lb", &pound, false),
            ("100.5|http://other.org|[lb_av]", &pound, false),
            ("100.5||/min", &minute, true),
            ("100.5||/min", &pound, false),
            ("100.5||lb", &bare, false),
            ("100.6||lb", &pound, false),
            ("gt100||lb", &pound, true),
            ("lt100||lb", &pound, false),
        ] {
            let clause = clause("Observation", "value-quantity", query);
            let alternative = &clause.alternatives[0];
            assert_eq!(alternative.pred.accepts(value), expected, "value-quantity={query}");
            if expected {
                assert!(in_range(alternative, value), "value-quantity={query}: outside the scan range");
            }
        }
        // In a composite the quantity follows the code, with the same checks.
        let composite = clause("Observation", "code-value-quantity", "http://loinc.org|29463-7$100.5||lb");
        let head = [&values::token_value("29463-7", "http://loinc.org")[..], &[0, 0]].concat();
        assert!(composite.alternatives.iter().any(|a| a.pred.accepts(&[&head[..], &pound].concat())));
        assert!(!composite.alternatives.iter().any(|a| a.pred.accepts(&[&head[..], &minute].concat())));
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
                ParamKind::Quantity => values::quantity_key(
                    target.parse().unwrap(),
                    &values::QuantityUnits { system: "http://unitsofmeasure.org", code: "/min", unit: "beats/min" },
                ),
                _ => encode_f64(target.parse().unwrap()).to_vec(),
            };
            let alternative = &clause.alternatives[0];
            assert!(alternative.pred.accepts(&value), "{name}={query} should accept {target}");
            assert!(in_range(alternative, &value), "{name}={query}: {target} outside the scan range");
        }
    }

    #[test]
    fn composite_token_components_accept_any_code_of_a_system() {
        // A stored token component is `code 0x00 system`.
        let stored = |system: &str, code: &str, value: f64| {
            [
                &values::token_value(code, system)[..],
                &[0, 0],
                &values::quantity_key(value, &values::QuantityUnits { system: "", code: "", unit: "" }),
            ]
            .concat()
        };
        let by_system = clause("Observation", "code-value-quantity", "http://loinc.org|$5.4");
        let alternative = &by_system.alternatives[0];
        for (system, code, value, expected) in [
            ("http://loinc.org", "8867-4", 5.4, true),
            ("http://loinc.org", "", 5.4, true),
            ("http://loinc.org", "8867-4", 6.0, false),
            ("http://loinc.org.uk", "x", 5.4, false),
            ("x.http://loinc.org", "x", 5.4, false),
            ("", "8867-4", 5.4, false),
        ] {
            let value = stored(system, code, value);
            assert_eq!(alternative.pred.accepts(&value), expected, "{system}|{code}");
            assert!(!expected || in_range(alternative, &value), "{system}|{code} outside the scan range");
        }
        // A plain code accepts it with any system or none; `|code` only without one.
        let any_system = clause("Observation", "code-value-quantity", "x$5.4");
        let without_system = clause("Observation", "code-value-quantity", "|x$5.4");
        for (system, expected_any, expected_without) in [("http://loinc.org", true, false), ("", true, true)] {
            let value = stored(system, "x", 5.4);
            assert_eq!(any_system.alternatives[0].pred.accepts(&value), expected_any, "{system}");
            assert!(in_range(&any_system.alternatives[0], &value));
            assert_eq!(without_system.alternatives[0].pred.accepts(&value), expected_without, "{system}");
        }
        assert!(!any_system.alternatives[0].pred.accepts(&stored("http://loinc.org", "xy", 5.4)));
        // Exact codes keep their exact scan.
        let exact = clause("Observation", "code-value-quantity", "http://loinc.org|x$5.4");
        assert!(exact.alternatives[0].pred.accepts(&stored("http://loinc.org", "x", 5.4)));
        assert!(!exact.alternatives[0].pred.accepts(&stored("http://loinc.org", "xy", 5.4)));
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
        let number = parse_number("n", "5.40").unwrap();
        assert!(number_matches(Prefix::Eq, &number, 5.404));
        assert!(!number_matches(Prefix::Eq, &number, 5.406));
        let number = parse_number("n", "100").unwrap();
        assert!(number_matches(Prefix::Eq, &number, 100.4) && !number_matches(Prefix::Eq, &number, 100.5));
    }

    #[test]
    fn implicit_ranges_are_exact_at_their_bounds() {
        let eq = |query: &str, stored: &str| {
            let stored: f64 = stored.parse().unwrap();
            let alternative = number("n", query).unwrap();
            let accepted = alternative.pred.accepts(&encode_f64(stored));
            // The scan range agrees with the predicate.
            assert_eq!(accepted, in_range(&alternative, &encode_f64(stored)), "{query} vs {stored}");
            accepted
        };
        assert!(eq("5.4", "5.35") && eq("5.4", "5.449999") && !eq("5.4", "5.45") && !eq("5.4", "5.3499999"));
        assert!(eq("0.1", "0.05") && !eq("0.1", "0.15") && !eq("0.1", "0.0499"));
        assert!(eq("-5.4", "-5.45") && !eq("-5.4", "-5.35") && eq("-5.4", "-5.36"));
        assert!(eq("0", "-0.5") && eq("0", "0.49") && !eq("0", "0.5"));
        // The exponent moves the last digit: 1e2 has one significant figure, 1.0e2 two.
        assert!(eq("1e2", "50") && eq("1e2", "149") && !eq("1e2", "150") && !eq("1e2", "49.9"));
        assert!(eq("1.0e2", "95") && !eq("1.0e2", "105") && eq("100", "100.49"));
        assert!(eq("2.5E-3", "0.00245") && !eq("2.5E-3", "0.00255"));
        assert!(eq("+7", "7.2") && eq("1000", "999.5") && !eq("1000", "999.49"));
        // Ranges finer than f64 match the value's f64.
        assert!(eq("0e-400", "0") && eq("0.0", "-0.0") && !eq("0e-400", "1e-300"));
        assert!(eq("5.40000000000000000000", "5.4") && !eq("5.40000000000000000000", "5.400000000000001"));
        // `sa` and `eb` lie beyond the implicit range, not just beyond the value.
        let prefixed = |query: &str, stored: &str| {
            let stored: f64 = stored.parse().unwrap();
            let alternative = number("n", query).unwrap();
            let accepted = alternative.pred.accepts(&encode_f64(stored));
            assert_eq!(accepted, in_range(&alternative, &encode_f64(stored)), "{query} vs {stored}");
            accepted
        };
        assert!(prefixed("sa100", "100.5") && !prefixed("sa100", "100.4") && !prefixed("sa100", "99"));
        assert!(prefixed("eb100", "99.49") && !prefixed("eb100", "99.5") && !prefixed("eb-2", "-2.5"));
        assert!(prefixed("eb-2", "-2.51") && prefixed("sa1.50", "1.505") && !prefixed("sa1.50", "1.504"));
        assert!(prefixed("gt100", "100.4") && prefixed("lt100", "99.6"));
        let bounds = parse_number("n", "100.5").unwrap();
        assert_eq!((bounds.lo, bounds.hi), (100.45, 100.55));
    }

    #[test]
    fn numbers_that_are_not_finite_decimals_are_errors() {
        for text in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "1e400",
            "-1e400",
            "1e-400",
            "1e99999999999",
            "",
            ".",
            "1e",
            "1.2.3",
            "0x10",
            "1_0",
        ] {
            assert!(parse_number("n", text).is_err(), "{text}");
        }
        assert!(
            parse_number("n", "0e-400").is_ok() && parse_number("n", ".5").is_ok() && parse_number("n", "5.").is_ok()
        );
        // Work is linear in the text: a value of 20 000 digits is still one pass (URLs bound it).
        let long = format!("5.{}", "3".repeat(20_000));
        let number = parse_number("n", &long).unwrap();
        assert!(number.lo <= 5.333_333_333_333_333 && 5.333_333_333_333_333 <= number.hi);
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
        let patient = ResourceType::PATIENT;
        for (name, value) in
            [("birthdate", "yesterday"), ("family:below", "x"), ("gender:missing", "maybe"), ("birthdate", "")]
        {
            assert!(parse_clause(patient, name, value, "").is_err(), "{name}={value}");
        }
        assert!(parse_clause(patient, "colour", "red", "").unwrap().is_none());
    }
}

#[cfg(test)]
mod escaping {
    use super::*;

    #[test]
    fn only_unescaped_separators_split() {
        assert_eq!(split_values(r"a,b\,c,d\\,e"), [r"a", r"b\,c", r"d\\", "e"]);
        assert_eq!(split_bar(r"s|a\|b"), ["s", "a|b"]);
        assert_eq!(split_unescaped(r"x\$y$5", '$'), [r"x\$y", "5"]);
        assert_eq!(unescape(r"a\,b\$c\|d\\e\"), r"a,b$c|d\e\");
    }

    #[test]
    fn tokens_honour_escaped_bars() {
        let values = |alternatives: Vec<Alternative>| -> Vec<String> {
            alternatives.into_iter().map(|a| String::from_utf8(a.lo).unwrap()).collect()
        };
        let preds =
            |alternatives: Vec<Alternative>| -> Vec<Pred> { alternatives.into_iter().map(|a| a.pred).collect() };
        assert_eq!(values(token(r"a\|b")), ["a|b\0"]);
        assert_eq!(preds(token(r"a\|b")), [Pred::StartsWith(b"a|b\0".to_vec())]);
        assert_eq!(values(token(r"s|a\|b")), ["a|b\0s"]);
        assert_eq!(values(token(r"|x\\y")), ["x\\y\0"]);
        assert_eq!(preds(token("s|")), [Pred::EndsWith(b"\0s".to_vec())]);
    }
}
