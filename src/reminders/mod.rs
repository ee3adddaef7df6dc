//! Appointment reminders: for each upcoming Appointment, each Patient taking part and each
//! configured lead time (e.g. 3 days and 1 day before), a Communication in the Patient's record
//! (the portal lists them), sent by email when the Patient has an address and SMTP is configured.
//!
//! A reminder's id is derived from its appointment, patient and lead time, and its state is the
//! Communication's own status, so each reminder is made once and sent once, across restarts:
//! - `preparation`: the appointment is within the largest lead time; this reminder is not due yet;
//! - `in-progress`: due, and being emailed. Written before the email goes, so that a restart
//!   finishes the sending rather than forgets it (a crash between the email and the next write
//!   can send it a second time: at least once, never silently lost);
//! - `completed`: sent (`sent` says when; `medium` names email when it was emailed);
//! - `not-done`: withdrawn before it was sent (the appointment was cancelled or deleted, or its
//!   time passed before the reminder could go).
//!
//! A moved appointment updates the text and the due time of its unsent reminders. A reminder
//! already sent is never sent again (one per appointment, patient and lead time); if its
//! appointment is then cancelled or moved, it gets a note saying so.
//!
//! A pass reads what can still change: the appointments starting within the largest lead time,
//! the unsent reminders, and the reminders sent within that time (an appointment can still be
//! ahead only for those). Each set is bounded by [`MAX_PER_PASS`]. The time each appointment is
//! reminded of is kept in an extension ([`START_EXTENSION`]), so that a move is told from an
//! edit of the description.

pub mod mail;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::fhir::{FhirError, Id, ResourceType};
use crate::search::parse_criteria;
use crate::store::{Action, Precondition, Snapshot, Store, Target, WriteOp, WriteRequest};

/// The identifier system of reminders; the value is `appointment|patient|lead`.
pub const IDENTIFIER_SYSTEM: &str = "urn:braid:reminder";
/// The extension holding the appointment start a reminder was made for.
pub const START_EXTENSION: &str = "urn:braid:reminder:appointment-start";
const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/communication-category";
const MEDIUM_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode";

/// Most appointments, and most reminders of each kind, one pass reads; the rest wait for the
/// next pass (a warning says so).
pub const MAX_PER_PASS: usize = 10_000;

/// How long a due reminder waits for the master patient index to catch up, when the Patient
/// has no email address of their own and the index may be about to link them to a person who
/// has one; then it is sent without email.
const WAIT_FOR_MATCHING_SECS: i64 = 600;

/// Appointment statuses that are settled to take place (not proposals, waitlists or
/// appointments still waiting for a participant's answer).
const ACTIVE: &[&str] = &["booked", "arrived", "checked-in"];

/// How reminders are made.
#[derive(Clone)]
pub struct Settings {
    /// Lead times, longest first; empty switches reminders off.
    pub lead_times: Vec<LeadTime>,
    /// The mailer, when SMTP is configured.
    pub mailer: Option<Arc<mail::Mailer>>,
    /// Where the portal is, for the email's link (`None`: the email names none).
    pub portal_url: Option<String>,
}

/// A lead time as written in the settings (`3d`, `12h`, `30m`) and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadTime {
    pub text: String,
    pub seconds: i64,
}

/// Parses `3d,1d,2h` into lead times, longest first (duplicates dropped).
pub fn parse_lead_times(text: &str) -> Result<Vec<LeadTime>, String> {
    let mut leads: Vec<LeadTime> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (number, unit) = part.split_at(part.len() - 1);
        let unit_seconds = match unit {
            "d" => 86_400,
            "h" => 3_600,
            "m" => 60,
            _ => {
                return Err(format!(
                    "'{part}': a lead time is a number of days, hours or minutes, like 3d, 12h or 30m"
                ));
            }
        };
        let count: i64 = number.parse().map_err(|_| format!("'{part}' is not a lead time like 3d, 12h or 30m"))?;
        if !(1..=366 * 86_400).contains(&(count * unit_seconds)) {
            return Err(format!("'{part}': a lead time is from one minute to a year"));
        }
        let seconds = count * unit_seconds;
        if !leads.iter().any(|lead| lead.seconds == seconds) {
            leads.push(LeadTime { text: lead_text(seconds), seconds });
        }
    }
    if leads.len() > 10 {
        return Err("at most 10 lead times".into());
    }
    leads.sort_by_key(|lead| std::cmp::Reverse(lead.seconds));
    Ok(leads)
}

/// A lead time in its one written form, in the largest unit that divides it (`24h` is `1d`),
/// so that a reminder's key does not change when the setting is written another way.
fn lead_text(seconds: i64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s => format!("{}m", s / 60),
    }
}

/// `2027-01-20T15:00:00Z`: how reminders write instants (`sent`, and a pass's search bounds).
fn utc_seconds(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    /// Reminders made (not yet due).
    pub scheduled: usize,
    /// Reminders sent, and those of them that went by email.
    pub sent: usize,
    pub emailed: usize,
    /// Unsent reminders whose text changed (their appointment moved or changed).
    pub updated: usize,
    /// Unsent reminders withdrawn.
    pub withdrawn: usize,
    /// Sent reminders given a note that their appointment was cancelled or moved.
    pub noted: usize,
    /// Emails that could not be sent this pass (tried again at the next; after the first
    /// failure of a pass, the others wait for the next pass).
    pub email_failures: usize,
    /// Reminders whose write failed (another writer got there first, or the store refused):
    /// looked at again at the next pass.
    pub write_failures: usize,
    /// Due reminders of Patients without an address of their own, waiting for the master
    /// patient index to link them (at most [`WAIT_FOR_MATCHING_SECS`]).
    pub waiting: usize,
}

/// What a reminder of one pass is settled against.
struct Pass<'a> {
    snapshot: &'a Snapshot,
    now: jiff::Timestamp,
    /// Whether the master patient index has Patient changes still to match.
    matching_behind: bool,
    /// Whether a shorter lead time of the same appointment is due too (then this one is not sent).
    superseded: bool,
    /// Whether an email of this pass failed already (the others then wait for the next pass
    /// rather than each waiting for the server's timeout).
    mail_down: bool,
}

/// The appointment reminder service.
pub struct Reminders {
    store: Store,
    settings: Settings,
    mpi: Option<Arc<crate::mpi::service::Mpi>>,
}

/// A reminder's key: which appointment, which patient, which lead time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    appointment: String,
    patient: String,
    lead: String,
}

impl Key {
    fn id(&self) -> String {
        let digest = Sha256::digest(format!("{}|{}|{}", self.appointment, self.patient, self.lead).as_bytes());
        format!("reminder-{}", crate::fhir::hex(&digest[..16]))
    }

    fn from_identifier(value: &str) -> Option<Key> {
        let mut parts = value.splitn(3, '|');
        let (appointment, patient, lead) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Key { appointment: appointment.into(), patient: patient.into(), lead: lead.into() })
    }
}

/// An appointment as reminders see it.
struct Appointment {
    id: String,
    active: bool,
    start: Option<jiff::Timestamp>,
    /// The offset the appointment's start was written with, to write its time as the provider did.
    offset: jiff::tz::Offset,
    description: String,
    provider: Option<String>,
    patients: Vec<String>,
}

impl Appointment {
    fn read(id: &str, body: &Value) -> Appointment {
        let status = body["status"].as_str().unwrap_or("");
        let written = body["start"].as_str().unwrap_or("");
        let start = written.parse::<jiff::Timestamp>().ok();
        let offset = jiff::fmt::temporal::Pieces::parse(written)
            .ok()
            .and_then(|pieces| match pieces.offset()? {
                jiff::fmt::temporal::PiecesOffset::Numeric(numeric) => Some(numeric.offset()),
                _ => None,
            })
            .unwrap_or(jiff::tz::Offset::UTC);
        let concept = |value: &Value| {
            value["text"]
                .as_str()
                .or_else(|| value["coding"].as_array()?.iter().find_map(|coding| coding["display"].as_str()))
                .map(str::to_owned)
        };
        let description = body["description"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| concept(&body["serviceType"][0]))
            .or_else(|| concept(&body["appointmentType"]))
            .unwrap_or_else(|| "your appointment".into());
        let provider = crate::sources::namespace::source_of(body).map(str::to_owned);
        let patients = body["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|participant| participant["status"].as_str() != Some("declined"))
            .filter_map(|participant| participant["actor"]["reference"].as_str()?.strip_prefix("Patient/"))
            .filter(|patient| Id::parse(patient).is_ok())
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Appointment {
            id: id.to_owned(),
            active: ACTIVE.contains(&status),
            start,
            offset,
            description,
            provider,
            patients,
        }
    }

    /// The reminder's words: what, when, where.
    fn text(&self, lead: &str) -> String {
        let when = self.when();
        let with = self.provider.as_deref().map(|provider| format!(" with {provider}")).unwrap_or_default();
        format!("Reminder ({lead} before): {} {when}{with}.", capitalised(&self.description))
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

impl Appointment {
    /// `on Tuesday 20 January 2027, 15:00 UTC` (or `…, 16:00 UTC+01:00`: in the offset the
    /// provider wrote).
    fn when(&self) -> String {
        match self.start {
            Some(start) => format!("on {}", format_time(start, self.offset)),
            None => "at a time not yet set".to_owned(),
        }
    }
}

/// `Tuesday 20 January 2027, 15:00 UTC`, at `offset` from UTC.
fn format_time(at: jiff::Timestamp, offset: jiff::tz::Offset) -> String {
    let local = at.to_zoned(jiff::tz::TimeZone::fixed(offset));
    let seconds = offset.seconds();
    let zone = match seconds {
        0 => "UTC".to_owned(),
        _ => {
            let sign = if seconds < 0 { '-' } else { '+' };
            format!("UTC{sign}{:02}:{:02}", seconds.abs() / 3600, seconds.abs() % 3600 / 60)
        }
    };
    format!("{} {zone}", local.strftime("%A %-d %B %Y, %H:%M"))
}

impl Reminders {
    pub fn new(store: Store, settings: Settings, mpi: Option<Arc<crate::mpi::service::Mpi>>) -> Reminders {
        Reminders { store, settings, mpi }
    }

    /// Runs passes every `interval` until the returned task is aborted (or the process ends).
    pub fn start(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.pass(jiff::Timestamp::now()).await {
                    Ok(report) if report != PassReport::default() => tracing::info!(?report, "appointment reminders"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "appointment reminders: the pass failed; trying again later"),
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// One pass at time `now`: makes, sends, updates and withdraws what is due.
    pub async fn pass(&self, now: jiff::Timestamp) -> Result<PassReport, FhirError> {
        let mut report = PassReport::default();
        let Some(longest) = self.settings.lead_times.first() else { return Ok(report) };
        let snapshot = self.store.snapshot()?;
        let horizon = now + jiff::SignedDuration::from_secs(longest.seconds);

        // What may need work: each upcoming appointment's reminders, and every reminder that may
        // still change.
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        let upcoming = find(
            &snapshot,
            ResourceType::APPOINTMENT,
            &format!("date=gt{}&date=le{}", utc_seconds(now), utc_seconds(horizon)),
        )?;
        // Each appointment is read once a pass: here, or below for a reminder's own.
        let mut appointments: BTreeMap<String, Option<Appointment>> = BTreeMap::new();
        for id in &upcoming {
            let Some(body) = current_body(&snapshot, ResourceType::APPOINTMENT, id)? else { continue };
            let appointment = Appointment::read(id, &body);
            for patient in &appointment.patients {
                for lead in &self.settings.lead_times {
                    keys.insert(Key { appointment: id.clone(), patient: patient.clone(), lead: lead.text.clone() });
                }
            }
            appointments.insert(id.clone(), Some(appointment));
        }
        let reminders = format!("category={CATEGORY_SYSTEM}|reminder");
        let recent = find(
            &snapshot,
            ResourceType::COMMUNICATION,
            &format!(
                "{reminders}&status=completed&sent=gt{}",
                utc_seconds(now - jiff::SignedDuration::from_secs(longest.seconds))
            ),
        )?;
        let unsent = find(
            &snapshot,
            ResourceType::COMMUNICATION,
            &format!("{reminders}&status=preparation,in-progress&identifier={IDENTIFIER_SYSTEM}|"),
        )?;
        let mut existing: BTreeMap<String, (u64, Value)> = BTreeMap::new();
        for id in recent.iter().chain(&unsent) {
            let Some(version) = snapshot.current(ResourceType::COMMUNICATION, id)? else { continue };
            let Ok(body) = serde_json::from_slice::<Value>(&version.body) else { continue };
            if let Some(key) = key_of(&body) {
                keys.insert(key);
            }
            existing.insert(id.clone(), (version.version, body));
        }

        // Patients matched since their last write may be about to gain the person's address.
        let matching_behind = match (&self.settings.mailer, &self.mpi) {
            (Some(_), Some(mpi)) => mpi.lag()?.pending > 0,
            _ => false,
        };
        let mut mail_down = false;
        for key in keys {
            let id = key.id();
            let found = match existing.remove(&id) {
                Some(found) => Some(found),
                None => match snapshot.current(ResourceType::COMMUNICATION, &id)? {
                    // Deleted (by an operator, or the patient's app): settled, never made again.
                    Some(version) if version.is_deleted() => continue,
                    Some(version) => serde_json::from_slice(&version.body).ok().map(|body| (version.version, body)),
                    None => None,
                },
            };
            if !appointments.contains_key(&key.appointment) {
                let body = current_body(&snapshot, ResourceType::APPOINTMENT, &key.appointment)?;
                appointments
                    .insert(key.appointment.clone(), body.map(|body| Appointment::read(&key.appointment, &body)));
            }
            let appointment = appointments[&key.appointment].as_ref();
            let Some(lead) = self.settings.lead_times.iter().find(|lead| lead.text == key.lead) else {
                // A lead time no longer configured: its unsent reminders are withdrawn.
                if let Some((version, body)) = found.filter(|(_, body)| unsent_status(body)) {
                    let reason = "Reminders this long before are no longer sent.";
                    match self.write(&id, withdrawn(body, reason), Some(version)).await {
                        Ok(_) => report.withdrawn += 1,
                        Err(_) => report.write_failures += 1,
                    }
                }
                continue;
            };
            // A shorter lead time due too (a late booking, a move earlier, reminders just
            // switched on): only the last reminder before the appointment goes out.
            let superseded = appointment.and_then(|a| a.start).is_some_and(|start| {
                self.settings.lead_times.iter().any(|other| {
                    other.seconds < lead.seconds && start - jiff::SignedDuration::from_secs(other.seconds) <= now
                })
            });
            let mut context = Pass { snapshot: &snapshot, now, matching_behind, superseded, mail_down };
            if let Err(error) = self.settle(&mut context, &key, lead, appointment, found, &mut report).await {
                tracing::warn!(reminder = %id, %error, "a reminder could not be settled; trying again at the next pass");
                report.write_failures += 1;
            }
            mail_down = context.mail_down;
        }
        Ok(report)
    }

    /// Brings one reminder to the state its appointment and the pass's time call for.
    async fn settle(
        &self,
        pass: &mut Pass<'_>,
        key: &Key,
        lead: &LeadTime,
        appointment: Option<&Appointment>,
        found: Option<(u64, Value)>,
        report: &mut PassReport,
    ) -> Result<(), FhirError> {
        let now = pass.now;
        let id = key.id();
        let version = found.as_ref().map(|(version, _)| *version);
        let status = found.as_ref().and_then(|(_, body)| body["status"].as_str().map(str::to_owned));
        let takes_part = appointment.is_some_and(|a| a.patients.contains(&key.patient));
        let live = appointment.filter(|a| a.active && takes_part);
        let ahead = live.and_then(|a| a.start).is_some_and(|start| start > now);
        match (status.as_deref(), live) {
            // Sent: never again; a later cancellation or move is noted on it.
            (Some("completed"), _) => {
                let (_, body) = found.unwrap_or_default();
                let note = match live {
                    None => Some(
                        match appointment {
                            None => "The appointment was deleted after this reminder was sent.",
                            Some(_) if !takes_part => "The patient no longer takes part in the appointment.",
                            Some(_) => "The appointment was cancelled after this reminder was sent.",
                        }
                        .to_owned(),
                    ),
                    Some(a) if a.start != start_of(&body) => {
                        Some(format!("The appointment moved after this reminder was sent: it is now {}.", a.when()))
                    }
                    Some(_) => None,
                };
                if let Some(note) = note.filter(|note| !has_note(&body, note)) {
                    self.write(&id, with_note(body, &note), version).await?;
                    report.noted += 1;
                }
            }
            // Withdrawn, and still not taking place: nothing to do.
            (Some("not-done"), None) => {}
            (_, None) => {
                if let Some((version, body)) = found.filter(|(_, body)| unsent_status(body)) {
                    let reason = match appointment {
                        None => "The appointment was deleted.",
                        Some(_) if !takes_part => "The patient no longer takes part in the appointment.",
                        Some(_) => "The appointment was cancelled.",
                    };
                    self.write(&id, withdrawn(body, reason), Some(version)).await?;
                    report.withdrawn += 1;
                }
            }
            (_, Some(_)) if !ahead => {
                // Its time has come and gone without the reminder going out (the server was
                // stopped throughout the window).
                if let Some((version, body)) = found.filter(|(_, body)| unsent_status(body)) {
                    self.write(
                        &id,
                        withdrawn(body, "The appointment's time passed before the reminder was sent."),
                        Some(version),
                    )
                    .await?;
                    report.withdrawn += 1;
                }
            }
            (status, Some(appointment)) => {
                let start = appointment.start.expect("an appointment ahead has a start");
                let due = start - jiff::SignedDuration::from_secs(lead.seconds);
                let text = appointment.text(&lead.text);
                let fresh = reminder(key, &id, appointment, &text);
                if due > now {
                    match status {
                        None | Some("not-done") => {
                            self.write(&id, fresh, version).await?;
                            report.scheduled += 1;
                        }
                        Some(_) => {
                            let (_, body) = found.unwrap_or_default();
                            if body["payload"][0]["contentString"].as_str() != Some(text.as_str())
                                || start_of(&body) != Some(start)
                            {
                                let mut updated = fresh;
                                updated["status"] = body["status"].clone();
                                self.write(&id, updated, version).await?;
                                report.updated += 1;
                            }
                        }
                    }
                    return Ok(());
                }
                if pass.superseded {
                    if let Some((version, body)) = found.filter(|(_, body)| unsent_status(body)) {
                        self.write(&id, withdrawn(body, "A later reminder was due at the same time."), Some(version))
                            .await?;
                        report.withdrawn += 1;
                    }
                    return Ok(());
                }
                // Due: sent now, by email when there is an address and a mailer.
                let address = match &self.settings.mailer {
                    Some(_) => self.email_of(pass.snapshot, &key.patient)?,
                    None => None,
                };
                if address.is_none()
                    && pass.matching_behind
                    && now.duration_since(due).as_secs() < WAIT_FOR_MATCHING_SECS
                {
                    report.waiting += 1;
                    return Ok(());
                }
                let mut version = version;
                if let (Some(mailer), Some(address)) = (&self.settings.mailer, address) {
                    if pass.mail_down {
                        report.email_failures += 1;
                        return Ok(());
                    }
                    if status != Some("in-progress") {
                        let mut sending = fresh.clone();
                        sending["status"] = json!("in-progress");
                        version = Some(self.write(&id, sending, version).await?);
                    }
                    let message = mail::Reminder {
                        to: address,
                        when: format_time(start, appointment.offset),
                        provider: appointment.provider.clone(),
                        portal_url: self.settings.portal_url.clone(),
                    };
                    if let Err(error) = mailer.send(&message).await {
                        tracing::warn!(reminder = %id, %error, "a reminder could not be emailed; trying again at the next pass");
                        report.email_failures += 1;
                        pass.mail_down = true;
                        return Ok(());
                    }
                    let mut sent = fresh;
                    sent["status"] = json!("completed");
                    sent["sent"] = json!(utc_seconds(now));
                    sent["medium"] =
                        json!([{"coding": [{"system": MEDIUM_SYSTEM, "code": "EMAILWRIT", "display": "email"}]}]);
                    self.write(&id, sent, version).await?;
                    report.emailed += 1;
                } else {
                    let mut sent = fresh;
                    sent["status"] = json!("completed");
                    sent["sent"] = json!(utc_seconds(now));
                    self.write(&id, sent, version).await?;
                }
                report.sent += 1;
            }
        }
        Ok(())
    }

    /// The Patient's email address, or else that of the person's golden Patient (kept by the
    /// master patient index, its contacts chosen from every source's).
    fn email_of(&self, snapshot: &Snapshot, patient: &str) -> Result<Option<String>, FhirError> {
        if let Some(body) = current_body(snapshot, ResourceType::PATIENT, patient)? {
            if let Some(address) = email_in(&body) {
                return Ok(Some(address));
            }
        }
        let Some(mpi) = &self.mpi else { return Ok(None) };
        let Some(golden) = mpi.read(|overlay| Ok(overlay.golden_id_of(patient)?))? else { return Ok(None) };
        let body = mpi.golden(&golden)?.and_then(|version| serde_json::from_slice::<Value>(&version.body).ok());
        Ok(body.as_ref().and_then(email_in))
    }

    /// Writes a reminder: a create when `version` is `None`, else an update of that version
    /// (a concurrent change makes the write fail, and the next pass looks again). Returns the
    /// version written.
    async fn write(&self, id: &str, body: Value, version: Option<u64>) -> Result<u64, FhirError> {
        let Value::Object(body) = body else { return Err(FhirError::fault("reminder")) };
        let precondition = Precondition { if_match: version, if_none_match_any: version.is_none() };
        let target = Target::Id(Id::parse(id).map_err(|_| FhirError::fault("reminder id"))?);
        let op = WriteOp {
            full_url: None,
            action: Action::Update { resource_type: ResourceType::COMMUNICATION, target, resource: body, precondition },
        };
        let outcomes = self.store.write(WriteRequest { ops: vec![op], ..WriteRequest::default() }).await?;
        outcomes.first().and_then(|outcome| outcome.version).ok_or_else(|| FhirError::fault("reminder write"))
    }
}

/// The ids of the current resources matching `query`, at most [`MAX_PER_PASS`].
fn find(snapshot: &Snapshot, resource_type: ResourceType, query: &str) -> Result<Vec<String>, FhirError> {
    let criteria = parse_criteria(resource_type, query)?;
    let ids = (criteria.find)(&snapshot.index(), resource_type, MAX_PER_PASS)?;
    if ids.len() == MAX_PER_PASS {
        tracing::warn!(%resource_type, query, "appointment reminders: more than {MAX_PER_PASS} to look at; the rest wait for the next pass");
    }
    Ok(ids.into_iter().map(|id| id.as_str().to_owned()).collect())
}

fn current_body(snapshot: &Snapshot, resource_type: ResourceType, id: &str) -> Result<Option<Value>, FhirError> {
    let Some(version) = snapshot.current(resource_type, id)? else { return Ok(None) };
    if version.is_deleted() {
        return Ok(None);
    }
    Ok(serde_json::from_slice(&version.body).ok())
}

/// The first valid email address among a Patient's contacts.
fn email_in(patient: &Value) -> Option<String> {
    patient["telecom"]
        .as_array()?
        .iter()
        .filter(|telecom| telecom["system"] == "email")
        .filter_map(|telecom| telecom["value"].as_str())
        .find(|address| mail::is_address(address))
        .map(str::to_owned)
}

fn key_of(body: &Value) -> Option<Key> {
    body["identifier"]
        .as_array()?
        .iter()
        .find(|identifier| identifier["system"] == IDENTIFIER_SYSTEM)
        .and_then(|identifier| Key::from_identifier(identifier["value"].as_str()?))
}

fn start_of(body: &Value) -> Option<jiff::Timestamp> {
    body["extension"]
        .as_array()?
        .iter()
        .find(|extension| extension["url"] == START_EXTENSION)
        .and_then(|extension| extension["valueDateTime"].as_str())
        .and_then(|start| start.parse::<jiff::Timestamp>().ok())
}

fn unsent_status(body: &Value) -> bool {
    matches!(body["status"].as_str(), Some("preparation" | "in-progress"))
}

fn has_note(body: &Value, note: &str) -> bool {
    body["note"].as_array().into_iter().flatten().any(|existing| existing["text"] == note)
}

fn with_note(mut body: Value, note: &str) -> Value {
    let mut notes = body["note"].as_array().cloned().unwrap_or_default();
    notes.push(json!({"text": note}));
    body["note"] = Value::Array(notes);
    body
}

fn withdrawn(mut body: Value, reason: &str) -> Value {
    body["status"] = json!("not-done");
    body["statusReason"] = json!({"text": reason});
    if let Some(object) = body.as_object_mut() {
        object.remove("meta");
    }
    body
}

/// A reminder not yet sent (`preparation`); the caller sets another status where it must.
fn reminder(key: &Key, id: &str, appointment: &Appointment, text: &str) -> Value {
    let mut body = Map::new();
    body.insert("resourceType".into(), json!("Communication"));
    body.insert("id".into(), json!(id));
    if let Some(start) = appointment.start {
        body.insert("extension".into(), json!([{"url": START_EXTENSION, "valueDateTime": start.to_string()}]));
    }
    body.insert(
        "identifier".into(),
        json!([{"system": IDENTIFIER_SYSTEM, "value": format!("{}|{}|{}", key.appointment, key.patient, key.lead)}]),
    );
    body.insert("status".into(), json!("preparation"));
    body.insert(
        "category".into(),
        json!([{"coding": [{"system": CATEGORY_SYSTEM, "code": "reminder", "display": "Reminder"}]}]),
    );
    body.insert("subject".into(), json!({"reference": format!("Patient/{}", key.patient)}));
    body.insert("about".into(), json!([{"reference": format!("Appointment/{}", appointment.id)}]));
    body.insert("recipient".into(), json!([{"reference": format!("Patient/{}", key.patient)}]));
    body.insert("payload".into(), json!([{"contentString": text}]));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    const T0: &str = "2027-03-01T09:00:00Z";

    fn at(offset_hours: i64) -> jiff::Timestamp {
        T0.parse::<jiff::Timestamp>().unwrap() + jiff::SignedDuration::from_hours(offset_hours)
    }

    fn settings() -> Settings {
        Settings { lead_times: parse_lead_times("1d,3d").unwrap(), mailer: None, portal_url: None }
    }

    async fn put(store: &Store, resource: Value) {
        let resource_type = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
        let id = Id::parse(resource["id"].as_str().unwrap()).unwrap();
        let Value::Object(body) = resource else { unreachable!() };
        let action = Action::Update {
            resource_type,
            target: Target::Id(id),
            resource: body,
            precondition: Precondition::default(),
        };
        store
            .write(WriteRequest { ops: vec![WriteOp { full_url: None, action }], ..WriteRequest::default() })
            .await
            .unwrap();
    }

    fn appointment(status: &str, start: jiff::Timestamp) -> Value {
        json!({"resourceType": "Appointment", "id": "visit", "status": status, "description": "blood pressure review",
               "start": start.to_string(), "end": (start + jiff::SignedDuration::from_mins(30)).to_string(),
               "participant": [{"actor": {"reference": "Patient/ann"}, "status": "accepted"}]})
    }

    /// Every reminder as stored: (lead, status, sent?, notes), each checked against R4.
    fn reminders(store: &Store) -> Vec<(String, String, bool, Vec<String>)> {
        let snapshot = store.snapshot().unwrap();
        let mut found = Vec::new();
        for lead in ["3d", "1d"] {
            let key = Key { appointment: "visit".into(), patient: "ann".into(), lead: lead.into() };
            let Some(body) = current_body(&snapshot, ResourceType::COMMUNICATION, &key.id()).unwrap() else { continue };
            crate::fhir::validation::validator()
                .validate_value(ResourceType::COMMUNICATION, &body)
                .unwrap_or_else(|error| panic!("{body}: {error:?}"));
            assert_eq!(key_of(&body), Some(key));
            let notes =
                body["note"].as_array().into_iter().flatten().map(|n| n["text"].as_str().unwrap().to_owned()).collect();
            found.push((
                lead.to_owned(),
                body["status"].as_str().unwrap().to_owned(),
                body.get("sent").is_some(),
                notes,
            ));
        }
        found
    }

    #[test]
    fn reminders_are_made_sent_once_and_follow_their_appointment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        let runtime = testing::runtime();
        runtime.block_on(async {
            let store = testing::open(&path);
            put(&store, json!({"resourceType": "Patient", "id": "ann"})).await;
            // Five days ahead: nothing yet (the longest lead is 3 days).
            put(&store, appointment("booked", at(5 * 24))).await;
            let service = Reminders::new(store.clone(), settings(), None);
            assert_eq!(service.pass(at(0)).await.unwrap(), PassReport::default());
            assert!(reminders(&store).is_empty());
            // Within three days: the three-day reminder is due and sent, the one-day one is made.
            let report = service.pass(at(2 * 24 + 1)).await.unwrap();
            assert_eq!((report.sent, report.scheduled), (1, 1), "{report:?}");
            let state = reminders(&store);
            assert_eq!((state[0].1.as_str(), state[0].2), ("completed", true));
            assert_eq!((state[1].1.as_str(), state[1].2), ("preparation", false));
            // Passes after it change nothing.
            for hour in [2, 3, 4, 30] {
                assert_eq!(service.pass(at(2 * 24 + hour)).await.unwrap(), PassReport::default());
            }
            let text = {
                let snapshot = store.snapshot().unwrap();
                let key = Key { appointment: "visit".into(), patient: "ann".into(), lead: "3d".into() };
                current_body(&snapshot, ResourceType::COMMUNICATION, &key.id()).unwrap().unwrap()["payload"][0]["contentString"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(text, "Reminder (3d before): Blood pressure review on Saturday 6 March 2027, 09:00 UTC.");
            // A new service over the same store (a restart) sends nothing again.
            let restarted = Reminders::new(store.clone(), settings(), None);
            assert_eq!(restarted.pass(at(2 * 24 + 5)).await.unwrap(), PassReport::default());

            // Moved a day later: the unsent reminder follows, the sent one is noted, not resent.
            put(&store, appointment("booked", at(6 * 24))).await;
            let report = restarted.pass(at(2 * 24 + 6)).await.unwrap();
            assert_eq!((report.updated, report.noted, report.sent), (1, 1, 0), "{report:?}");
            let state = reminders(&store);
            assert_eq!(state[0].0, "3d");
            assert_eq!(state[0].3, vec!["The appointment moved after this reminder was sent: it is now on Sunday 7 March 2027, 09:00 UTC."]);
            assert_eq!((state[1].1.as_str(), state[1].2), ("preparation", false));
            assert_eq!(restarted.pass(at(2 * 24 + 7)).await.unwrap(), PassReport::default(), "each change is made once");

            // Cancelled: the unsent one is withdrawn, the sent one noted.
            put(&store, appointment("cancelled", at(6 * 24))).await;
            let report = restarted.pass(at(2 * 24 + 8)).await.unwrap();
            assert_eq!((report.withdrawn, report.noted), (1, 1), "{report:?}");
            let state = reminders(&store);
            assert_eq!(state[0].3.len(), 2);
            assert_eq!(state[1].1, "not-done");
            // Past its due time nothing is sent for a cancelled appointment.
            assert_eq!(restarted.pass(at(5 * 24 + 10)).await.unwrap(), PassReport::default());
            // Booked again: the withdrawn reminder comes back, and goes out when due.
            put(&store, appointment("booked", at(6 * 24))).await;
            let report = restarted.pass(at(5 * 24 + 10)).await.unwrap();
            assert_eq!(report.sent, 1, "{report:?}");
            assert_eq!(reminders(&store)[1].1, "completed");
            drop((service, restarted));
            testing::close(store);
        });
    }

    fn reminder_body(store: &Store, lead: &str) -> Option<Value> {
        let key = Key { appointment: "visit".into(), patient: "ann".into(), lead: lead.into() };
        current_body(&store.snapshot().unwrap(), ResourceType::COMMUNICATION, &key.id()).unwrap()
    }

    #[test]
    fn a_late_booking_gets_only_its_last_reminder_and_times_keep_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = testing::runtime();
        runtime.block_on(async {
            let store = testing::open(&dir.path().join("r.redb"));
            let service = Reminders::new(store.clone(), settings(), None);
            // Twelve hours ahead, written in UTC+01:00 with a fraction of a second: both lead
            // times are past, only the one-day reminder goes.
            let mut visit = appointment("booked", at(12));
            visit["start"] = json!("2027-03-01T22:00:00.250+01:00");
            put(&store, visit).await;
            let report = service.pass(at(0)).await.unwrap();
            assert_eq!((report.sent, report.scheduled, report.withdrawn), (1, 0, 0), "{report:?}");
            assert!(reminder_body(&store, "3d").is_none(), "the three-day reminder is never made");
            let sent = reminder_body(&store, "1d").unwrap();
            assert_eq!(
                sent["payload"][0]["contentString"],
                "Reminder (1d before): Blood pressure review on Monday 1 March 2027, 22:00 UTC+01:00."
            );
            // The start's fraction is kept, so later passes see no move.
            for hour in [1, 2, 3] {
                assert_eq!(service.pass(at(hour)).await.unwrap(), PassReport::default());
            }
            // A reminder deleted by someone is settled: never made or sent again.
            let key = Key { appointment: "visit".into(), patient: "ann".into(), lead: "1d".into() };
            let delete = WriteOp {
                full_url: None,
                action: Action::Delete {
                    resource_type: ResourceType::COMMUNICATION,
                    target: Target::Id(Id::parse(&key.id()).unwrap()),
                    precondition: Precondition::default(),
                },
            };
            store.write(WriteRequest { ops: vec![delete], ..WriteRequest::default() }).await.unwrap();
            assert_eq!(service.pass(at(4)).await.unwrap(), PassReport::default());
            // A proposed appointment is not reminded of.
            let mut proposed = appointment("proposed", at(30));
            proposed["id"] = json!("maybe");
            put(&store, proposed).await;
            assert_eq!(service.pass(at(5)).await.unwrap(), PassReport::default());
            drop(service);
            testing::close(store);
        });
    }

    #[test]
    fn lead_times_are_parsed_and_bounded() {
        let leads = parse_lead_times(" 1d, 3d ,12h,3d,72h,90m").unwrap();
        assert_eq!(leads.iter().map(|lead| lead.text.as_str()).collect::<Vec<_>>(), ["3d", "1d", "12h", "90m"]);
        assert_eq!(parse_lead_times("24h").unwrap()[0].text, "1d", "one written form per length");
        assert_eq!(leads[2].seconds, 12 * 3600);
        assert!(parse_lead_times("").unwrap().is_empty());
        for bad in ["3", "3w", "-1d", "0m", "400d", "d", "1.5d"] {
            assert!(parse_lead_times(bad).is_err(), "{bad}");
        }
    }
}
