//! Date prefixes the index can bound (`gt`, `ge`, `eb`), and `_sort` served from the sort
//! parameter's index: the same order as sorting in memory, paged by index positions.

use serde_json::{Value, json};

use crate::helpers::{TestApp, link, match_ids, seed, spawn_app, spawn_app_with};

/// An Observation with the given `effective[x]` (`effectiveDateTime` for a string, else
/// `effectivePeriod`) and code.
fn observation(id: &str, code: &str, effective: Value) -> Value {
    let mut resource = json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]}});
    match effective {
        Value::String(_) => resource["effectiveDateTime"] = effective,
        Value::Null => {}
        period => resource["effectivePeriod"] = period,
    }
    resource
}

/// The link with `relation`, as a path below `/fhir` (for `app.get`).
fn path_link(bundle: &Value, relation: &str) -> Option<String> {
    let url = link(bundle, relation)?;
    Some(url[url.find("/fhir/").unwrap() + "/fhir".len()..].to_owned())
}

/// Every page of a search, following `next` links; then back from the last page along the
/// `previous` links. Returns the ids in page order, forward and as collected backward.
async fn all_pages(app: &TestApp, query: &str) -> (Vec<String>, Vec<String>) {
    let mut forward = Vec::new();
    let mut pages = Vec::new();
    let mut path = Some(query.to_owned());
    while let Some(current) = path {
        let reply = app.get(&current).await;
        assert_eq!(reply.status, 200, "{current}: {}", reply.text);
        forward.extend(match_ids(&reply.body));
        pages.push(match_ids(&reply.body));
        path = path_link(&reply.body, "next");
        assert!(pages.len() <= 100, "{query}: paging does not end");
    }
    // Back: from the last page, previous links give the pages before it, in order.
    let mut backward: Vec<Vec<String>> = vec![pages.last().cloned().unwrap_or_default()];
    let mut path = Some(query.to_owned());
    let mut last = None;
    while let Some(current) = path {
        let reply = app.get(&current).await;
        path = path_link(&reply.body, "next");
        last = Some(reply.body);
    }
    let mut previous = last.as_ref().and_then(|b| path_link(b, "previous"));
    while let Some(current) = previous {
        let reply = app.get(&current).await;
        assert_eq!(reply.status, 200, "{current}: {}", reply.text);
        backward.insert(0, match_ids(&reply.body));
        previous = path_link(&reply.body, "previous");
        assert!(backward.len() <= 100, "{query}: paging back does not end");
    }
    (forward, backward.concat())
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// Dates of every precision, periods long and short, open at either end.
fn dated_observations() -> Vec<Value> {
    vec![
        observation("old-instant", "a", json!("2010-05-05T10:00:00Z")),
        observation("noon-before", "a", json!("2023-12-31T12:00:00Z")),
        observation("day-before", "a", json!("2023-12-31")),
        observation("day-of", "a", json!("2024-01-01")),
        observation("new-instant", "a", json!("2024-06-01T00:00:00Z")),
        observation("month-before", "a", json!("2023-12")),
        observation("year-of", "a", json!("2024")),
        observation("year-before", "a", json!("2023")),
        observation("long-period", "a", json!({"start": "2000-01-01", "end": "2030-01-01"})),
        observation("open-end", "a", json!({"start": "1999-01-01"})),
        observation("open-start", "a", json!({"end": "2025-01-01"})),
        observation("open-start-old", "a", json!({"end": "2020-01-01"})),
        observation("ends-on-the-day", "a", json!({"start": "2020-01-01", "end": "2024-01-01"})),
        observation("ends-the-day-after", "a", json!({"start": "2020-01-01", "end": "2024-01-02"})),
        observation("no-date", "a", Value::Null),
    ]
}

#[actix_web::test]
async fn gt_ge_and_eb_find_every_precision_period_and_open_end() {
    let app = spawn_app().await;
    seed(&app, dated_observations()).await;
    let ge = ["day-of", "new-instant", "year-of", "long-period", "open-end", "open-start", "ends-the-day-after"];
    let gt_day = ["new-instant", "year-of", "long-period", "open-end", "open-start", "ends-the-day-after"];
    let gt_year = [&ge[..], &["ends-on-the-day"]].concat();
    let eb = ["old-instant", "noon-before", "day-before", "month-before", "year-before", "open-start-old"];
    for (query, expected) in [
        ("date=ge2024-01-01", &ge[..]),
        ("date=gt2024-01-01", &gt_day[..]),
        ("date=gt2023", &gt_year[..]),
        ("date=eb2024-01-01", &eb[..]),
        (
            "date=ge2024-01-01T00:00:00Z",
            &[
                "new-instant",
                "year-of",
                "long-period",
                "open-end",
                "open-start",
                "ends-on-the-day",
                "ends-the-day-after",
                "day-of",
            ][..],
        ),
    ] {
        for count in [2, 50] {
            let (forward, backward) = all_pages(&app, &format!("/Observation?{query}&_count={count}")).await;
            assert_eq!(sorted(forward.clone()), sorted(strings(expected)), "{query} (pages of {count})");
            assert_eq!(forward.len(), expected.len(), "{query}: a resource reported twice: {forward:?}");
            assert_eq!(backward, forward, "{query}: paging back gives other pages");
        }
    }
}

#[actix_web::test]
async fn a_recent_date_search_does_not_step_over_older_entries() {
    // 400 older entries would cost more than the budget if the scan began at the oldest.
    let app = spawn_app_with(|s| s.search_work_budget = 200).await;
    let mut resources: Vec<Value> = (0..400)
        .map(|n| observation(&format!("old{n}"), "a", json!(format!("2010-01-01T00:00:{:02}Z", n % 60))))
        .collect();
    resources.push(observation("recent", "a", json!("2024-03-01T08:30:00Z")));
    resources.push(observation("very-old", "a", json!("1990-03-01")));
    resources.push(observation("decade", "a", json!({"start": "2005-01-01", "end": "2030-01-01"})));
    seed(&app, resources).await;
    let reply = app.get("/Observation?date=ge2024-01-01").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(sorted(match_ids(&reply.body)), ["decade", "recent"]);
    let reply = app.get("/Observation?date=gt2024-01-01").await;
    assert_eq!(sorted(match_ids(&reply.body)), ["decade", "recent"], "{}", reply.text);
    let reply = app.get("/Observation?date=eb2000-01-01").await;
    assert_eq!(match_ids(&reply.body), ["very-old"], "{}", reply.text);
    // The scan is bounded, not the search refused: a search that does need the old entries is.
    app.get("/Observation?date=lt2011&_total=accurate").await.assert_outcome(400);
}

/// The plan `_explain=true` reports for a search (without the work it took).
async fn plan(app: &TestApp, query: &str) -> String {
    let reply = app.get(&format!("{query}&_explain=true")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let outcome = reply.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    let diagnostics = outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap();
    let plan = diagnostics.strip_prefix("plan: ").unwrap();
    plan[..plan.rfind("; ").unwrap()].to_owned()
}

#[actix_web::test]
async fn a_date_sort_puts_ties_by_id_and_missing_values_last_whichever_way_it_runs() {
    let resources = vec![
        observation("a", "x", json!("2024-01-01T10:00:00Z")),
        observation("b", "x", json!("2024-01-01T10:00:00Z")),
        observation("c", "x", json!("2023-05-05")),
        observation("d", "x", Value::Null),
        observation("e", "x", json!({"start": "2022-01-01", "end": "2030-01-01"})),
        observation("f", "x", Value::Null),
        observation("g", "x", json!({"start": "2023-05-05"})),
        observation("other-code", "y", json!("2024-02-02")),
    ];
    let index = spawn_app_with(|s| s.sort_in_memory_below = 0).await;
    let memory = spawn_app().await;
    for app in [&index, &memory] {
        seed(app, resources.clone()).await;
    }
    assert!(plan(&index, "/Observation?code=x&_sort=date").await.starts_with("read date in sort order from its index"));
    assert!(
        plan(&memory, "/Observation?code=x&_sort=date").await.ends_with("sort the matches in memory"),
        "few matches"
    );
    for app in [&index, &memory] {
        // Ranges order by start, then end: the day 2023-05-05 before the open period from it.
        let (ascending, back) = all_pages(app, "/Observation?code=x&_sort=date&_count=2").await;
        assert_eq!(ascending, ["e", "c", "g", "a", "b", "d", "f"]);
        assert_eq!(back, ascending);
        let (descending, back) = all_pages(app, "/Observation?code=x&_sort=-date&_count=3").await;
        assert_eq!(descending, ["b", "a", "g", "c", "e", "f", "d"]);
        assert_eq!(back, descending);
    }
}

/// Encounters with 0 to 3 location periods each (several values per resource, open ends, wide
/// and narrow, many exact ties), every other one finished.
fn encounters() -> Vec<Value> {
    (0..60)
        .map(|n: usize| {
            let locations: Vec<Value> = (0..n % 4)
                .map(|k| {
                    let day = 1 + (n * 7 + k * 13) % 9;
                    let period = match (n + k) % 5 {
                        0 => json!({"start": format!("2020-01-{day:02}")}),
                        1 => json!({"start": format!("2020-01-{day:02}T08:00:00Z"), "end": format!("2020-01-{day:02}T09:00:00Z")}),
                        2 => json!({"end": format!("2020-02-{day:02}")}),
                        3 => json!({"start": format!("2020-01-{day:02}"), "end": "2021"}),
                        _ => json!({"start": format!("2020-01-{day:02}T08:00:00Z"), "end": format!("2020-01-{day:02}T09:00:00Z")}),
                    };
                    json!({"location": {"reference": "Location/l1"}, "period": period})
                })
                .collect();
            let mut encounter = json!({"resourceType": "Encounter", "id": format!("e{n:02}"),
                "status": if n % 2 == 0 { "finished" } else { "planned" },
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}});
            if !locations.is_empty() {
                encounter["location"] = Value::Array(locations);
            }
            encounter
        })
        .collect()
}

#[actix_web::test]
async fn sorting_from_the_index_and_in_memory_give_the_same_pages() {
    let index = spawn_app_with(|s| s.sort_in_memory_below = 0).await;
    let memory = spawn_app_with(|s| s.sort_in_memory_below = 1_000_000).await;
    for app in [&index, &memory] {
        seed(app, encounters()).await;
    }
    // 45 of the 60 have location periods, 15 of them three each.
    let valued = index.get("/Encounter?location-period:missing=false&_summary=count").await;
    assert_eq!(valued.body["total"], 45, "{}", valued.text);
    for query in [
        "/Encounter?_sort=location-period",
        "/Encounter?_sort=-location-period",
        "/Encounter?status=finished&_sort=location-period",
        "/Encounter?status=finished&_sort=-location-period",
        "/Encounter?location-period=ge2020-01-05&_sort=-location-period",
    ] {
        assert!(plan(&index, &format!("{query}&_count=5")).await.starts_with("read location-period in sort order"));
        assert!(plan(&memory, &format!("{query}&_count=5")).await.ends_with("sort the matches in memory"));
        let (whole, _) = all_pages(&memory, &format!("{query}&_count=1000")).await;
        assert!(whole.len() >= 20, "{query}: {whole:?}");
        for count in [1, 4, 7] {
            let paged = format!("{query}&_count={count}");
            let (from_index, back_in_index) = all_pages(&index, &paged).await;
            let (in_memory, back_in_memory) = all_pages(&memory, &paged).await;
            assert_eq!(from_index, whole, "{paged}: index order");
            assert_eq!(in_memory, whole, "{paged}: memory order");
            assert_eq!(back_in_index, whole, "{paged}: index order paging back");
            assert_eq!(back_in_memory, whole, "{paged}: memory order paging back");
        }
    }
}

#[actix_web::test]
async fn index_sorted_pages_stay_as_of_the_first_page() {
    let app = spawn_app_with(|s| s.sort_in_memory_below = 0).await;
    let resources: Vec<Value> =
        (0..10).map(|n| observation(&format!("o{n}"), "x", json!(format!("2024-01-{:02}T00:00:00Z", n + 1)))).collect();
    seed(&app, resources).await;
    let first = app.get("/Observation?code=x&_sort=-date&_count=4").await;
    assert_eq!(match_ids(&first.body), ["o9", "o8", "o7", "o6"]);
    // Written after the first page: a later date, and a changed date for o5.
    seed(&app, vec![observation("late", "x", json!("2025-01-01")), observation("o5", "x", json!("2019-01-01"))]).await;
    let second = app.get(&path_link(&first.body, "next").unwrap()).await;
    assert_eq!(match_ids(&second.body), ["o5", "o4", "o3", "o2"], "{}", second.text);
    let back = app.get(&path_link(&second.body, "previous").unwrap()).await;
    assert_eq!(match_ids(&back.body), ["o9", "o8", "o7", "o6"]);
    // A new search sees the new state.
    let fresh = app.get("/Observation?code=x&_sort=-date&_count=3").await;
    assert_eq!(match_ids(&fresh.body), ["late", "o9", "o8"]);
}

/// The indexer of earlier versions, which wrote no end-ordered date entries.
struct WithoutEndEntries;

impl braid::store::Indexer for WithoutEndEntries {
    fn entries(&self, resource_type: braid::fhir::ResourceType, resource: &Value) -> Vec<braid::store::IndexEntry> {
        let entries = braid::search::SearchIndexer.entries(resource_type, resource);
        entries.into_iter().filter(|entry| !entry.param.ends_with(":end")).collect()
    }
}

#[actix_web::test]
async fn a_file_indexed_without_end_ordered_dates_gets_them_when_opened() {
    use braid::store::{Action, Precondition, Store, StoreOptions, Target, WriteOp, WriteRequest};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("format2.redb");
    {
        let store = Store::open(&path, StoreOptions::default(), std::sync::Arc::new(WithoutEndEntries)).unwrap();
        let ops = [
            observation("long-period", "a", json!({"start": "2000-01-01", "end": "2030-01-01"})),
            observation("old", "a", json!("2001-01-01T00:00:00Z")),
        ]
        .into_iter()
        .map(|resource| {
            let id = resource["id"].as_str().unwrap().to_owned();
            let Value::Object(resource) = resource else { unreachable!() };
            WriteOp {
                full_url: None,
                action: Action::Update {
                    resource_type: braid::fhir::ResourceType::parse("Observation").unwrap(),
                    target: Target::Id(braid::fhir::Id::parse(&id).unwrap()),
                    resource,
                    precondition: Precondition::default(),
                },
            }
        })
        .collect();
        store.write(WriteRequest { ops, ..Default::default() }).await.unwrap();
        let finished = store.writer_finished();
        drop(store);
        while !finished() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    {
        // As the earlier versions marked their files.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("format_version", 2u32.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let app = spawn_app_with(|s| s.data = path.clone()).await;
    let reply = app.get("/Observation?date=ge2024-01-01").await;
    assert_eq!(match_ids(&reply.body), ["long-period"], "{}", reply.text);
    let reply = app.get("/Observation?date=gt2024-01-01&_sort=-date").await;
    assert_eq!(match_ids(&reply.body), ["long-period"], "{}", reply.text);
}

#[actix_web::test]
async fn a_sort_over_clauses_that_rarely_hold_together_is_done_in_memory() {
    let app = spawn_app_with(|s| s.sort_in_memory_below = 0).await;
    // 1,200 with code a, 1,200 with date in 2020; only two have both.
    let mut resources: Vec<Value> =
        (0..1200).map(|n| observation(&format!("a{n}"), "a", json!("2010-01-01T00:00:00Z"))).collect();
    resources.extend((0..1200).map(|n| observation(&format!("b{n}"), "b", json!("2020-01-01T00:00:00Z"))));
    resources.push(observation("both1", "a", json!("2020-03-01T00:00:00Z")));
    resources.push(observation("both2", "a", json!("2020-04-01T00:00:00Z")));
    seed(&app, resources).await;
    let query = "/Observation?code=a&date=ge2020-01-01&date=lt2021&_sort=-date&_count=10";
    assert!(plan(&app, query).await.ends_with("sort the matches in memory"));
    assert_eq!(match_ids(&app.get(query).await.body), ["both2", "both1"]);
    // Broad and mostly together: read from the index.
    let query = "/Observation?code=a&date=lt2030&_sort=-date&_count=3";
    assert!(plan(&app, query).await.starts_with("read date in sort order"));
    assert_eq!(match_ids(&app.get(query).await.body), ["both2", "both1", "a999"]);
}
