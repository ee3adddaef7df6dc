//! An operator's changes to the links (the `$mdm-*` operations): each works on an [`Overlay`]
//! of the index's state, under [`super::service::Mpi::change`], and names the golden Patients
//! whose members changed so that they are rebuilt in the same commit.
//!
//! Every link an operator sets is MANUAL, which the matcher never changes. A source Patient
//! has at most one MATCH: making another golden Patient its MATCH replaces an automatic one
//! and is refused over a manual one. A source Patient left without a MATCH (an operator said
//! NO_MATCH to its golden Patient) is matched again at once, never to a golden Patient it has
//! a NO_MATCH with. A merge moves every link of one golden Patient to another and keeps the
//! first as an inactive Patient that redirects to the second; an unmerge moves links back (or
//! splits chosen members off into a golden Patient of their own), each link's history saying
//! where it was.

use std::collections::BTreeSet;

use super::golden;
use super::matcher::{self, Matcher};
use super::state::{self, Link, LinkEvent, LinkSource, MatchResult, Overlay};
use crate::fhir::{FhirError, IssueCode};

/// Most links one golden Patient may have for a merge or an unmerge to move them in one
/// commit.
pub const MAX_MOVED: usize = 1_000;

fn invalid(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

/// Refuses an id that is not a live, unmerged golden Patient.
pub fn require_golden(overlay: &Overlay<'_>, id: &str) -> Result<(), FhirError> {
    let live = golden::is_golden(id) && overlay.golden(id)?.is_some_and(|stored| stored.body.is_some());
    if !live {
        return Err(FhirError::not_found(format!("Patient/{id} is not a golden Patient")));
    }
    if let Some(to) = overlay.redirect(id)? {
        return Err(invalid(format!("Patient/{id} was merged into Patient/{to}: use that one")));
    }
    Ok(())
}

/// Refuses an id that is not a source Patient the index holds.
pub fn require_source(overlay: &Overlay<'_>, id: &str) -> Result<(), FhirError> {
    if golden::is_golden(id) || overlay.entry(id)?.is_none() {
        return Err(FhirError::not_found(format!(
            "Patient/{id} is not a source Patient the master patient index holds (yet: matching follows writes \
             within moments)"
        )));
    }
    Ok(())
}

/// Sets the manual link from `patient` to `golden` to `result` (the link's earlier state goes
/// to its history); see the module's description for what a MATCH and a NO_MATCH entail.
#[allow(clippy::too_many_arguments)]
fn set_manual(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    patient: &str,
    golden_id: &str,
    result: MatchResult,
    existing: Option<Link>,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Link, FhirError> {
    let was_match = existing.as_ref().is_some_and(|link| link.result == MatchResult::Match);
    if result == MatchResult::Match {
        for (other, link) in overlay.links(patient, state::MAX_LINKS)? {
            if other != golden_id && link.result == MatchResult::Match {
                if link.source == LinkSource::Manual {
                    return Err(FhirError::conflict(format!(
                        "Patient/{patient} has a MANUAL MATCH with Patient/{other}: make that link NO_MATCH first"
                    )));
                }
                overlay.remove_link(patient, &other);
                touched.insert(other);
            }
        }
    }
    let link = match existing {
        Some(mut link) => {
            link.change(result, LinkSource::Manual, link.score, now);
            link
        }
        None => Link::new(result, LinkSource::Manual, None, now),
    };
    overlay.put_link(patient, golden_id, &link);
    touched.insert(golden_id.to_owned());
    if was_match && result != MatchResult::Match {
        // It needs a golden Patient: the best other one, or a new one.
        matcher::rematch(overlay, matcher, patient, now, touched)?;
    }
    Ok(link)
}

/// `$mdm-update-link`: an existing link becomes a MANUAL MATCH or NO_MATCH.
pub fn update_link(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    golden_id: &str,
    patient: &str,
    result: MatchResult,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Link, FhirError> {
    if !matches!(result, MatchResult::Match | MatchResult::NoMatch) {
        return Err(invalid("$mdm-update-link sets a link to MATCH or NO_MATCH"));
    }
    require_golden(overlay, golden_id)?;
    require_source(overlay, patient)?;
    let Some(existing) = overlay.link(patient, golden_id)? else {
        return Err(FhirError::not_found(format!(
            "there is no link between Patient/{patient} and Patient/{golden_id}: $mdm-create-link makes one"
        )));
    };
    set_manual(overlay, matcher, patient, golden_id, result, Some(existing), now, touched)
}

/// `$mdm-create-link`: a new MANUAL link (MATCH, NO_MATCH or POSSIBLE_MATCH).
pub fn create_link(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    golden_id: &str,
    patient: &str,
    result: MatchResult,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Link, FhirError> {
    if result == MatchResult::PossibleDuplicate {
        return Err(invalid("$mdm-create-link makes a MATCH, NO_MATCH or POSSIBLE_MATCH link"));
    }
    require_golden(overlay, golden_id)?;
    require_source(overlay, patient)?;
    if overlay.link(patient, golden_id)?.is_some() {
        return Err(FhirError::conflict(format!(
            "Patient/{patient} and Patient/{golden_id} are linked already: $mdm-update-link changes the link"
        )));
    }
    if overlay.links(patient, state::MAX_LINKS)?.len() >= state::MAX_LINKS {
        return Err(invalid(format!("Patient/{patient} has the most links a Patient may have")));
    }
    set_manual(overlay, matcher, patient, golden_id, result, None, now, touched)
}

/// `link` moved from the golden Patient `from`: its state before the move goes to its history.
fn moved(mut link: Link, from: &str, result: MatchResult, source: LinkSource, now: &str) -> Link {
    link.change(result, source, link.score, now);
    if let Some(event) = link.history.last_mut() {
        event.golden = Some(from.to_owned());
    }
    link
}

/// `$mdm-merge-golden-resources`: every link of `from` moves to `to` (a MATCH becomes a
/// MANUAL MATCH: an operator said these are one person); `from` redirects to `to`. Returns the
/// links moved.
pub fn merge(
    overlay: &mut Overlay<'_>,
    from: &str,
    to: &str,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<usize, FhirError> {
    if from == to {
        return Err(invalid("a golden Patient cannot be merged into itself"));
    }
    require_golden(overlay, from)?;
    require_golden(overlay, to)?;
    let members = overlay.members(from, MAX_MOVED + 1)?;
    if members.len() > MAX_MOVED {
        return Err(invalid(format!("Patient/{from} has more than {MAX_MOVED} links: too many to merge at once")));
    }
    for patient in &members {
        let Some(link) = overlay.link(patient, from)? else { continue };
        overlay.remove_link(patient, from);
        let (result, source) = match link.result {
            MatchResult::Match => (MatchResult::Match, LinkSource::Manual),
            other => (other, link.source),
        };
        let mut merged = moved(link, from, result, source, now);
        if let Some(existing) = overlay.link(patient, to)? {
            // It had a link to `to` already: the merged one stands, the other's states before it.
            let mut history = existing.history.clone();
            history.push(LinkEvent {
                result: existing.result,
                source: existing.source,
                score: existing.score,
                at: existing.updated.clone(),
                golden: None,
            });
            history.append(&mut merged.history);
            let excess = history.len().saturating_sub(state::MAX_HISTORY);
            history.drain(..excess);
            merged.history = history;
        }
        overlay.put_link(patient, to, &merged);
    }
    overlay.remove(state::duplicate_key(from, to));
    overlay.set_redirect(from, to);
    touched.insert(from.to_owned());
    touched.insert(to.to_owned());
    Ok(members.len())
}

/// `$mdm-not-duplicate`: two golden Patients are not the same person; the matcher does not
/// flag them again.
pub fn not_duplicate(overlay: &mut Overlay<'_>, a: &str, b: &str, now: &str) -> Result<Link, FhirError> {
    require_golden(overlay, a)?;
    require_golden(overlay, b)?;
    let key = state::duplicate_key(a, b);
    let Some(mut link) = state::decode::<Link>(overlay.get(&key)?)? else {
        return Err(FhirError::not_found(format!("Patient/{a} and Patient/{b} are not marked as possible duplicates")));
    };
    link.change(MatchResult::NoMatch, LinkSource::Manual, link.score, now);
    overlay.put(key, state::encode(&link));
    Ok(link)
}

/// What an unmerge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmerged {
    /// The golden Patients the links went to (one restored or made per group).
    pub goldens: Vec<String>,
    /// The source Patients moved.
    pub moved: Vec<String>,
}

/// Unmerge: splits a person that should be two back apart.
/// - Without `patients`: the links merged into `golden_id` from other golden Patients go back
///   to them, as they were before the merge, and those golden Patients stand again.
/// - With `patients` (MATCH members of `golden_id`): they leave it for a golden Patient of
///   their own (the one they were merged from, if they all came from one), each with a MANUAL
///   MATCH there and a MANUAL NO_MATCH with `golden_id`; the members that stay get a MANUAL
///   NO_MATCH with the new one, so that the matcher does not join them again.
#[allow(clippy::too_many_arguments)]
pub fn unmerge(
    overlay: &mut Overlay<'_>,
    golden_id: &str,
    patients: &[String],
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Unmerged, FhirError> {
    require_golden(overlay, golden_id)?;
    let members = overlay.members(golden_id, MAX_MOVED + 1)?;
    if members.len() > MAX_MOVED {
        return Err(invalid(format!("Patient/{golden_id} has more than {MAX_MOVED} links: too many to unmerge")));
    }
    // Where each member's link came from by a merge into this golden Patient.
    let mut merged_from: Vec<(String, Link, String)> = Vec::new();
    for patient in &members {
        if let Some(link) = overlay.link(patient, golden_id)?
            && let Some(from) = link.history.last().and_then(|event| event.golden.clone())
            && overlay.redirect(&from)?.as_deref() == Some(golden_id)
        {
            merged_from.push((patient.clone(), link, from));
        }
    }
    touched.insert(golden_id.to_owned());
    if patients.is_empty() {
        if merged_from.is_empty() {
            return Err(invalid(format!(
                "nothing was merged into Patient/{golden_id}: name the source Patients (resourceId) to split off"
            )));
        }
        let mut goldens = BTreeSet::new();
        let mut moved_back = Vec::new();
        for (patient, link, from) in merged_from {
            let before = link.history.last().cloned().expect("a merged link has the state before its move");
            overlay.remove_link(&patient, golden_id);
            let restored = moved(link, golden_id, before.result, before.source, now);
            overlay.put_link(&patient, &from, &restored);
            overlay.remove_redirect(&from);
            touched.insert(from.clone());
            goldens.insert(from);
            moved_back.push(patient);
        }
        return Ok(Unmerged { goldens: goldens.into_iter().collect(), moved: moved_back });
    }
    let mut unique: BTreeSet<&str> = BTreeSet::new();
    for patient in patients {
        let is_member = overlay.link(patient, golden_id)?.is_some_and(|link| link.result == MatchResult::Match);
        if !is_member {
            return Err(invalid(format!("Patient/{patient} has no MATCH link with Patient/{golden_id}")));
        }
        unique.insert(patient);
    }
    let staying: Vec<String> = overlay
        .matched_members(golden_id, MAX_MOVED)?
        .into_iter()
        .filter(|member| !unique.contains(member.as_str()))
        .collect();
    if staying.is_empty() {
        return Err(invalid(format!(
            "splitting off every member would leave Patient/{golden_id} empty: name only those that are another person"
        )));
    }
    // All from one merged-away golden Patient: it stands again; otherwise a new one.
    let origins: BTreeSet<&str> = merged_from
        .iter()
        .filter(|(patient, _, _)| unique.contains(patient.as_str()))
        .map(|(_, _, from)| from.as_str())
        .collect();
    let all_merged = merged_from.iter().filter(|(patient, _, _)| unique.contains(patient.as_str())).count();
    let target = match origins.iter().next() {
        Some(from) if origins.len() == 1 && all_merged == unique.len() => from.to_string(),
        _ => golden::new_id(),
    };
    overlay.remove_redirect(&target);
    for patient in &unique {
        let link = overlay.link(patient, golden_id)?.expect("checked above");
        overlay.remove_link(patient, golden_id);
        let mut split = moved(link.clone(), golden_id, MatchResult::Match, LinkSource::Manual, now);
        if let Some(existing) = overlay.link(patient, &target)? {
            split.history.splice(0..0, existing.history);
        }
        overlay.put_link(patient, &target, &split);
        let mut left = link;
        left.history.clear();
        left.change(MatchResult::NoMatch, LinkSource::Manual, left.score, now);
        overlay.put_link(patient, golden_id, &left);
    }
    for member in &staying {
        if overlay.link(member, &target)?.is_none() {
            overlay.put_link(member, &target, &Link::new(MatchResult::NoMatch, LinkSource::Manual, None, now));
        }
    }
    let mut marked = Link::new(MatchResult::NoMatch, LinkSource::Manual, None, now);
    if let Some(existing) = state::decode::<Link>(overlay.get(&state::duplicate_key(golden_id, &target))?)? {
        marked = existing;
        marked.change(MatchResult::NoMatch, LinkSource::Manual, marked.score, now);
    }
    overlay.put(state::duplicate_key(golden_id, &target), state::encode(&marked));
    touched.insert(target.clone());
    Ok(Unmerged { goldens: vec![target], moved: unique.into_iter().map(str::to_owned).collect() })
}
