import json, os, urllib.request, sys
B = "http://127.0.0.1:18099/fhir"
HERE = os.path.dirname(os.path.abspath(__file__))
def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(B + path, data=data, method=method, headers={"Content-Type": "application/fhir+json"})
    try:
        with urllib.request.urlopen(r) as resp: return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b"null")
ok = bad = 0
d = os.path.join(HERE, "..", "examples")
for name in sorted(os.listdir(d)):
    res = json.load(open(os.path.join(d, name)))
    if res["resourceType"] == "Bundle": continue
    st, _ = req("PUT", f"/{res['resourceType']}/{res['id']}", res)
    if st < 300: ok += 1
    else: bad += 1
print("examples", ok, bad)
b = json.load(open(os.path.join(HERE, "..", "synthea", "Bibi254_Schowalter414_475d72ca-91c7-7211-97e3-f000af33fc04.json")))
b["type"] = "transaction"
st, resp = req("POST", "", b)
print("synthea", st)
pid = [e["response"]["location"] for e in resp["entry"] if e["response"]["location"].startswith("Patient/")][0].split("/")[1]
st, p = req("GET", "/Patient/example")
p["active"] = False
print("update", req("PUT", "/Patient/example", p)[0])
p["gender"] = "other"
print("update", req("PUT", "/Patient/example", p)[0])
print("delete", req("DELETE", "/Observation/example")[0])
queries = ["/Patient/example", "/Patient/example/_history", "/Patient/example/_history/1", "/Observation/example/_history",
  f"/Patient/{pid}", "/Patient?family=Schowalter414", "/Patient?gender=male&_count=100",
  "/Observation?code=http://loinc.org|8302-2&_count=100", "/Observation?date=ge2015-01-01&_count=200",
  f"/Condition?patient=Patient/{pid}&_count=100", f"/Patient/{pid}/$everything?_count=500",
  "/Encounter?_sort=-date&_count=10", "/Observation?_count=200", "/Immunization?date=lt2020&_count=100&_total=accurate"]
out = {"patient": pid, "queries": {}}
for q in queries:
    st, body = req("GET", q)
    assert st == 200, (q, st, body)
    out["queries"][q] = body
json.dump(out, open("answers.json", "w"))
print("recorded", {q: len(v.get("entry", [])) if v.get("resourceType") == "Bundle" else v["resourceType"] for q, v in out["queries"].items()})
