//! The master patient index's state, in the store's `mpi` table, and the links it holds.
//!
//! Keys (all UTF-8; `\0` separates parts, as no id or key contains it):
//! - `rec/{patient}`: the source Patient's [`Entry`]: its normalised record, its blocking keys
//!   and the version it was read from;
//! - `blk/{key}\0{patient}`: the blocking index, its value the Patient's record
//!   ([`encode_block_value`]), so that the Patients filed under a key, and what they are scored
//!   on, are one prefix scan;
//! - `link/{patient}\0{golden}`: a [`Link`] from a source Patient to a golden Patient;
//! - `member/{golden}\0{patient}`: the same links from the golden side (no value);
//! - `gold/{patient}\0{golden}`: the patient's MATCH link alone (no value; at most one per
//!   patient), so that finding a candidate's golden Patient reads one small key and decodes
//!   nothing;
//! - `dup/{golden}\0{golden}`: a POSSIBLE_DUPLICATE [`Link`] between two golden Patients (the
//!   lower id first);
//! - `golden/{golden}`: a golden Patient as the API shows it ([`StoredGolden`]): golden Patients
//!   are Braid's derived view of its sources, kept here rather than among the resources the
//!   sources and clients wrote, so that searches, conditional writes, histories and exports
//!   of those are what was written;
//! - `redirect/{golden}`: the golden Patient it was merged into (UTF-8), kept for unmerging;
//! - `meta/cursor`: the change feed's last processed logical time (u64 BE);
//! - `meta/parameters`: the trained [`Parameters`](super::score::Parameters) and report.
//!
//! The index is read through an [`Overlay`]: the committed state with a batch's pending
//! changes on top. Every change to the state is made under [`super::service::Mpi`]'s lock, so
//! what a batch or an operation read is still true when it commits.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::record::PersonRecord;
use crate::store::StoreError;
use crate::store::auth::{AuthRead, AuthTxn};

/// What a link says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MatchResult {
    Match,
    PossibleMatch,
    NoMatch,
    PossibleDuplicate,
}

/// Who made a link: the matcher (changed by it as the data changes) or an operator (never
/// changed automatically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinkSource {
    Auto,
    Manual,
}

/// One earlier state of a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkEvent {
    pub result: MatchResult,
    pub source: LinkSource,
    pub score: Option<f64>,
    /// When it took this state (RFC 3339).
    pub at: String,
    /// The golden Patient the link pointed to in this state, when it pointed to another one
    /// (the link moved in a merge or an unmerge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<String>,
}

/// Most earlier states a link keeps.
pub const MAX_HISTORY: usize = 20;

/// A link between a source Patient and a golden Patient (or, for POSSIBLE_DUPLICATE, two
/// golden Patients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub result: MatchResult,
    pub source: LinkSource,
    /// The match probability when the matcher scored it.
    pub score: Option<f64>,
    pub created: String,
    pub updated: String,
    /// Earlier states, oldest first, at most [`MAX_HISTORY`].
    #[serde(default)]
    pub history: Vec<LinkEvent>,
}

impl Link {
    pub fn new(result: MatchResult, source: LinkSource, score: Option<f64>, now: &str) -> Link {
        Link { result, source, score, created: now.to_owned(), updated: now.to_owned(), history: Vec::new() }
    }

    /// This link changed to `result` by `source`; the state it leaves goes to its history.
    pub fn change(&mut self, result: MatchResult, source: LinkSource, score: Option<f64>, now: &str) {
        if self.history.len() == MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(LinkEvent {
            result: self.result,
            source: self.source,
            score: self.score,
            at: self.updated.clone(),
            golden: None,
        });
        self.result = result;
        self.source = source;
        self.score = score;
        self.updated = now.to_owned();
    }
}

/// A source Patient as the index holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub record: PersonRecord,
    pub keys: Vec<String>,
    pub version: u64,
}

impl Entry {
    /// The entry in a compact binary form (see [`write_record`]): its format byte, version,
    /// record and blocking keys.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(ENTRY_FORMAT);
        out.extend_from_slice(&self.version.to_le_bytes());
        write_record(&mut out, &self.record);
        write_texts(&mut out, self.keys.iter());
        out
    }

    /// Reads what [`Entry::encode`] wrote; anything else is corrupt.
    pub fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        let read = || -> Option<Entry> {
            let mut reader = Reader(bytes);
            if reader.take(1)? != [ENTRY_FORMAT] {
                return None;
            }
            let version = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
            let record = reader.record()?;
            let keys = reader.texts()?;
            reader.0.is_empty().then_some(Entry { record, keys, version })
        };
        read().ok_or_else(|| StoreError::Corrupt(bytes.to_vec()))
    }
}

/// The value of a blocking-index key: the filed Patient's record, so that scoring the Patients
/// of a block reads the block alone, not one record per candidate elsewhere in the table.
pub fn encode_block_value(record: &PersonRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(BLOCK_FORMAT);
    write_record(&mut out, record);
    out
}

/// Reads what [`encode_block_value`] wrote. `Ok(None)` for the empty value an index built
/// before records were kept in its blocks has (the record is then read from `rec/`).
pub fn decode_block_value(bytes: &[u8]) -> Result<Option<PersonRecord>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let read = || -> Option<PersonRecord> {
        let mut reader = Reader(bytes);
        if reader.take(1)? != [BLOCK_FORMAT] {
            return None;
        }
        let record = reader.record()?;
        reader.0.is_empty().then_some(record)
    };
    read().map(Some).ok_or_else(|| StoreError::Corrupt(bytes.to_vec()))
}

/// The first byte of an encoded [`Entry`]: its format.
const ENTRY_FORMAT: u8 = 1;

/// The first byte of a blocking-index value: its format.
const BLOCK_FORMAT: u8 = 1;

fn write_text(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn write_texts<'a>(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = &'a String>) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for value in values {
        write_text(out, value);
    }
}

/// A record in a compact binary form: matching decodes a record for every candidate it scores,
/// and JSON cost several times more. Strings are a u32 length and UTF-8 bytes, lists a u32
/// count and their items; see [`Reader::record`].
fn write_record(out: &mut Vec<u8>, record: &PersonRecord) {
    for value in [&record.given, &record.family, &record.given_sound.0, &record.given_sound.1] {
        write_text(out, value);
    }
    for value in [&record.family_sound.0, &record.family_sound.1, &record.address, &record.postcode, &record.city] {
        write_text(out, value);
    }
    match record.birth_date {
        Some(digits) => {
            out.push(1);
            out.extend_from_slice(&digits);
        }
        None => out.push(0),
    }
    write_text(out, record.sex.as_deref().unwrap_or(""));
    write_texts(out, record.phones.iter());
    write_texts(out, record.emails.iter());
    out.extend_from_slice(&(record.identifiers.len() as u32).to_le_bytes());
    for (system, value) in &record.identifiers {
        write_text(out, system);
        write_text(out, value);
    }
}

/// Reads the binary forms; every method returns `None` on bytes it cannot read.
struct Reader<'b>(&'b [u8]);

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(count)?;
        self.0 = rest;
        Some(head)
    }

    fn count(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn text(&mut self) -> Option<String> {
        let length = self.count()?;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    fn texts(&mut self) -> Option<Vec<String>> {
        // Each item takes at least its 4-byte length: a count beyond that is corrupt.
        let count = self.count().filter(|count| *count <= self.0.len() / 4)?;
        (0..count).map(|_| self.text()).collect()
    }

    /// What [`write_record`] wrote.
    fn record(&mut self) -> Option<PersonRecord> {
        let given = self.text()?;
        let family = self.text()?;
        let given_sound = (self.text()?, self.text()?);
        let family_sound = (self.text()?, self.text()?);
        let (address, postcode, city) = (self.text()?, self.text()?, self.text()?);
        let birth_date = match self.take(1)? {
            [1] => Some(self.take(8)?.try_into().ok()?),
            _ => None,
        };
        let sex = Some(self.text()?).filter(|sex| !sex.is_empty());
        let phones = self.texts()?;
        let emails = self.texts()?;
        let identifier_count = self.count().filter(|count| *count <= self.0.len() / 8)?;
        let identifiers = (0..identifier_count).map(|_| Some((self.text()?, self.text()?))).collect::<Option<_>>()?;
        Some(PersonRecord {
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
        })
    }
}

pub fn record_key(patient: &str) -> Vec<u8> {
    format!("rec/{patient}").into_bytes()
}

pub fn block_prefix(key: &str) -> Vec<u8> {
    format!("blk/{key}\0").into_bytes()
}

pub fn block_key(key: &str, patient: &str) -> Vec<u8> {
    format!("blk/{key}\0{patient}").into_bytes()
}

pub fn link_prefix(patient: &str) -> Vec<u8> {
    format!("link/{patient}\0").into_bytes()
}

pub fn link_key(patient: &str, golden: &str) -> Vec<u8> {
    format!("link/{patient}\0{golden}").into_bytes()
}

pub fn member_prefix(golden: &str) -> Vec<u8> {
    format!("member/{golden}\0").into_bytes()
}

pub fn member_key(golden: &str, patient: &str) -> Vec<u8> {
    format!("member/{golden}\0{patient}").into_bytes()
}

pub fn matched_prefix(patient: &str) -> Vec<u8> {
    format!("gold/{patient}\0").into_bytes()
}

pub fn matched_key(patient: &str, golden: &str) -> Vec<u8> {
    format!("gold/{patient}\0{golden}").into_bytes()
}

pub fn duplicate_key(a: &str, b: &str) -> Vec<u8> {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("dup/{low}\0{high}").into_bytes()
}

pub fn golden_key(golden: &str) -> Vec<u8> {
    format!("golden/{golden}").into_bytes()
}

/// A golden Patient's current version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredGolden {
    /// Counts from 1, one more each time its content changes.
    pub version: u64,
    /// When this version was made (microseconds since the epoch).
    pub last_updated_micros: i64,
    /// The Patient, with `meta.versionId` and `meta.lastUpdated`; `None` once it has no
    /// member left (it was deleted).
    pub body: Option<serde_json::Value>,
}

pub fn redirect_key(golden: &str) -> Vec<u8> {
    format!("redirect/{golden}").into_bytes()
}

pub const RECORD_PREFIX: &[u8] = b"rec/";
pub const LINK_PREFIX: &[u8] = b"link/";
pub const DUPLICATE_PREFIX: &[u8] = b"dup/";
pub const CURSOR_KEY: &[u8] = b"meta/cursor";
pub const PARAMETERS_KEY: &[u8] = b"meta/parameters";

/// The part of a key after its prefix.
fn suffix(key: &[u8], prefix_len: usize) -> String {
    String::from_utf8_lossy(&key[prefix_len..]).into_owned()
}

/// The committed state with pending changes on top.
///
/// Between the two there may be a batch whose commit is under way ([`Overlay::over`]): the
/// matcher plans one batch while the writer commits the one before. Its changes are read as if
/// committed; laying them over a committed state that already holds them changes nothing, so
/// the overlay reads the same whether or not that commit has finished.
///
/// Records and golden-Patient lookups are kept decoded as they are read: matching a batch reads
/// the same candidates for many Patients. Invariant: every change goes through [`Overlay::put`]
/// or [`Overlay::remove`], which drop what they make stale.
pub struct Overlay<'a> {
    committed: &'a AuthRead,
    /// The changes of the batch being committed, if one is.
    committing: Option<Arc<Pending>>,
    pending: Pending,
    /// By source Patient: its record as last read.
    entries: RefCell<HashMap<String, Option<Entry>>>,
    /// By source Patient: the golden Patient of its MATCH link, as last read.
    goldens: RefCell<HashMap<String, Option<String>>>,
}

/// Most decoded records and golden-Patient lookups an overlay keeps.
const MAX_CACHED: usize = 100_000;

impl<'a> Overlay<'a> {
    pub fn new(committed: &'a AuthRead) -> Overlay<'a> {
        Overlay {
            committed,
            committing: None,
            pending: BTreeMap::new(),
            entries: RefCell::new(HashMap::new()),
            goldens: RefCell::new(HashMap::new()),
        }
    }

    /// The committed state with `committing` (changes whose commit is under way, see above)
    /// and then this overlay's own changes on top.
    pub fn over(committed: &'a AuthRead, committing: Arc<Pending>) -> Overlay<'a> {
        Overlay { committing: Some(committing), ..Overlay::new(committed) }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.pending.get(key) {
            return Ok(value.clone());
        }
        match self.committing.as_ref().and_then(|committing| committing.get(key)) {
            Some(value) => Ok(value.clone()),
            None => self.committed.get(key),
        }
    }

    /// The changes under `prefix` not yet in the committed state, in key order: this overlay's
    /// own over those being committed (`None`: removed).
    fn changes_under(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        let own = changes_under(&self.pending, prefix);
        let Some(committing) = self.committing.as_deref() else { return own };
        let mut merged: BTreeMap<&[u8], Option<&[u8]>> = changes_under(committing, prefix).into_iter().collect();
        merged.extend(own);
        merged.into_iter().collect()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.forget_decoded(&key);
        self.pending.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.forget_decoded(&key);
        self.pending.insert(key, None);
    }

    /// Drops what is kept decoded of the record or links `key` changes.
    fn forget_decoded(&mut self, key: &[u8]) {
        if let Some(patient) = key.strip_prefix(RECORD_PREFIX) {
            self.entries.get_mut().remove(String::from_utf8_lossy(patient).as_ref());
        } else if let Some((patient, _)) = pair_of(key, b"gold/") {
            self.goldens.get_mut().remove(&patient);
        }
    }

    /// The keys under `prefix`, at most `max`, committed and pending merged.
    pub fn scan_keys(&self, prefix: &[u8], max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.scan(prefix, max)?.into_iter().map(|(key, _)| key).collect())
    }

    /// The rows under `prefix`, at most `max`, committed and pending merged.
    pub fn scan(&self, prefix: &[u8], max: usize) -> Result<Vec<crate::store::auth::Row>, StoreError> {
        let pending = self.changes_under(prefix);
        // Read past `max` by the pending changes under the prefix, so that removed keys do not
        // hide live ones.
        let committed = self.committed.scan_at_most(prefix, max + pending.len())?;
        if pending.is_empty() {
            return Ok(committed);
        }
        let mut rows: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            committed.into_iter().map(|(key, value)| (key, Some(value))).collect();
        for (key, value) in pending {
            rows.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        }
        Ok(rows.into_iter().filter_map(|(key, value)| Some((key, value?))).take(max).collect())
    }

    pub fn entry(&self, patient: &str) -> Result<Option<Entry>, StoreError> {
        if let Some(entry) = self.entries.borrow().get(patient) {
            return Ok(entry.clone());
        }
        let entry = self.get(&record_key(patient))?.map(|bytes| Entry::decode(&bytes)).transpose()?;
        let mut entries = self.entries.borrow_mut();
        if entries.len() < MAX_CACHED {
            entries.insert(patient.to_owned(), entry.clone());
        }
        Ok(entry)
    }

    pub fn put_entry(&mut self, patient: &str, entry: &Entry) {
        self.put(record_key(patient), entry.encode());
    }

    /// Calls `visit` with each Patient filed under a blocking key (at most `max`, in no
    /// particular order): its id and the value filed with it (see [`decode_block_value`]).
    /// Returns how many it visited. The committed rows are read in place, not copied.
    pub fn visit_block(&self, key: &str, max: usize, mut visit: impl FnMut(&str, &[u8])) -> Result<usize, StoreError> {
        let prefix = block_prefix(key);
        // What the batch changed under the key (at least the Patient being matched, filed
        // just before): it hides the committed rows it replaces.
        let pending = self.changes_under(&prefix);
        let mut visited = 0;
        let mut each = |key: &[u8], value: &[u8]| {
            if visited < max
                && let Ok(patient) = std::str::from_utf8(&key[prefix.len()..])
            {
                visit(patient, value);
                visited += 1;
            }
        };
        self.committed.visit(&prefix, max + pending.len(), |key, value| {
            if pending.binary_search_by(|(pending_key, _)| (*pending_key).cmp(key)).is_err() {
                each(key, value);
            }
            Ok(())
        })?;
        for (key, value) in pending {
            if let Some(value) = value {
                each(key, value);
            }
        }
        Ok(visited)
    }

    /// A source Patient's links: `(golden, link)`, at most `max`.
    pub fn links(&self, patient: &str, max: usize) -> Result<Vec<(String, Link)>, StoreError> {
        let prefix = link_prefix(patient);
        let mut links = Vec::new();
        for (key, value) in self.scan(&prefix, max)? {
            if let Some(link) = decode(Some(value))? {
                links.push((suffix(&key, prefix.len()), link));
            }
        }
        Ok(links)
    }

    /// The link from a source Patient to a golden Patient, if there is one.
    pub fn link(&self, patient: &str, golden: &str) -> Result<Option<Link>, StoreError> {
        decode(self.get(&link_key(patient, golden))?)
    }

    pub fn put_link(&mut self, patient: &str, golden: &str, link: &Link) {
        self.put(link_key(patient, golden), encode(link));
        self.put(member_key(golden, patient), Vec::new());
        if link.result == MatchResult::Match {
            self.put(matched_key(patient, golden), Vec::new());
        } else {
            self.remove(matched_key(patient, golden));
        }
    }

    pub fn remove_link(&mut self, patient: &str, golden: &str) {
        self.remove(link_key(patient, golden));
        self.remove(member_key(golden, patient));
        self.remove(matched_key(patient, golden));
    }

    /// The source Patients linked to a golden Patient (any result), at most `max`.
    pub fn members(&self, golden: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let prefix = member_prefix(golden);
        Ok(self.scan_keys(&prefix, max)?.iter().map(|k| suffix(k, prefix.len())).collect())
    }

    /// The source Patients with a MATCH link to a golden Patient, at most `max` read.
    pub fn matched_members(&self, golden: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let mut matched = Vec::new();
        for member in self.members(golden, max)? {
            if self.link(&member, golden)?.is_some_and(|link| link.result == MatchResult::Match) {
                matched.push(member);
            }
        }
        Ok(matched)
    }

    /// The golden Patient a source Patient has a MATCH link to.
    /// The golden Patient a source Patient has a MATCH link to.
    pub fn golden_id_of(&self, patient: &str) -> Result<Option<String>, StoreError> {
        if let Some(golden) = self.goldens.borrow().get(patient) {
            return Ok(golden.clone());
        }
        let prefix = matched_prefix(patient);
        let golden = self.scan_keys(&prefix, 1)?.first().map(|key| suffix(key, prefix.len()));
        let mut goldens = self.goldens.borrow_mut();
        if goldens.len() < MAX_CACHED {
            goldens.insert(patient.to_owned(), golden.clone());
        }
        Ok(golden)
    }

    /// The golden Patient a source Patient has a MATCH link to, with the link.
    pub fn golden_of(&self, patient: &str) -> Result<Option<(String, Link)>, StoreError> {
        let Some(golden) = self.golden_id_of(patient)? else { return Ok(None) };
        Ok(self.link(patient, &golden)?.map(|link| (golden, link)))
    }

    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(self.get(CURSOR_KEY)?.and_then(|bytes| bytes.try_into().ok().map(u64::from_be_bytes)).unwrap_or(0))
    }

    pub fn set_cursor(&mut self, t: u64) {
        self.put(CURSOR_KEY.to_vec(), t.to_be_bytes().to_vec());
    }

    /// A golden Patient as last made.
    pub fn golden(&self, golden: &str) -> Result<Option<StoredGolden>, StoreError> {
        decode(self.get(&golden_key(golden))?)
    }

    pub fn put_golden(&mut self, golden: &str, stored: &StoredGolden) {
        self.put(golden_key(golden), encode(stored));
    }

    /// The golden Patient `golden` was merged into, if it was.
    pub fn redirect(&self, golden: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(&redirect_key(golden))?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn set_redirect(&mut self, from: &str, to: &str) {
        self.put(redirect_key(from), to.as_bytes().to_vec());
    }

    pub fn remove_redirect(&mut self, from: &str) {
        self.remove(redirect_key(from));
    }

    /// Whether `changes` were made on top of the committed state.
    pub fn changed(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The pending changes, to be applied in the commit that goes with them.
    pub fn into_pending(self) -> Pending {
        self.pending
    }
}

/// Changes to the index's state, by key (`None`: removed).
pub type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The changes in `changes` under `prefix`, in key order.
fn changes_under<'c>(changes: &'c Pending, prefix: &[u8]) -> Vec<(&'c [u8], Option<&'c [u8]>)> {
    let under = changes.range(prefix.to_vec()..).take_while(|(key, _)| key.starts_with(prefix));
    under.map(|(key, value)| (key.as_slice(), value.as_deref())).collect()
}

/// Splits a `link/{patient}\0{golden}` or `dup/{a}\0{b}` key into its two ids.
pub fn pair_of(key: &[u8], prefix: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    let (first, second) = rest.split_once('\0')?;
    Some((first.to_owned(), second.to_owned()))
}

/// Most links one source Patient has (one MATCH, the POSSIBLE_MATCHes and NO_MATCHes an
/// operator or the matcher made): the bound of every scan of a Patient's links.
pub const MAX_LINKS: usize = 64;

/// Applies pending changes inside the writer's transaction.
pub fn apply(pending: &Pending, txn: &mut AuthTxn<'_>) {
    for (key, value) in pending {
        match value {
            Some(value) => txn.insert(key, value),
            None => txn.remove(key),
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("MPI state serialises")
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    match bytes {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| StoreError::Corrupt(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entries_read_back_as_written_and_damage_is_corrupt() {
        let record = PersonRecord::from_patient(&json!({"name": [{"given": ["Zoë"], "family": "O'Brien"}],
            "birthDate": "1984-03-07", "gender": "female",
            "address": [{"line": ["12 Harbour St"], "city": "Sydney", "postalCode": "2000"}],
            "telecom": [{"system": "phone", "value": "0298765432"}, {"system": "email", "value": "z@x.example"}],
            "identifier": [{"system": "http://ns.example/id", "value": "42"}]}));
        let entry = Entry { record, keys: vec!["a|b".into(), "c".into()], version: 7 };
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        let empty = Entry { record: PersonRecord::default(), keys: Vec::new(), version: 0 };
        assert_eq!(Entry::decode(&empty.encode()).unwrap(), empty);
        for cut in [0, 1, 9, bytes.len() - 1] {
            assert!(Entry::decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Entry::decode(&longer).is_err());
        // A count that claims more items than bytes left is refused before anything is read.
        let mut huge = empty.encode();
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&huge).is_err());
    }

    #[test]
    fn block_values_hold_the_record_and_an_empty_one_is_from_before() {
        let record = PersonRecord::from_patient(&json!({"name": [{"given": ["Ana"], "family": "Lopez"}],
            "birthDate": "1990-12-01", "identifier": [{"system": "http://ns.example/id", "value": "7"}]}));
        let bytes = encode_block_value(&record);
        assert_eq!(decode_block_value(&bytes).unwrap(), Some(record));
        assert_eq!(decode_block_value(&[]).unwrap(), None, "an index built before: read rec/");
        assert!(decode_block_value(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_block_value(&[9, 0, 0]).is_err(), "an unknown format");
    }

    #[test]
    fn visiting_a_block_sees_the_pending_changes_over_the_committed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db"));
        let committed: Vec<(Vec<u8>, Vec<u8>)> =
            ["a", "b", "c"].iter().map(|id| (block_key("k", id), format!("old {id}").into_bytes())).collect();
        crate::store::testing::runtime().block_on(async {
            let rows = committed.clone();
            store
                .mpi_write(move |txn| {
                    for (key, value) in &rows {
                        txn.insert(key, value);
                    }
                    Ok(())
                })
                .await
                .unwrap();
        });
        let seen = store
            .mpi_read(|read| {
                let mut overlay = Overlay::new(read);
                overlay.remove(block_key("k", "a"));
                overlay.put(block_key("k", "b"), b"new b".to_vec());
                overlay.put(block_key("k", "d"), b"new d".to_vec());
                overlay.put(block_key("other", "e"), b"elsewhere".to_vec());
                let mut seen = Vec::new();
                let count = overlay.visit_block("k", 10, |id, value| {
                    seen.push((id.to_owned(), String::from_utf8(value.to_vec()).unwrap()));
                })?;
                assert_eq!(count, seen.len());
                let mut bounded = 0;
                overlay.visit_block("k", 2, |_, _| bounded += 1)?;
                assert_eq!(bounded, 2, "at most max");
                Ok(seen)
            })
            .unwrap();
        let mut seen = seen;
        seen.sort();
        assert_eq!(
            seen,
            [("b".into(), "new b".into()), ("c".into(), "old c".into()), ("d".into(), "new d".into())]
                as [(String, String); 3]
        );
    }

    /// A batch planned while the one before commits reads the same whether that commit has
    /// finished or not: the changes being committed lie between the committed rows and its own.
    #[test]
    fn changes_being_committed_read_as_committed_under_the_overlays_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db"));
        let write = |rows: Vec<(Vec<u8>, Option<Vec<u8>>)>| {
            crate::store::testing::runtime().block_on(async {
                store
                    .mpi_write(move |txn| {
                        for (key, value) in &rows {
                            match value {
                                Some(value) => txn.insert(key, value),
                                None => txn.remove(key),
                            }
                        }
                        Ok(())
                    })
                    .await
                    .unwrap()
            })
        };
        write(["a", "b", "c"].iter().map(|id| (block_key("k", id), Some(format!("old {id}").into_bytes()))).collect());
        // The batch before: removes a, changes b, files d, moves the cursor.
        let mut before = Pending::new();
        before.insert(block_key("k", "a"), None);
        before.insert(block_key("k", "b"), Some(b"before b".to_vec()));
        before.insert(block_key("k", "d"), Some(b"before d".to_vec()));
        before.insert(CURSOR_KEY.to_vec(), Some(9u64.to_be_bytes().to_vec()));
        let before = Arc::new(before);
        let read_all = || {
            store
                .mpi_read(|read| {
                    let mut overlay = Overlay::over(read, before.clone());
                    assert_eq!(overlay.cursor()?, 9);
                    // This batch's own changes win over the batch before.
                    overlay.put(block_key("k", "d"), b"own d".to_vec());
                    overlay.remove(block_key("k", "c"));
                    let mut seen = Vec::new();
                    overlay.visit_block("k", 10, |id, value| {
                        seen.push((id.to_owned(), String::from_utf8(value.to_vec()).unwrap()));
                    })?;
                    seen.sort();
                    let scanned: Vec<(Vec<u8>, Vec<u8>)> = overlay.scan(&block_prefix("k"), 10)?;
                    assert_eq!(scanned.len(), seen.len());
                    assert_eq!(overlay.get(&block_key("k", "a"))?, None);
                    Ok(seen)
                })
                .unwrap()
        };
        let expected: Vec<(String, String)> = vec![("b".into(), "before b".into()), ("d".into(), "own d".into())];
        assert_eq!(read_all(), expected, "the batch before not committed yet");
        write(before.iter().map(|(key, value)| (key.clone(), value.clone())).collect());
        assert_eq!(read_all(), expected, "the batch before committed");
    }
}
